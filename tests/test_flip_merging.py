"""Test-time flip merging (libs/flip_merging.py, TEST_FLIPS) against numpy and its
own symmetry: merging an image with its mirror is the same whichever of the two comes in.
"""
import os

import numpy as np
import pytest

from libs.base.tf_compat import seeded_graph, tf
from libs.configs import FLIP_DIRECTIONS, ConfigError, load_config
from libs.model import build_fast_rcnn, flip_merging, preprocessing
from libs.train.model_fn import make_pyramid_fn
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
PREDICT = tf.estimator.ModeKeys.PREDICT


def _run(fetches_fn):
    with seeded_graph().as_default():
        fetches = fetches_fn()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            return sess.run(fetches)


def _box_of_mask(mask):
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.float32)


@pytest.mark.parametrize("direction, np_flip", [("horizontal", np.fliplr),
                                                 ("vertical", np.flipud)])
def test_mirrored_boxes_cover_the_mirrored_pixels(direction, np_flip):
    side = 16
    boxes = np.array([[2, 3, 7, 12], [0, 0, 16, 5], [9, 10, 10, 11]], np.float32)
    mirrored = _run(lambda: preprocessing.mirror_boxes(tf.constant(boxes), float(side),
                                                       direction))
    for box, got in zip(boxes, mirrored):
        mask = np.zeros([side, side], bool)
        y1, x1, y2, x2 = box.astype(int)
        mask[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(got, _box_of_mask(np_flip(mask)))


def _np_decode(box, delta):
    """Naive decoding: shift the centre by delta * side, scale the sides by exp."""
    height, width = box[2] - box[0], box[3] - box[1]
    cy, cx = box[0] + height / 2, box[1] + width / 2
    cy, cx = cy + delta[0] * height, cx + delta[1] * width
    height, width = height * np.exp(delta[2]), width * np.exp(delta[3])
    return np.array([cy - height / 2, cx - width / 2, cy + height / 2, cx + width / 2])


@pytest.mark.parametrize("direction", FLIP_DIRECTIONS)
def test_deltas_predicted_on_the_mirror_decode_to_the_mirrored_box(direction):
    """A delta that moves a mirrored ROI onto the mirrored object, once mirrored back,
    moves the original ROI onto the original object."""
    rng = np.random.RandomState(0)
    side = 64.0
    corners = rng.uniform(0, 40, [5, 2])
    rois = np.concatenate([corners, corners + rng.uniform(4, 20, [5, 2])], 1)
    deltas = rng.normal(0, 0.3, [5, 4]).astype(np.float32)
    mirrored_rois = _run(lambda: preprocessing.mirror_boxes(
        tf.constant(rois, tf.float32), side, direction))
    back = _run(lambda: flip_merging.mirror_deltas(tf.constant(deltas), direction))
    for roi, mirrored_roi, delta, delta_back in zip(rois, mirrored_rois, deltas, back):
        on_mirror = _np_decode(mirrored_roi, delta)          # the box found on the mirror
        y1, x1, y2, x2 = on_mirror
        expected = ([y1, side - x2, y2, side - x1] if direction == "horizontal"
                    else [side - y2, x1, side - y1, x2])
        np.testing.assert_allclose(_np_decode(roi, delta_back), expected, atol=1e-4)


def _merged(cfg, images, rois, prototypes, side):
    """merged_detections of one batch with the given proposals, plus the plain head's."""
    pyramid_fn = make_pyramid_fn(cfg, PREDICT)
    window = tf.constant([[0.0, 0.0, side, side]] * images.shape[0])
    head = build_fast_rcnn.FastRCNN(pyramid_fn(tf.constant(images)), tf.constant(rois),
                                    prototypes, window, cfg, PREDICT)
    merged = flip_merging.merged_detections(head, tf.constant(images), pyramid_fn,
                                               cfg, PREDICT, 0.0)
    return merged, head.fast_rcnn_detection(0.0)


def test_merging_an_image_with_its_mirror_is_symmetric():
    """Image I merged with its left-right mirror I' gives the boxes of I' merged with I,
    mirrored: the same two views, averaged. A wrongly mirrored ROI, window or delta
    breaks it; and the merged scores differ from the plain head's."""
    cfg = load_config(TINY, {"NUM_TRAIN_IMAGES": 4, "TEST_FLIPS": ("horizontal",)})
    side = cfg.TARGET_SIDE
    rng = np.random.RandomState(3)
    images = rng.uniform(-100, 100, [1, side, side, 3]).astype(np.float32)
    num = cfg.RPN_PROPOSALS_INFERENCE
    corners = rng.uniform(0, side * 0.6, [num, 2])
    rois = np.concatenate([corners, corners + rng.uniform(6, side * 0.4, [num, 2])], 1)
    rois = np.minimum(rois, side).astype(np.float32)[np.newaxis]
    rois[0, -3:] = 0.0                                         # padding rows
    mirror_rois = rois.copy()
    mirror_rois[..., 1], mirror_rois[..., 3] = side - rois[..., 3], side - rois[..., 1]
    mirror_rois[0, -3:] = 0.0

    def build():
        prototypes = tf.constant(rng.normal(0, 1, [cfg.NUM_CLASS, cfg.ROI_SIZE,
                                                   cfg.ROI_SIZE, cfg.FPN_CHANNELS]),
                                 tf.float32)
        merged, plain = _merged(cfg, images, rois, prototypes, float(side))
        mirrored_merged, _ = _merged(cfg, images[:, :, ::-1].copy(), mirror_rois,
                                     prototypes, float(side))
        return merged, plain, mirrored_merged

    merged, plain, mirrored_merged = _run(build)
    kept = merged[0, :, 4] > 0
    assert kept.sum() >= 5
    np.testing.assert_array_equal(mirrored_merged[0, :, 5], merged[0, :, 5])    # classes
    np.testing.assert_allclose(mirrored_merged[0, :, 4], merged[0, :, 4], atol=1e-5)
    y1, x1, y2, x2 = merged[0, kept, :4].T
    np.testing.assert_allclose(mirrored_merged[0, kept, :4],
                               np.stack([y1, side - x2, y2, side - x1], 1), atol=1e-3)
    # the plain head keeps other scores: the mirror's view was averaged in
    assert not np.allclose(np.sort(plain[0, :, 4]), np.sort(merged[0, :, 4]))


@pytest.mark.parametrize("flips", [("diagonal",), "horizontal",
                                   ("vertical", "vertical")])
def test_test_flips_must_list_distinct_known_flips(flips):
    with pytest.raises(ConfigError, match="TEST_FLIPS"):
        load_config(TINY, {"TEST_FLIPS": flips})
