"""Second stage (DESIGN.md section 4.5), the notebook's `build_fast_rcnn.FastRCNN`.

    frcnn = FastRCNN(pyramid, proposals, prototypes, image_window, cfg, mode,
                     gt_boxes, gt_labels)
    cls_loss, loc_loss = frcnn.fast_rcnn_loss()          # TRAIN / EVAL
    detections = frcnn.fast_rcnn_detection()             # [B, MAX, 6]

In training the ROIs are a sampled minibatch of the proposals with their targets; at
inference they are all the proposals. Each ROI is pooled from the pyramid level that
suits its size, then:
  - box branch: 7x7 conv + 1x1 conv (HEAD_CHANNELS, batch norm, ReLU) -> FC deltas per
    class;
  - classifier, chosen by CLASSIFIER from CLASSIFIERS:
      "comparison": logit_k = ReLU(BN(conv3d_[1,7,7]((f - p_k)^2))) for each prototype
                    p_k (row 0 the learned background) - the Comparison Detector
                    (COMPARISON_RELU = False drops the ReLU);
      "fc":         an FC layer on the box branch's features - the plain FPN baseline.
"""
import math

from libs.base.tf_compat import slim, tf
from libs.box_utils import box_ops
from libs.model import losses

ROI_LEVELS = (2, 3, 4, 5)


# --------------------------------------------------------------------------- classifiers

def weighted_squared_distances(roi_features, prototypes, weights):
    """sum_d w_d (f_d - p_kd)^2 for every ROI f and prototype p_k: [M, K].

    roi_features [M, S, S, F], prototypes [K, S, S, F], weights [S*S*F, 1]. Expanded as

        f^2 . w - 2 f . (w * p_k) + p_k^2 . w

    and computed as matrix products instead of a [M, K, S, S, F] tensor of differences:
    the same value (and gradients) with far less memory and time. Both sides are
    centred on the prototypes' mean first, which leaves every difference unchanged and
    keeps f^2 and p^2 small so the sum does not cancel.
    """
    depth = int(weights.shape[0])
    queries = tf.reshape(roi_features, [-1, depth])
    protos = tf.reshape(prototypes, [-1, depth])
    centre = tf.reduce_mean(protos, axis=0, keepdims=True)
    queries, protos = queries - centre, protos - centre
    query_term = tf.matmul(tf.square(queries), weights)                          # [M, 1]
    cross_term = tf.matmul(queries, protos * tf.transpose(weights), transpose_b=True)
    proto_term = tf.transpose(tf.matmul(tf.square(protos), weights))             # [1, K]
    return tf.add(query_term - 2.0 * cross_term, proto_term,
                  name="weighted_squared_distance")


def comparison_classifier(roi_features, box_features, prototypes, cfg, bn_training):
    """Logits [M, K] from squared differences to each of the K prototypes.

    roi_features [M, S, S, F]; prototypes [K, S, S, F]. One set of weights scores every
    class the same way: what is learned is how to compare, not what each class looks
    like (that comes from the references). COMPARISON_SCORE chooses how:

    "learned" (the notebook): a [1, S, S] conv3d sliding over the K axis of
        (f - p_k)^2, then batch norm (and ReLU with COMPARISON_RELU). That conv3d is a
        weighted sum of squared differences with weights of either sign, computed
        here as weighted_squared_distances (oneDNN's conv3d backward is slow; the
        variables are the conv3d's own). Nothing makes a nearer prototype score
        higher: trained on few classes, it can learn to score a class by how far its
        prototype is, and a new class's prototype then takes over (measured:
        docs/fewshot.md).
    "distance": logit_k = -scale * mean_d w_d (f_d - p_kd)^2 with w_d = softplus(v_d)
        >= 0 and a learned scale > 0, plus a learned bias on the background's logit:
        a nearer prototype always scores higher, for classes the model never saw too
        (prototypical networks' rule, with learned per-feature weights).
    """
    del box_features
    size, channels = cfg.ROI_SIZE, int(roi_features.shape[-1])
    depth = size * size * channels
    num_prototypes = (tf.compat.dimension_value(prototypes.shape[0])
                      or tf.shape(prototypes)[0])
    if cfg.COMPARISON_SCORE == "distance":
        weights = distance_weights(depth)
    with tf.variable_scope("comparison_classifier", reuse=tf.AUTO_REUSE):
        if cfg.COMPARISON_SCORE == "distance":
            with tf.variable_scope("distance"):
                log_scale = slim.model_variable("log_scale", shape=[],
                                                initializer=tf.zeros_initializer())
                background_bias = slim.model_variable("background_bias", shape=[],
                                                      initializer=tf.zeros_initializer())
                distances = weighted_squared_distances(roi_features, prototypes,
                                                       weights) / depth
                logits = -tf.exp(log_scale) * distances
                bias = tf.one_hot(0, num_prototypes) * background_bias
                return tf.add(logits, bias, name="class_logits")
        with tf.variable_scope("compare_conv3d"):
            weights = slim.model_variable(
                "weights", shape=[1, size, size, channels, 1],
                initializer=slim.initializers.xavier_initializer())
            scores = weighted_squared_distances(roi_features, prototypes,
                                                tf.reshape(weights, [depth, 1]))
            # Batch norm over every (ROI, class) score, as on the conv3d's 5-D output.
            scores = slim.batch_norm(tf.reshape(scores, [-1, num_prototypes, 1, 1, 1]),
                                     **dict(head_batch_norm_params(cfg, bn_training),
                                            fused=False))
            if cfg.COMPARISON_RELU:
                scores = tf.nn.relu(scores)
        return tf.reshape(scores, [-1, num_prototypes], name="class_logits")


def distance_weights(depth):
    """The "distance" score's per-feature weights w_d = softplus(v_d) >= 0, [depth, 1],
    in the head's scope (comparison_classifier)."""
    with tf.variable_scope("comparison_classifier/distance", reuse=tf.AUTO_REUSE):
        # softplus(0.5413) = 1: every feature starts with weight 1
        raw = slim.model_variable("feature_weights", shape=[depth, 1],
                                  initializer=tf.constant_initializer(0.5413))
    return tf.nn.softplus(raw)


def fc_classifier(roi_features, box_features, prototypes, cfg, bn_training):
    """The FPN baseline: an ordinary FC classifier on the box branch's features."""
    del roi_features, prototypes, bn_training
    with tf.variable_scope("fc_classifier", reuse=tf.AUTO_REUSE):
        return slim.fully_connected(box_features, cfg.NUM_CLASS, activation_fn=None,
                                    weights_initializer=tf.random_normal_initializer(
                                        stddev=0.01),
                                    scope="class_logits")


CLASSIFIERS = {"comparison": comparison_classifier, "fc": fc_classifier}


def head_batch_norm_params(cfg, is_training):
    """Batch norm of the second stage, as in the notebook: scaled, epsilon 1e-5."""
    return {"is_training": is_training, "decay": cfg.HEAD_BATCH_NORM_DECAY,
            "epsilon": 1e-5, "scale": True}


# ------------------------------------------------------------------------------ the head

class FastRCNN:
    def __init__(self, feature_pyramid, rpn_proposals, prototypes, image_window, cfg,
                 mode, gt_boxes=None, gt_labels=None, sampling_seeds=None,
                 scope="fast_rcnn"):
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
                    rpn_proposals, gt_boxes, gt_labels, sampling_seeds, sample=training)
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
            classify = CLASSIFIERS[cfg.CLASSIFIER]
            self.class_logits = classify(self.roi_features, box_features, prototypes,
                                         cfg, self.bn_training)
            self.class_probs = tf.nn.softmax(self.class_logits, name="class_probs")

    # -- targets --------------------------------------------------------------------

    def _sample_targets(self, proposals, gt_boxes, gt_labels, seeds, sample):
        cfg = self.cfg
        num_rois = cfg.FAST_RCNN_MINIBATCH_SIZE if sample else int(proposals.shape[1])
        if seeds is None:
            seeds = tf.zeros([self.batch_size, 2], tf.int64)

        def one_image(props, boxes, labels, seed):
            return fast_rcnn_targets(props, boxes, labels, cfg, num_rois, sample, seed)

        with tf.name_scope("fast_rcnn_targets"):
            rois, labels, deltas = box_ops.batch_slice(
                [proposals, gt_boxes, gt_labels, seeds], one_image, self.batch_size)
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


def detect(rois, class_probs, box_deltas, image_window, cfg, batch_size,
           min_confidence=None):
    """Detections [B, DETECTION_MAX_INSTANCES, 6] from the head's outputs.

    rois [B, N, 4]; class_probs [B*N, NUM_CLASS]; box_deltas [B*N, 1 or NUM_CLASS, 4];
    image_window [B, 4]. Shared by FastRCNN.fast_rcnn_detection and test-time flip
    merging (libs/flip_merging.py), which averages several heads' outputs first.
    """
    if min_confidence is None:
        min_confidence = cfg.DETECTION_MIN_CONFIDENCE
    num_rois = int(rois.shape[1])
    probs = tf.reshape(class_probs, [-1, num_rois, cfg.NUM_CLASS])
    deltas = tf.reshape(box_deltas, [-1, num_rois, int(box_deltas.shape[1]), 4])

    def one_image(image_rois, image_probs, image_deltas, window):
        return refine_detections(image_rois, image_probs, image_deltas, window, cfg,
                                 min_confidence)

    with tf.name_scope("fast_rcnn_detection"):
        return box_ops.batch_slice([rois, probs, deltas, image_window], one_image,
                                   batch_size, output_dtypes=tf.float32)


# ------------------------------------------------------------------------ graph helpers

def window_conv(inputs, num_outputs, normalizer_params, scope):
    """slim.conv2d(inputs, num_outputs, [S, S], padding="VALID") + batch norm + ReLU on
    S x S inputs, computed as one matrix product.

    A VALID convolution whose kernel covers the whole input is a dot product per output
    channel: [M, S*S*C] x [S*S*C, num_outputs]. oneDNN runs it as a convolution whose
    backward pass is pathologically slow on CPUs without AVX-512 (the 7x7 box-branch
    conv's gradients were 22 of the 50 op-seconds of a ResNet-101 step at side 512).
    The variables are the convolution's own (same names, shapes and initialiser), so
    checkpoints of either form load into the other. Returns [M, 1, 1, num_outputs].
    """
    size, channels = int(inputs.shape[1]), int(inputs.shape[-1])
    with tf.variable_scope(scope):
        weights = slim.model_variable(
            "weights", shape=[size, size, channels, num_outputs],
            initializer=slim.initializers.xavier_initializer())
        flat = tf.reshape(inputs, [-1, size * size * channels])
        net = tf.matmul(flat, tf.reshape(weights, [size * size * channels, num_outputs]))
        net = tf.reshape(net, [-1, 1, 1, num_outputs])
        net = slim.batch_norm(net, **normalizer_params)
        return tf.nn.relu(net)


def _shuffle(indices, seed):
    """A stateless shuffle: the same seed gives the same order on any device/tower."""
    keys = tf.random.stateless_uniform(tf.shape(indices), seed=seed)
    return tf.gather(indices, tf.argsort(keys))


def fast_rcnn_targets(proposals, gt_boxes, gt_labels, cfg, num_rois, sample=True,
                      seed=None):
    """Minibatch of ROIs with class and delta targets for one image.

    Positives: IoU >= FAST_RCNN_POSITIVE_IOU with a GT; negatives: below it. With
    `sample` (the notebook's rule): at most FAST_RCNN_POSITIVE_RATIO * num_rois
    positives, and int(1 / ratio) - 1 negatives per positive (1:2 for 0.33), so the
    classifier sees a balanced minibatch; an image with no positive ROI contributes no
    ROI at all (its losses count 0). Without `sample` (EVAL losses) every proposal is
    kept in order.
    Returns rois [num_rois, 4] (0-padded), labels int32 [num_rois] (-1 = padding),
    deltas [num_rois, 4] (BBOX_STD_DEV-normalised, 0 for negatives).
    `seed` (int [2]) drives the sampling; model_fn passes (image id, global step), so
    the same image at the same step samples the same ROIs in any tower layout.
    """
    if seed is None:
        seed = tf.zeros([2], tf.int64)
    proposals, _ = box_ops.trim_zeros(proposals, name="trim_proposals")
    gt_boxes, gt_valid = box_ops.trim_zeros(gt_boxes, name="trim_gt")
    gt_labels = tf.boolean_mask(gt_labels, gt_valid)
    if sample and cfg.ADD_GT_TO_PROPOSALS:
        proposals = tf.concat([proposals, gt_boxes], axis=0)
    num_gt = tf.shape(gt_boxes)[0]
    iou = tf.cond(num_gt > 0, lambda: box_ops.iou_matrix(proposals, gt_boxes),
                  lambda: tf.zeros([tf.shape(proposals)[0], 1]))
    best_iou = tf.reduce_max(iou, axis=1)
    best_gt = tf.argmax(iou, axis=1, output_type=tf.int32)
    safe_gt = tf.cond(num_gt > 0, lambda: gt_boxes, lambda: tf.zeros([1, 4]))
    safe_labels = tf.cond(num_gt > 0, lambda: gt_labels, lambda: tf.zeros([1], tf.int32))
    positive = tf.where(best_iou >= cfg.FAST_RCNN_POSITIVE_IOU)[:, 0]
    negative = tf.where(best_iou < cfg.FAST_RCNN_POSITIVE_IOU)[:, 0]
    if sample:
        max_positive = int(num_rois * cfg.FAST_RCNN_POSITIVE_RATIO)
        positive = _shuffle(positive, seed)[:max_positive]
        negatives_per_positive = int(1.0 / cfg.FAST_RCNN_POSITIVE_RATIO) - 1
        num_negative = tf.minimum(negatives_per_positive * tf.shape(positive)[0],
                                  num_rois - tf.shape(positive)[0])
        negative = _shuffle(negative, seed + tf.constant([0, 1], seed.dtype))[:num_negative]
    else:
        return _every_proposal_in_order(proposals, safe_gt, safe_labels, best_iou, best_gt,
                                        cfg, num_rois)
    pos_rois = tf.gather(proposals, positive)
    matched = tf.gather(best_gt, positive)
    pos_deltas = box_ops.encode_boxes(pos_rois, tf.gather(safe_gt, matched),
                                      cfg.BBOX_STD_DEV)
    rois = tf.concat([pos_rois, tf.gather(proposals, negative)], axis=0)
    labels = tf.concat([tf.gather(safe_labels, matched),
                        tf.zeros_like(negative, tf.int32)], axis=0)
    deltas = tf.concat([pos_deltas, tf.zeros([tf.shape(negative)[0], 4])], axis=0)
    return _padded(rois, labels, deltas, num_rois)


def _padded(rois, labels, deltas, num_rois):
    """The first num_rois rows, padded to num_rois (zeros; label -1)."""
    pad = tf.maximum(num_rois - tf.shape(rois)[0], 0)
    rois = tf.pad(rois[:num_rois], [[0, pad], [0, 0]])
    labels = tf.pad(labels[:num_rois], [[0, pad]], constant_values=-1)
    deltas = tf.pad(deltas[:num_rois], [[0, pad], [0, 0]])
    rois.set_shape([num_rois, 4])
    labels.set_shape([num_rois])
    deltas.set_shape([num_rois, 4])
    return rois, labels, deltas


def _every_proposal_in_order(proposals, safe_gt, safe_labels, best_iou, best_gt, cfg,
                             num_rois):
    """fast_rcnn_targets without sampling: row i is proposal i (EVAL scores the same
    ROIs, in the same order, as PREDICT)."""
    positive = best_iou >= cfg.FAST_RCNN_POSITIVE_IOU
    labels = tf.where(positive, tf.gather(safe_labels, best_gt), tf.zeros_like(best_gt))
    deltas = box_ops.encode_boxes(proposals, tf.gather(safe_gt, best_gt), cfg.BBOX_STD_DEV)
    deltas = deltas * tf.cast(positive, tf.float32)[:, tf.newaxis]
    return _padded(proposals, labels, deltas, num_rois)


def assign_levels(rois, canonical_size=224.0, canonical_level=4):
    """FPN level of each ROI: clamp(round(4 + log2(sqrt(wh) / canonical)), 2, 5)."""
    heights = rois[:, 2] - rois[:, 0]
    widths = rois[:, 3] - rois[:, 1]
    # Zero-area rows (padding) get log2(0) = -inf and land on the lowest level.
    scale = tf.sqrt(tf.maximum(heights * widths, 0.0))
    level = canonical_level + tf.math.log(scale / canonical_size) / math.log(2.0)
    level = tf.clip_by_value(tf.round(level), ROI_LEVELS[0], ROI_LEVELS[-1])
    return tf.cast(level, tf.int32)


def feature_boxes(boxes, stride, image_side):
    """Image-pixel boxes -> crop_and_resize's coordinates on a stride-s feature map.

    Pixel centres of a stride-s feature map sit at (i + 0.5) * s in the image, so an
    image coordinate y maps to feature coordinate y / s - 0.5, normalised by (H_f - 1)
    as crop_and_resize expects.
    """
    feature_side = image_side // stride
    return (boxes / stride - 0.5) / float(max(feature_side - 1, 1))


def clamped_feature_boxes(boxes, stride, image_side):
    """feature_boxes, clamped to the map's cell centres.

    crop_and_resize samples nothing beyond the outermost cell centres: it returns 0
    there. On a coarse level of a small image (P5 of a 64-pixel reference is 2 x 2
    cells, centred 16 px from each border) most of an object's box lies out there;
    clamping the box to the centres samples the edge cells instead.
    """
    return tf.clip_by_value(feature_boxes(boxes, stride, image_side), 0.0, 1.0)


def roi_align_all_levels(pyramid, rois, batch_size, rois_per_image, crop_size,
                         image_side):
    """Pools each ROI [M, 4] (image pixels) from every level P2..P5: the mean of the four
    S x S crops (ROI_POOLING "all_levels"; the references are pooled the same way).
    Boxes are clamped to each map's cell centres (clamped_feature_boxes).

    Padding rows (all-zero boxes: the minibatch's filler, label -1) pool zeros, as in
    roi_align: clamped, [0, 0, 0, 0] would sample the image's top-left cell on every
    level, and those rows (most of a training minibatch while the RPN finds few
    positives) enter the head's batch-norm statistics with the corner's content.
    """
    with tf.name_scope("roi_align_all_levels"):
        if batch_size is None:
            batch_size = tf.shape(pyramid["P2"])[0]
        box_indices = tf.repeat(tf.range(batch_size), rois_per_image)
        crops = [tf.image.crop_and_resize(
            pyramid[f"P{level}"], tf.stop_gradient(clamped_feature_boxes(
                rois, 2 ** level, image_side)),
            box_indices, [crop_size, crop_size], method="bilinear")
                 for level in ROI_LEVELS]
        is_real = tf.cast(tf.reduce_any(tf.not_equal(rois, 0.0), axis=1), crops[0].dtype)
        return tf.multiply(tf.reduce_mean(tf.stack(crops, axis=0), axis=0),
                           is_real[:, tf.newaxis, tf.newaxis, tf.newaxis],
                           name="roi_features")


def roi_align(pyramid, rois, levels, batch_size, rois_per_image, crop_size, image_side):
    """Pools each ROI [M, 4] (image pixels) from its level: crop_and_resize to S x S."""
    with tf.name_scope("roi_align"):
        if batch_size is None:
            batch_size = tf.shape(pyramid["P2"])[0]
        box_indices = tf.repeat(tf.range(batch_size), rois_per_image)
        order, crops = [], []
        for level in ROI_LEVELS:
            stride = 2 ** level
            chosen = tf.where(tf.equal(levels, level))[:, 0]
            boxes = feature_boxes(tf.gather(rois, chosen), stride, image_side)
            crops.append(tf.image.crop_and_resize(
                pyramid[f"P{level}"], tf.stop_gradient(boxes),
                tf.gather(box_indices, chosen), [crop_size, crop_size],
                method="bilinear"))
            order.append(chosen)
        order = tf.concat(order, axis=0)
        crops = tf.concat(crops, axis=0)
        # Back to the ROIs' order: row i of the result is the crop of rois[i].
        return tf.gather(crops, tf.argsort(order), name="roi_features")


def refine_detections(rois, probs, deltas, window, cfg, min_confidence):
    """Detections of one image, [DETECTION_MAX_INSTANCES, 6], zero-padded.

    Best class per ROI; that class's deltas decode the ROI; clipped to the window;
    background, padding and low scores dropped; NMS per class; the best
    DETECTION_MAX_INSTANCES kept by score.
    """
    max_out = cfg.DETECTION_MAX_INSTANCES
    class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
    scores = tf.reduce_max(probs, axis=1)
    row = tf.range(tf.shape(probs)[0])
    # deltas [N, NUM_CLASS or 1, 4]: the predicted class's, or the class-agnostic set.
    delta_column = class_ids if int(deltas.shape[1]) > 1 else tf.zeros_like(class_ids)
    class_deltas = tf.gather_nd(deltas, tf.stack([row, delta_column], axis=1))
    boxes = box_ops.decode_boxes(rois, class_deltas, cfg.BBOX_STD_DEV)
    boxes = box_ops.clip_boxes(boxes, window)
    is_real = tf.reduce_any(tf.not_equal(rois, 0.0), axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = tf.logical_and(is_real, class_ids > 0)
    keep = tf.logical_and(keep, scores >= min_confidence)
    keep = tf.logical_and(keep, area > 0)
    boxes = tf.boolean_mask(boxes, keep)
    scores = tf.boolean_mask(scores, keep)
    class_ids = tf.boolean_mask(class_ids, keep)
    # Per-class NMS in one call: boxes of different classes are shifted apart so they
    # never overlap, which makes one NMS equal to an NMS per class.
    shift = tf.cast(class_ids, tf.float32)[:, tf.newaxis] * (4.0 * cfg.TARGET_SIDE)
    _, _, kept, num_kept = box_ops.nms_padded(boxes + shift, scores, max_out,
                                              cfg.DETECTION_NMS_THRESHOLD)
    kept = kept[:num_kept]
    detections = tf.concat([tf.gather(boxes, kept),
                            tf.gather(scores, kept)[:, tf.newaxis],
                            tf.cast(tf.gather(class_ids, kept), tf.float32)[:, tf.newaxis]],
                           axis=1)
    detections = tf.pad(detections, [[0, max_out - num_kept], [0, 0]])
    detections.set_shape([max_out, 6])
    return detections
