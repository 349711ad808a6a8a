"""Region proposal network (DESIGN.md section 4.3), the notebook's `build_rpn.RPN`.

One 3x3 conv (RPN_CHANNELS) + 1x1 classifier (2 per anchor) + 1x1 regressor (4 per
anchor), the same weights on every pyramid level P2..P6. Outputs over all levels follow
the anchor order of libs.box_utils.anchors (level, row, column, ratio), so the head's
i-th output belongs to the i-th anchor.

    rpn = RPN(pyramid, anchors, cfg, is_training, image_window, rpn_labels, rpn_bbox)
    proposals = rpn.rpn_proposals()      # [B, N, 4] zero-padded, N = 2000/1000
    cls_loss, loc_loss = rpn.rpn_losses()
"""
from libs.base.tf_compat import slim, tf
from libs.box_utils import box_ops
from libs.model import losses


class RPN:
    def __init__(self, feature_pyramid, anchors, cfg, is_training, image_window=None,
                 rpn_labels=None, rpn_bbox=None, scope="rpn_net"):
        self.cfg = cfg
        self.is_training = is_training
        self.anchors = tf.constant(anchors, tf.float32, name="anchors")
        self.image_window = image_window
        self.rpn_labels = rpn_labels
        self.rpn_bbox = rpn_bbox
        self.levels = [f"P{i}" for i in range(2, 7)]
        self.rpn_class_logits, self.rpn_deltas = self._build_head(feature_pyramid, scope)
        self.rpn_probs = tf.nn.softmax(self.rpn_class_logits, name="rpn_probs")

    def _build_head(self, pyramid, scope):
        num_anchors = self.cfg.NUM_ANCHORS_PER_LOCATION
        logits, deltas = [], []
        with tf.variable_scope(scope, reuse=tf.AUTO_REUSE):
            with slim.arg_scope([slim.conv2d], normalizer_fn=None,
                                weights_initializer=tf.random_normal_initializer(
                                    stddev=0.01)):
                for level in self.levels:
                    # Same scope names on every level: AUTO_REUSE shares the weights.
                    shared = slim.conv2d(pyramid[level], self.cfg.RPN_CHANNELS, [3, 3],
                                         activation_fn=tf.nn.relu, scope="rpn_conv/3x3")
                    cls = slim.conv2d(shared, 2 * num_anchors, [1, 1],
                                      activation_fn=None, scope="rpn_cls_score")
                    reg = slim.conv2d(shared, 4 * num_anchors, [1, 1],
                                      activation_fn=None, scope="rpn_bbox_pred")
                    batch = tf.shape(cls)[0]
                    logits.append(tf.reshape(cls, [batch, -1, 2]))
                    deltas.append(tf.reshape(reg, [batch, -1, 4]))
        return (tf.concat(logits, axis=1, name="rpn_class_logits"),
                tf.concat(deltas, axis=1, name="rpn_deltas"))

    @property
    def num_proposals(self):
        return (self.cfg.RPN_PROPOSALS_TRAIN if self.is_training
                else self.cfg.RPN_PROPOSALS_INFERENCE)

    def rpn_proposals(self):
        """softmax -> top-k -> decode -> NMS -> clip to the image window -> zero-pad.

        Returns (proposals float32 [B, N, 4], scores float32 [B, N]).
        """
        cfg = self.cfg
        num_anchors = int(self.anchors.shape[0])
        top_k = min(cfg.RPN_TOP_K_NMS, num_anchors)
        # None in the exported model (any number of images per call).
        batch_size = tf.compat.dimension_value(self.rpn_probs.shape[0])

        def one_image(scores, deltas, window):
            scores, order = tf.nn.top_k(scores, k=top_k, sorted=True)
            anchors = tf.gather(self.anchors, order)
            deltas = tf.gather(deltas, order)
            boxes = box_ops.decode_boxes(anchors, deltas, cfg.RPN_BBOX_STD_DEV)
            boxes, scores, _, _ = box_ops.nms_padded(
                boxes, scores, self.num_proposals, cfg.RPN_NMS_IOU_THRESHOLD)
            valid = tf.cast(tf.reduce_any(tf.not_equal(boxes, 0.0), axis=1), tf.float32)
            # Clipping keeps padding rows at zero (they are multiplied back to 0).
            boxes = box_ops.clip_boxes(boxes, window) * valid[:, tf.newaxis]
            return boxes, scores * valid

        with tf.name_scope("rpn_proposals"):
            windows = self.image_window
            proposals, scores = box_ops.batch_slice(
                [self.rpn_probs[:, :, 1], self.rpn_deltas, windows], one_image,
                batch_size, output_dtypes=[tf.float32, tf.float32])
        return tf.stop_gradient(proposals), tf.stop_gradient(scores)

    def rpn_losses(self):
        """(classification loss, localisation loss) on the pipeline's anchor minibatch.

        Each image's losses are means over its own minibatch, then averaged over the
        images: every image weighs the same, so N towers x 1 image give the gradients of
        1 tower x N images (a mean pooled over the batch would weigh images by their
        number of positives).
        """
        with tf.name_scope("rpn_losses"):
            cls_losses, loc_losses = [], []
            for b in range(int(self.rpn_labels.shape[0])):
                labels = self.rpn_labels[b]
                sampled = tf.where(labels >= 0)[:, 0]
                cls_losses.append(losses.sparse_softmax_cross_entropy(
                    labels=tf.gather(labels, sampled),
                    logits=tf.gather(self.rpn_class_logits[b], sampled)))
                # rpn_bbox holds the image's positives first, in anchor order.
                positive = tf.where(tf.equal(labels, 1))[:, 0]
                predicted = tf.gather(self.rpn_deltas[b], positive)
                targets = self.rpn_bbox[b, :tf.shape(positive)[0]]
                loc_losses.append(losses.safe_mean(losses.smooth_l1(predicted, targets)))
            return tf.reduce_mean(cls_losses), tf.reduce_mean(loc_losses)
