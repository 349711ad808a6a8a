"""Detections from the second stage's outputs: the best class per ROI, its deltas
decoded, clipped, filtered and per-class NMS (FastRCNN.fast_rcnn_detection and
test-time flip merging)."""
from libs.base.tf_compat import tf
from libs.box_utils import box_ops


def detect(rois, class_probs, box_deltas, image_window, cfg, batch_size,
           min_confidence=None):
    """Detections [B, DETECTION_MAX_INSTANCES, 6] from the head's outputs.

    rois [B, N, 4]; class_probs [B*N, NUM_CLASS]; box_deltas [B*N, 1 or NUM_CLASS, 4];
    image_window [B, 4]. Shared by FastRCNN.fast_rcnn_detection and test-time flip
    merging (libs/model/flip_merging.py), which averages several heads' outputs first.
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


def refine_detections(rois, probs, deltas, window, cfg, min_confidence):
    """Detections of one image, [DETECTION_MAX_INSTANCES, 6], zero-padded.

    The candidates (DETECTION_CLASSES): each ROI's best class ("best"), or each ROI with
    every object class ("every"); the candidate class's deltas decode the ROI; clipped
    to the window; background, padding and low scores dropped; NMS per class; the best
    DETECTION_MAX_INSTANCES kept by score.
    """
    max_out = cfg.DETECTION_MAX_INSTANCES
    num_rois, num_classes = tf.shape(probs)[0], int(probs.shape[1])
    if cfg.DETECTION_CLASSES == "every":
        # Each ROI once per object class: columns 1.. of probs, flattened ROI-major.
        class_ids = tf.tile(tf.range(1, num_classes)[tf.newaxis], [num_rois, 1])
        class_ids = tf.reshape(class_ids, [-1])
        scores = tf.reshape(probs[:, 1:], [-1])
        row = tf.repeat(tf.range(num_rois), num_classes - 1)
    else:
        class_ids = tf.argmax(probs, axis=1, output_type=tf.int32)
        scores = tf.reduce_max(probs, axis=1)
        row = tf.range(num_rois)
    rois = tf.gather(rois, row)
    # deltas [N, NUM_CLASS or 1, 4]: the candidate class's, or the class-agnostic set.
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
