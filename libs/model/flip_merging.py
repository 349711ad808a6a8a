"""Test-time flip merging (TEST_FLIPS): the second stage sees every proposal mirrored too.

    TEST_FLIPS = ("horizontal", "vertical")   # in a config; or tools/eval.py --test_flips

For each listed flip the image is mirrored, run through the same backbone and FPN, and
the head scores the *same* proposals mirrored onto it. Each ROI's class probabilities
are then averaged over the views, and so are its box deltas (mirrored back: a
left-right flip negates the x offset, a top-bottom flip the y offset), before the
usual decoding, clipping and per-class NMS (detection.detect). Sharing the
proposals keeps one ROI per object across views, so nothing needs matching afterwards,
and a view only changes how each proposal is scored and refined. Each flip adds one
backbone pass and one head pass (the RPN runs once): ("horizontal", "vertical")
evaluated DeepPCB at 1.9x the plain time (docs/results.md).

Used in EVAL and PREDICT (so an exported model merges too); training never flips here
(FLIP_HORIZONTAL / FLIP_VERTICAL augment the training images instead).
"""
from libs.base.tf_compat import tf
from libs.model import build_fast_rcnn, detection, preprocessing

# Which image axis of [B, H, W, C] each flip reverses, and which delta it negates
# (deltas are [dy, dx, dh, dw]).
_IMAGE_AXIS = {"horizontal": 2, "vertical": 1}
_DELTA_SIGN = {"horizontal": [1.0, -1.0, 1.0, 1.0], "vertical": [-1.0, 1.0, 1.0, 1.0]}


def mirror_deltas(box_deltas, direction):
    """Deltas [..., 4] predicted on a mirrored image -> deltas of the original image."""
    return box_deltas * tf.constant(_DELTA_SIGN[direction], tf.float32)


def merged_detections(head, images, pyramid_fn, cfg, mode, min_confidence):
    """Detections [B, DETECTION_MAX_INSTANCES, 6] merged over the plain view and the
    views of cfg.TEST_FLIPS.

    head: the plain view's build_fast_rcnn.FastRCNN; images: the mean-subtracted
    [B, H, W, 3] batch it was built on; pyramid_fn: the query branch's (same weights).
    """
    probs, deltas = [head.class_probs], [head.box_deltas]
    for direction in cfg.TEST_FLIPS:
        with tf.name_scope(f"test_time_flip_{direction}"):
            axis = _IMAGE_AXIS[direction]
            side = tf.cast(tf.shape(images)[axis], tf.float32)
            mirrored = build_fast_rcnn.FastRCNN(
                pyramid_fn(tf.reverse(images, axis=[axis])),
                preprocessing.mirror_boxes(head.rois, side, direction),
                head.prototypes,
                preprocessing.mirror_boxes(head.image_window, side, direction),
                cfg, mode)
            probs.append(mirrored.class_probs)
            deltas.append(mirror_deltas(mirrored.box_deltas, direction))
    with tf.name_scope("test_time_flip_merge"):
        class_probs = tf.add_n(probs) / len(probs)
        box_deltas = tf.add_n(deltas) / len(deltas)
    return detection.detect(head.rois, class_probs, box_deltas, head.image_window, cfg,
                            head.batch_size, min_confidence)
