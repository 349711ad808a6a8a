"""Second stage (DESIGN.md section 4.5), the notebook's `build_fast_rcnn.FastRCNN`.

    frcnn = FastRCNN(pyramid, proposals, prototypes, image_window, cfg, mode,
                     gt_boxes, gt_labels)
    cls_loss, loc_loss = frcnn.fast_rcnn_loss()          # TRAIN / EVAL
    detections = frcnn.fast_rcnn_detection()             # [B, MAX, 6]

In training the ROIs are a sampled minibatch of the proposals with their targets
(sampling.py); at inference they are all the proposals. Each ROI is pooled from the
pyramid (roi_pooling.py), then:
  - box branch: 7x7 conv + 1x1 conv (HEAD_CHANNELS, batch norm, ReLU) -> FC deltas per
    class (or one set, BOX_REGRESSION);
  - classifier, the one CLASSIFIER names (libs/model/classifiers/: "comparison", the
    Comparison Detector's comparison with each class's prototype, scored by
    COMPARISON_SCORE; "fc", the plain FPN baseline).
Detections: detection.py.
"""
from libs.base.tf_compat import slim, tf
from libs.box_utils import box_ops
from libs.model import classifiers, losses
from libs.model.detection import detect
from libs.model.head_layers import head_batch_norm_params, window_conv
from libs.model.roi_pooling import assign_levels, roi_align, roi_align_all_levels
from libs.model.sampling import fast_rcnn_targets


class FastRCNN:
    def __init__(self, feature_pyramid, rpn_proposals, prototypes, image_window, cfg,
                 mode, gt_boxes=None, gt_labels=None, sampling_seeds=None,
                 ignore_boxes=None, scope="fast_rcnn"):
        self.cfg = cfg
        self.mode = mode
        self.image_window = image_window
        self.prototypes = prototypes
        # None only in PREDICT for the exported model (any number of images per call).
        self.batch_size = tf.compat.dimension_value(rpn_proposals.shape[0])
        if self.batch_size is None and mode != tf.estimator.ModeKeys.PREDICT:
            raise ValueError("training and evaluation need a static batch size")
        training = mode == tf.estimator.ModeKeys.TRAIN
        # The notebook passes is_training=False in every mode (frozen head BN); the
        # flag lets a from-scratch config train it, in TRAIN mode only.
        self.bn_training = bool(cfg.HEAD_TRAIN_BATCH_NORM) and training
        with tf.variable_scope(scope, reuse=tf.AUTO_REUSE):
            if gt_boxes is not None and mode != tf.estimator.ModeKeys.PREDICT:
                self.rois, roi_labels, self.roi_deltas = self._sample_targets(
                    rpn_proposals, gt_boxes, gt_labels, sampling_seeds, ignore_boxes,
                    sample=training)
                # Named for benchmarks: labels >= 0 are the ROIs the head trains on.
                self.roi_labels = tf.identity(roi_labels, name="roi_labels")
            else:
                self.rois, self.roi_labels, self.roi_deltas = rpn_proposals, None, None
            flat_rois = tf.reshape(self.rois, [-1, 4])
            self.level_of_rois = assign_levels(flat_rois, cfg.ROI_CANONICAL_SIZE)
            if cfg.ROI_POOLING == "all_levels":
                self.roi_features = roi_align_all_levels(
                    feature_pyramid, flat_rois, self.batch_size, int(self.rois.shape[1]),
                    cfg.ROI_SIZE, cfg.TARGET_SIDE)
            else:
                self.roi_features = roi_align(
                    feature_pyramid, flat_rois, self.level_of_rois, self.batch_size,
                    int(self.rois.shape[1]), cfg.ROI_SIZE, cfg.TARGET_SIDE)
            box_features = self._box_branch(self.roi_features)
            # Per class (the notebook) or one set for every class (BOX_REGRESSION).
            self.num_box_classes = (cfg.NUM_CLASS if cfg.BOX_REGRESSION == "per_class"
                                    else 1)
            with tf.variable_scope("box_regressor"):
                deltas = slim.fully_connected(
                    box_features, self.num_box_classes * 4, activation_fn=None,
                    weights_initializer=tf.random_normal_initializer(stddev=0.001),
                    scope="bbox_pred")
            self.box_deltas = tf.reshape(deltas, [-1, self.num_box_classes, 4])
            classifier = classifiers.build(cfg, self.bn_training)
            self.class_logits = classifier.logits(self.roi_features, box_features,
                                                  prototypes)
            self.class_probs = tf.nn.softmax(self.class_logits, name="class_probs")

    # -- targets --------------------------------------------------------------------

    def _sample_targets(self, proposals, gt_boxes, gt_labels, seeds, ignore_boxes, sample):
        cfg = self.cfg
        num_rois = cfg.FAST_RCNN_MINIBATCH_SIZE if sample else int(proposals.shape[1])
        if seeds is None:
            seeds = tf.zeros([self.batch_size, 2], tf.int64)
        if ignore_boxes is None:
            # One zero row per image: it covers nothing (box_ops.covered_by).
            ignore_boxes = tf.zeros([self.batch_size, 1, 4])

        def one_image(props, boxes, labels, seed, ignore):
            return fast_rcnn_targets(props, boxes, labels, cfg, num_rois, sample, seed,
                                     ignore)

        with tf.name_scope("fast_rcnn_targets"):
            rois, labels, deltas = box_ops.batch_slice(
                [proposals, gt_boxes, gt_labels, seeds, ignore_boxes], one_image,
                self.batch_size)
        return (tf.stop_gradient(rois), tf.stop_gradient(labels),
                tf.stop_gradient(deltas))

    # -- box branch -------------------------------------------------------------------

    def _box_branch(self, roi_features):
        cfg = self.cfg
        with tf.variable_scope("box_branch"):
            bn_params = head_batch_norm_params(cfg, self.bn_training)
            net = window_conv(roi_features, cfg.HEAD_CHANNELS, bn_params, "conv_7x7")
            with slim.arg_scope([slim.conv2d], normalizer_fn=slim.batch_norm,
                                normalizer_params=bn_params, activation_fn=tf.nn.relu):
                net = slim.conv2d(net, cfg.HEAD_CHANNELS, [1, 1], scope="conv_1x1")
            return tf.reshape(net, [-1, cfg.HEAD_CHANNELS])

    # -- losses -----------------------------------------------------------------------

    def fast_rcnn_loss(self):
        """(classification CE, smooth-L1 on the target class's deltas of positives).

        Means over each image's minibatch, then over images (see RPN.rpn_losses).
        """
        if self.roi_labels is None:
            raise ValueError("fast_rcnn_loss needs gt_boxes/gt_labels (TRAIN or EVAL)")
        cfg = self.cfg
        num_rois = int(self.rois.shape[1])
        logits = tf.reshape(self.class_logits, [self.batch_size, num_rois, cfg.NUM_CLASS])
        deltas = tf.reshape(self.box_deltas,
                            [self.batch_size, num_rois, self.num_box_classes, 4])
        with tf.name_scope("fast_rcnn_loss"):
            cls_losses, loc_losses = [], []
            for b in range(self.batch_size):
                labels = self.roi_labels[b]
                sampled = tf.where(labels >= 0)[:, 0]
                cls_losses.append(losses.sparse_softmax_cross_entropy(
                    labels=tf.gather(labels, sampled),
                    logits=tf.gather(logits[b], sampled)))
                positive = tf.where(labels > 0)[:, 0]
                class_of_positive = tf.cast(tf.gather(labels, positive), tf.int64)
                if self.num_box_classes == 1:
                    class_of_positive = tf.zeros_like(class_of_positive)
                predicted = tf.gather_nd(deltas[b],
                                         tf.stack([positive, class_of_positive], axis=1))
                loc_losses.append(losses.safe_mean(losses.smooth_l1(
                    predicted, tf.gather(self.roi_deltas[b], positive))))
            return tf.reduce_mean(cls_losses), tf.reduce_mean(loc_losses)

    # -- detection --------------------------------------------------------------------

    def fast_rcnn_detection(self, min_confidence=None):
        """[B, DETECTION_MAX_INSTANCES, 6] rows [y1, x1, y2, x2, score, class], 0-padded."""
        return detect(self.rois, self.class_probs, self.box_deltas, self.image_window,
                      self.cfg, self.batch_size, min_confidence)
