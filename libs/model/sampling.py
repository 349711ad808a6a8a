"""The second stage's training targets: which proposals an image's minibatch holds,
with each one's class and box-delta targets (FastRCNN in TRAIN and EVAL)."""
from libs.base.tf_compat import tf
from libs.box_utils import box_ops


def fast_rcnn_targets(proposals, gt_boxes, gt_labels, cfg, num_rois, sample=True,
                      seed=None, ignore_boxes=None):
    """Minibatch of ROIs with class and delta targets for one image.

    Positives: IoU >= FAST_RCNN_POSITIVE_IOU with a GT; negatives: below it. With
    `sample` (the notebook's rule): at most FAST_RCNN_POSITIVE_RATIO * num_rois
    positives, and int(1 / ratio) - 1 negatives per positive (1:2 for 0.33), so the
    classifier sees a balanced minibatch; an image with no positive ROI contributes no
    ROI at all (its losses count 0). FAST_RCNN_SAMPLER "fill" (Detectron's rule) takes
    as many negatives as fit in num_rois instead. Without `sample` (EVAL losses) every
    proposal is kept in order.
    `ignore_boxes` [I, 4] (zero rows allowed): the image's ignore regions (mined
    doubtful boxes, crowds). A proposal below the positive IoU with at least
    IGNORE_OVERLAP of its area inside one is neither background nor foreground: never
    sampled, and labelled -1 (no loss) in the unsampled EVAL rows.
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
    is_negative = best_iou < cfg.FAST_RCNN_POSITIVE_IOU
    if ignore_boxes is None:
        ignored = tf.zeros_like(is_negative)
    else:
        ignored = tf.logical_and(
            is_negative, box_ops.covered_by(proposals, ignore_boxes, cfg.IGNORE_OVERLAP))
    positive = tf.where(best_iou >= cfg.FAST_RCNN_POSITIVE_IOU)[:, 0]
    negative = tf.where(tf.logical_and(is_negative, tf.logical_not(ignored)))[:, 0]
    if sample:
        max_positive = int(num_rois * cfg.FAST_RCNN_POSITIVE_RATIO)
        positive = _shuffle(positive, seed)[:max_positive]
        room = num_rois - tf.shape(positive)[0]
        if cfg.FAST_RCNN_SAMPLER == "fill":
            num_negative = room
        else:
            negatives_per_positive = int(1.0 / cfg.FAST_RCNN_POSITIVE_RATIO) - 1
            num_negative = tf.minimum(negatives_per_positive * tf.shape(positive)[0], room)
        negative = _shuffle(negative, seed + tf.constant([0, 1], seed.dtype))[:num_negative]
    else:
        return _every_proposal_in_order(proposals, safe_gt, safe_labels, best_iou, best_gt,
                                        ignored, cfg, num_rois)
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


def _every_proposal_in_order(proposals, safe_gt, safe_labels, best_iou, best_gt, ignored,
                             cfg, num_rois):
    """fast_rcnn_targets without sampling: row i is proposal i (EVAL scores the same
    ROIs, in the same order, as PREDICT); an ignored proposal is labelled -1."""
    positive = best_iou >= cfg.FAST_RCNN_POSITIVE_IOU
    labels = tf.where(positive, tf.gather(safe_labels, best_gt), tf.zeros_like(best_gt))
    labels = tf.where(ignored, -tf.ones_like(labels), labels)
    deltas = box_ops.encode_boxes(proposals, tf.gather(safe_gt, best_gt), cfg.BBOX_STD_DEV)
    deltas = deltas * tf.cast(positive, tf.float32)[:, tf.newaxis]
    return _padded(proposals, labels, deltas, num_rois)


def _shuffle(indices, seed):
    """A stateless shuffle: the same seed gives the same order on any device/tower."""
    keys = tf.random.stateless_uniform(tf.shape(indices), seed=seed)
    return tf.gather(indices, tf.argsort(keys))
