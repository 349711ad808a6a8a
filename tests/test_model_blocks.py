"""The model's blocks: shapes on the tiny config, and each computation against numpy."""
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from libs.base.tf_compat import seeded_graph, tf
from libs.configs import ConfigError, load_config
from libs.model import (
    classifiers,
    detection,
    head_layers,
    losses,
    reference,
    roi_pooling,
    sampling,
)
from libs.model.classifiers import comparison
from libs.train.model_fn import detector_graph, make_pyramid_fn
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
TRAIN = tf.estimator.ModeKeys.TRAIN
PREDICT = tf.estimator.ModeKeys.PREDICT


def tiny_cfg(**overrides):
    return load_config(TINY, dict({"NUM_TRAIN_IMAGES": 4}, **overrides))


def fake_batch(cfg, batch=2):
    side, max_gt = cfg.TARGET_SIDE, cfg.FAST_RCNN_MAX_INSTANCES
    rng = np.random.RandomState(0)
    gt = np.zeros([batch, max_gt, 4], np.float32)
    gt[:, 0] = [10, 12, 40, 50]
    gt[:, 1] = [60, 64, 100, 90]
    labels = np.zeros([batch, max_gt], np.int32)
    labels[:, :2] = [1, 2]
    from libs.box_utils.anchors import config_anchors
    num_anchors = len(config_anchors(cfg))
    rpn_labels = np.full([batch, num_anchors], -1, np.int32)
    rpn_labels[:, :20] = 0
    rpn_labels[:, 100] = 1
    features = {"image": tf.constant(rng.uniform(0, 255, [batch, side, side, 3]),
                                     tf.float32),
                "image_window": tf.constant([[0, 0, side, side]] * batch, tf.float32),
                "image_scale": tf.ones([batch, 2]),
                "image_id": tf.range(batch, dtype=tf.int64)}
    targets = {"gt_boxes": tf.constant(gt), "gt_labels": tf.constant(labels),
               "rpn_labels": tf.constant(rpn_labels),
               "rpn_bbox": tf.zeros([batch, cfg.RPN_MINIBATCH_SIZE, 4])}
    return features, targets


def reference_images(cfg, seed=1):
    shape = [cfg.NUM_CLASS - 1, cfg.NUM_SUPPORTS, cfg.REFERENCE_SIDE, cfg.REFERENCE_SIDE, 3]
    return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("classifier", ["comparison", "fc"])
def test_block_output_shapes(classifier):
    cfg = tiny_cfg(CLASSIFIER=classifier)
    batch, side, f = 2, cfg.TARGET_SIDE, cfg.FPN_CHANNELS
    with seeded_graph().as_default():
        features, targets = fake_batch(cfg, batch)
        graph = detector_graph(features, targets, TRAIN,
                               {"net_config": cfg, "reference_images": reference_images(cfg)})
        frcnn = graph["fast_rcnn"]
        detections = frcnn.fast_rcnn_detection()
        cls_loss, loc_loss = frcnn.fast_rcnn_loss()
        rpn_losses = graph["rpn"].rpn_losses()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            out = sess.run({"pyramid": graph["pyramid"], "proposals": graph["proposals"],
                            "rpn_logits": graph["rpn"].rpn_class_logits,
                            "rpn_deltas": graph["rpn"].rpn_deltas,
                            "prototypes": (graph["prototypes"]
                                           if graph["prototypes"] is not None
                                           else tf.constant(0)),
                            "roi_features": frcnn.roi_features,
                            "logits": frcnn.class_logits, "deltas": frcnn.box_deltas,
                            "detections": detections, "losses": (cls_loss, loc_loss),
                            "rpn_losses": rpn_losses})
    for level, stride in zip(cfg.PYRAMID_LEVELS, cfg.BACKBONE_STRIDES):
        assert out["pyramid"][level].shape == (batch, side // stride, side // stride, f)
    num_anchors = sum(s[0] * s[1] * 3 for s in cfg.BACKBONE_SHAPES)
    assert out["rpn_logits"].shape == (batch, num_anchors, 2)
    assert out["rpn_deltas"].shape == (batch, num_anchors, 4)
    assert out["proposals"].shape == (batch, cfg.RPN_PROPOSALS_TRAIN, 4)
    rois = batch * cfg.FAST_RCNN_MINIBATCH_SIZE
    assert out["roi_features"].shape == (rois, cfg.ROI_SIZE, cfg.ROI_SIZE, f)
    assert out["logits"].shape == (rois, cfg.NUM_CLASS)
    assert out["deltas"].shape == (rois, cfg.NUM_CLASS, 4)
    assert out["detections"].shape == (batch, cfg.DETECTION_MAX_INSTANCES, 6)
    assert all(np.isfinite(v) for v in out["losses"] + out["rpn_losses"])
    # proposals lie inside the window and padding rows are exactly zero
    props = out["proposals"]
    assert props.min() >= 0 and props.max() <= side
    if classifier == "comparison":
        assert out["prototypes"].shape == (cfg.NUM_CLASS, cfg.ROI_SIZE, cfg.ROI_SIZE, f)
        if cfg.COMPARISON_RELU:
            assert (out["logits"] >= 0).all()  # conv3d + BN + ReLU: logits >= 0
        else:
            assert (out["logits"] < 0).any()   # linear: batch-normalised, both signs
    else:
        assert graph["prototypes"] is None


def test_class_prototypes_average_supports_then_levels():
    """Constant feature maps make bilinear resizing exact, so numpy can check averages."""
    num_classes, supports, channels, size = 3, 2, 4, 7
    rng = np.random.RandomState(0)
    values = rng.normal(size=[4, num_classes * supports, channels]).astype(np.float32)
    with seeded_graph().as_default():
        pyramid = {}
        for i, level in enumerate(reference.PROTOTYPE_LEVELS):
            side = 32 // (2 ** i)
            pyramid[level] = tf.constant(np.broadcast_to(
                values[i][:, None, None, :], [num_classes * supports, side, side,
                                              channels]).copy())
        pyramid["P6"] = tf.zeros([num_classes * supports, 1, 1, channels])  # unused
        prototypes = reference.class_prototypes(pyramid, num_classes, supports, size)
        with tf.Session() as sess:
            got = sess.run(prototypes)
    expected = values.reshape(4, num_classes, supports, channels).mean(axis=2).mean(axis=0)
    assert got.shape == (num_classes, size, size, channels)
    np.testing.assert_allclose(got, np.broadcast_to(expected[:, None, None, :], got.shape),
                               rtol=1e-5, atol=1e-6)


def _conv3x3_same(x, w, b):
    """Numpy 'SAME' 3x3 conv, x [H, W, Cin], w [3, 3, Cin, Cout]."""
    h, wd, _ = x.shape
    padded = np.pad(x, [[1, 1], [1, 1], [0, 0]])
    out = np.zeros([h, wd, w.shape[-1]], np.float64)
    for i in range(h):
        for j in range(wd):
            out[i, j] = np.tensordot(padded[i:i + 3, j:j + 3], w, axes=3)
    return out + b


def test_prototypes_row0_is_learned_background_of_the_positives():
    cfg = tiny_cfg()
    with seeded_graph().as_default():
        features, targets = fake_batch(cfg, 1)
        graph = detector_graph(features, targets, TRAIN,
                               {"net_config": cfg, "reference_images": reference_images(cfg)})
        positives = tf.get_default_graph().get_tensor_by_name(
            "reference_branch/positive_prototypes:0")
        kernel = [v for v in tf.global_variables()
                  if v.op.name == "background_prototype/conv3x3/weights"][0]
        bias = [v for v in tf.global_variables()
                if v.op.name == "background_prototype/conv3x3/biases"][0]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(bias.assign(np.linspace(-1, 1, cfg.FPN_CHANNELS)))
            protos, pos, w, b = sess.run([graph["prototypes"], positives, kernel, bias])
    num_pos = cfg.NUM_CLASS - 1
    np.testing.assert_allclose(protos[1:], pos, rtol=1e-6)
    stacked = np.concatenate([pos[c] for c in range(num_pos)], axis=-1)  # [S, S, C*F]
    expected = _conv3x3_same(stacked.astype(np.float64), w, b)
    np.testing.assert_allclose(protos[0], expected, rtol=1e-3, atol=1e-4)


def test_window_conv_equals_a_valid_convolution_and_its_gradients():
    """The box branch's 7x7 conv as one matmul: same outputs and gradients as conv2d."""
    rng = np.random.RandomState(2)
    inputs = rng.normal(size=[6, 7, 7, 5]).astype(np.float32)
    upstream = rng.normal(size=[6, 1, 1, 8]).astype(np.float32)
    params = {"is_training": False, "epsilon": 1e-5, "scale": True}
    with seeded_graph().as_default(), tf.Session() as sess:
        x = tf.constant(inputs)
        got = head_layers.window_conv(x, 8, params, "conv_7x7")
        weights = [v for v in tf.global_variables() if v.op.name == "conv_7x7/weights"][0]
        # batch norm at its initial statistics (mean 0, variance 1, gamma 1, beta 0)
        expected = tf.nn.relu(tf.nn.conv2d(x, weights, [1, 1, 1, 1], "VALID") /
                              tf.sqrt(1.0 + 1e-5))
        grads = [tf.gradients(tf.reduce_sum(t * upstream), [x, weights])
                 for t in (got, expected)]
        sess.run(tf.global_variables_initializer())
        (a, b), (ga, gb) = sess.run([(got, expected), grads])
    assert weights.shape.as_list() == [7, 7, 5, 8]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for x_grad, y_grad in zip(ga, gb):
        np.testing.assert_allclose(x_grad, y_grad, rtol=1e-5, atol=1e-5)


def _ramp_pyramid(count, side, channels=2):
    """Levels P2..P5 whose cell (i, j) holds the image x of its centre, (j + 0.5) * s:
    bilinear sampling of such a map at image x returns x, on every level alike."""
    pyramid = {}
    for level in (2, 3, 4, 5):
        stride, cells = 2 ** level, side // 2 ** level
        ramp = (np.arange(cells) + 0.5) * stride
        pyramid[f"P{level}"] = tf.constant(np.broadcast_to(
            ramp[None, None, :, None], [count, cells, cells, channels]).astype(np.float32))
    return pyramid


def _clamped_grid_mean(x1, x2, size, side):
    """What pooling [x1, x2] from the ramp levels gives: on each level the box is clamped
    to the cell centres [s / 2, side - s / 2], sampled at `size` even points (the ramp
    returns the image x of each), and the levels are averaged."""
    grids = [np.linspace(np.clip(x1, s / 2, side - s / 2), np.clip(x2, s / 2, side - s / 2),
                         size) for s in (4, 8, 16, 32)]
    return np.mean(grids, axis=0)


def test_all_levels_pooling_samples_the_same_image_points_on_every_level():
    side, size = 128, 7
    # the second ROI reaches past P5's outermost cell centres (16 px from the border)
    rois = np.array([[40, 36, 80, 92], [4, 6, 100, 60]], np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        pooled = sess.run(roi_pooling.roi_align_all_levels(
            _ramp_pyramid(1, side), tf.constant(rois), 1, 2, size, side))
    for roi, crop in zip(rois, pooled):
        expected = _clamped_grid_mean(roi[1], roi[3], size, side)
        np.testing.assert_allclose(crop[:, :, 0], np.broadcast_to(expected, (size, size)),
                                   rtol=1e-5, atol=1e-3)


def _bilinear(feature_map, y, x):
    """crop_and_resize's bilinear sample of [H, W, C] at feature coordinates (y, x)."""
    height, width = feature_map.shape[:2]
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    dy, dx = y - y0, x - x0
    return ((1 - dy) * (1 - dx) * feature_map[y0, x0] + (1 - dy) * dx * feature_map[y0, x1]
            + dy * (1 - dx) * feature_map[y1, x0] + dy * dx * feature_map[y1, x1])


def test_all_levels_pooling_equals_numpy_on_a_random_pyramid():
    """Both axes, several images: ROI i of the flat [B * N] list is pooled from image
    i // N, each level at its own stride, clamped to its cell centres, levels averaged;
    all-zero rows (the minibatch's padding) give zeros, as roi_align's."""
    side, size, batch, per_image, channels = 128, 7, 2, 3, 3
    rng = np.random.RandomState(3)
    pyramid = {f"P{level}": rng.normal(size=[batch, side >> level, side >> level,
                                             channels]).astype(np.float32)
               for level in (2, 3, 4, 5)}
    rois = rng.uniform(0, side, [batch * per_image, 4]).astype(np.float32)
    rois[:, [0, 2]] = np.sort(rois[:, [0, 2]], axis=1)
    rois[:, [1, 3]] = np.sort(rois[:, [1, 3]], axis=1)
    rois[-1] = 0.0                                   # padding row of the second image
    with seeded_graph().as_default(), tf.Session() as sess:
        pyramid_t = {name: tf.constant(value) for name, value in pyramid.items()}
        pooled = sess.run(roi_pooling.roi_align_all_levels(
            pyramid_t, tf.constant(rois), batch, per_image, size, side))
        by_size = sess.run(roi_pooling.roi_align(
            pyramid_t, tf.constant(rois), tf.constant([2] * len(rois)), batch, per_image,
            size, side))
    expected = np.zeros_like(pooled)
    for i, (y1, x1, y2, x2) in enumerate(rois[:-1]):
        for level in (2, 3, 4, 5):
            stride = 2 ** level
            low, high = stride / 2, side - stride / 2
            ys = np.linspace(np.clip(y1, low, high), np.clip(y2, low, high), size) / stride
            xs = np.linspace(np.clip(x1, low, high), np.clip(x2, low, high), size) / stride
            for a, y in enumerate(ys - 0.5):
                for b, x in enumerate(xs - 0.5):
                    expected[i, a, b] += _bilinear(pyramid[f"P{level}"][i // per_image],
                                                   y, x) / 4
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(by_size[-1], 0.0)
    np.testing.assert_array_equal(pooled[-1], 0.0)


def test_reference_objects_are_pooled_like_query_rois():
    """ROI_POOLING "all_levels": a reference's object box (margin removed) is pooled at
    the same image points as a query ROI of that box."""
    side, size, margin = 64, 7, 0.1
    box = reference.object_box(side, margin)
    np.testing.assert_allclose(box, [side * margin / 1.2] * 2 + [side - side * margin / 1.2] * 2)
    with seeded_graph().as_default(), tf.Session() as sess:
        protos = sess.run(reference.class_prototypes(
            _ramp_pyramid(2, side), 2, 1, size, pooled_box=box, reference_side=side))
    expected = _clamped_grid_mean(box[1], box[3], size, side)
    assert abs(expected[0] - box[1]) > 1     # the clamp matters on a 64-pixel reference
    np.testing.assert_allclose(protos[:, :, :, 0],
                               np.broadcast_to(expected, (2, size, size)), rtol=1e-5,
                               atol=1e-3)


def test_pooled_background_is_the_class_mean_of_one_conv_per_prototype():
    cfg = tiny_cfg(BACKGROUND_PROTOTYPE="pooled")
    rng = np.random.RandomState(5)
    positives = rng.normal(size=[4, cfg.ROI_SIZE, cfg.ROI_SIZE, 6]).astype(np.float32)
    with seeded_graph().as_default():
        background = reference.BACKGROUND_PROTOTYPES["pooled"](tf.constant(positives), 6)
        kernel, bias = [v for v in tf.global_variables()
                        if v.op.name.startswith("background_prototype/conv3x3_per_class/")]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(bias.assign(np.linspace(-1, 1, 6)))
            got, w, b = sess.run([background, kernel, bias])
    # The kernel takes F channels whatever the number of classes.
    assert w.shape == (3, 3, 6, 6)
    expected = np.mean([_conv3x3_same(p.astype(np.float64), w, b) for p in positives], 0)
    assert got.shape == (1, cfg.ROI_SIZE, cfg.ROI_SIZE, 6)
    np.testing.assert_allclose(got[0], expected, rtol=1e-4, atol=1e-5)


def test_sample_supports_takes_distinct_supports_per_class_from_the_seed():
    num_classes, supports, per_step = 3, 5, 2
    # support s of class c is a constant image of value 10 * c + s
    values = 10 * np.arange(num_classes)[:, None] + np.arange(supports)[None]
    images = np.broadcast_to(values[:, :, None, None, None],
                             [num_classes, supports, 4, 4, 3]).astype(np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        seed = tf.placeholder(tf.int64, [2])
        picked, _ = reference.sample_supports(tf.constant(images), per_step, seed)
        draws = [sess.run(picked, {seed: [0, step]}) for step in range(12)]
        again = sess.run(picked, {seed: [0, 3]})
    np.testing.assert_array_equal(again, draws[3])           # stateless: seed -> choice
    chosen_sets = set()
    for draw in draws:
        assert draw.shape == (num_classes, per_step, 4, 4, 3)
        chosen = draw[:, :, 0, 0, 0]
        for c in range(num_classes):
            # per_step different supports of class c, nothing from another class
            assert len(set(chosen[c])) == per_step
            assert set(chosen[c]) <= set(values[c])
        chosen_sets.add(tuple(map(tuple, chosen)))
    assert len(chosen_sets) > 1                              # the choice changes per step


def test_prototypes_from_sampled_supports_average_only_those():
    """With REFERENCE_SUPPORTS_PER_STEP the prototype is that of the sampled supports."""
    cfg = tiny_cfg(NUM_SUPPORTS=3, REFERENCE_SUPPORTS_PER_STEP=1)
    images = reference_images(cfg)
    with seeded_graph().as_default(), tf.Session() as sess:
        pyramid_fn = make_pyramid_fn(cfg, TRAIN, reference_branch=True)
        sampled = reference.build_prototypes(tf.constant(images), pyramid_fn, cfg,
                                             support_seed=tf.constant([0, 7], tf.int64))
        chosen, _ = reference.sample_supports(tf.constant(images), 1,
                                              tf.constant([0, 7], tf.int64))
        alone = reference.build_prototypes(chosen, pyramid_fn,
                                           tiny_cfg(NUM_SUPPORTS=1))
        every = reference.build_prototypes(tf.constant(images), pyramid_fn, cfg)
        sess.run(tf.global_variables_initializer())
        got, expected, all_supports = sess.run([sampled, alone, every])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, all_supports, atol=1e-4)


@pytest.mark.parametrize("gradients", [True, False])
def test_reference_gradients_reach_the_backbone_only_when_asked(gradients):
    cfg = tiny_cfg(REFERENCE_GRADIENTS=gradients)
    with seeded_graph().as_default():
        prototypes = reference.build_prototypes(
            tf.constant(reference_images(cfg)),
            make_pyramid_fn(cfg, TRAIN, reference_branch=True), cfg)
        backbone = [v for v in tf.trainable_variables() if v.op.name.startswith(cfg.NET_NAME)]
        background = [v for v in tf.trainable_variables()
                      if v.op.name.startswith("background_prototype")]
        grads = tf.gradients(tf.reduce_sum(tf.square(prototypes)), backbone + background)
        assert all(g is not None for g in grads[len(backbone):])   # the conv learns
        if not gradients:
            assert all(g is None for g in grads[:len(backbone)])
            return
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = sess.run([g for g in grads[:len(backbone)] if g is not None])
    assert len(values) == len(backbone) and any(np.abs(v).max() > 0 for v in values)


def test_classes_with_fewer_references_average_only_their_real_ones():
    """counts [3, 1]: class 1's empty slots (zeros) must not enter its prototype, also
    when supports are sampled per step (real ones are drawn first)."""
    num_classes, supports, channels, size = 2, 3, 4, 7
    rng = np.random.RandomState(0)
    values = rng.normal(size=[4, num_classes * supports, channels]).astype(np.float32)
    counts = [3, 1]
    with seeded_graph().as_default(), tf.Session() as sess:
        pyramid = {level: tf.constant(np.broadcast_to(
            values[i][:, None, None, :], [num_classes * supports, 32 // 2 ** i,
                                          32 // 2 ** i, channels]).copy())
                   for i, level in enumerate(reference.PROTOTYPE_LEVELS)}
        mask = reference.support_mask(counts, num_classes, supports)
        got = sess.run(reference.class_prototypes(pyramid, num_classes, supports, size,
                                                  mask))
        slots = np.arange(supports * num_classes).reshape(num_classes, supports)
        images = tf.constant(slots[:, :, None, None, None].astype(np.float32))
        picked, picked_mask = sess.run(reference.sample_supports(
            images, 2, tf.constant([0, 1], tf.int64), mask))
    per_class = values.reshape(4, num_classes, supports, channels).mean(axis=0)
    expected = np.stack([per_class[0].mean(axis=0), per_class[1, 0]])
    np.testing.assert_allclose(got[:, 0, 0], expected, rtol=1e-5, atol=1e-6)
    # class 1 has one real support: it is drawn, and the other drawn slot is masked
    assert picked[1, :, 0, 0, 0].tolist().count(slots[1, 0]) == 1
    assert picked_mask[1].tolist() == [1.0, 0.0] or picked_mask[1].tolist() == [0.0, 1.0]
    assert picked_mask[0].tolist() == [1.0, 1.0]
    assert picked_mask[1][picked[1, :, 0, 0, 0] == slots[1, 0]].tolist() == [1.0]


def test_class_agnostic_box_regression_decodes_every_class_with_one_set_of_deltas():
    cfg = tiny_cfg(BOX_REGRESSION="class_agnostic", DETECTION_NMS_THRESHOLD=0.3)
    rois = np.array([[10, 10, 50, 50], [60, 60, 90, 100]], np.float32)
    probs = np.array([[0.1, 0.9, 0.0], [0.2, 0.0, 0.8]], np.float32)
    deltas = np.array([[[0.1, -0.2, 0.3, 0.1]], [[-0.3, 0.2, -0.1, 0.2]]], np.float32)
    window = np.array([0, 0, 128, 128], np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        det = sess.run(detection.refine_detections(
            tf.constant(rois), tf.constant(probs), tf.constant(deltas),
            tf.constant(window), cfg, 0.5))
    std = np.array(cfg.BBOX_STD_DEV)
    for row, roi, d in zip(det[:2], rois, deltas[:, 0] * std):
        h, w = roi[2] - roi[0], roi[3] - roi[1]
        cy, cx = roi[0] + h / 2 + d[0] * h, roi[1] + w / 2 + d[1] * w
        h, w = h * np.exp(d[2]), w * np.exp(d[3])
        np.testing.assert_allclose(row[:4], [cy - h / 2, cx - w / 2, cy + h / 2,
                                             cx + w / 2], rtol=1e-4)
    assert det[:2, 5].tolist() == [1, 2]


def _numpy_detections(rois, probs, deltas, window, cfg, min_confidence, every):
    """refine_detections in numpy: candidates, decode, clip, filter, greedy NMS per
    class, best DETECTION_MAX_INSTANCES by score. Rows (y1, x1, y2, x2, score, class)."""
    std = np.array(cfg.BBOX_STD_DEV)
    candidates = []
    for i, (roi, p) in enumerate(zip(rois, probs)):
        classes = range(1, len(p)) if every else [int(np.argmax(p))]
        for c in classes:
            if c == 0 or p[c] < min_confidence:
                continue
            d = deltas[i, c] * std
            h, w = roi[2] - roi[0], roi[3] - roi[1]
            cy, cx = roi[0] + h / 2 + d[0] * h, roi[1] + w / 2 + d[1] * w
            h, w = h * np.exp(d[2]), w * np.exp(d[3])
            box = np.clip([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2],
                          [window[0], window[1]] * 2, [window[2], window[3]] * 2)
            if (box[2] - box[0]) * (box[3] - box[1]) > 0:
                candidates.append((*box, p[c], c))
    kept = []
    for cand in sorted(candidates, key=lambda row: -row[4]):
        def iou(a, b):
            inter = (max(0, min(a[2], b[2]) - max(a[0], b[0]))
                     * max(0, min(a[3], b[3]) - max(a[1], b[1])))
            area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
            return inter / (area(a) + area(b) - inter)
        if all(k[5] != cand[5] or iou(k, cand) <= cfg.DETECTION_NMS_THRESHOLD
               for k in kept):
            kept.append(cand)
    return np.array(kept[:cfg.DETECTION_MAX_INSTANCES], np.float32).reshape(-1, 6)


@pytest.mark.parametrize("rule", ["best", "every"])
def test_detections_equal_numpy_for_each_candidate_rule(rule):
    """DETECTION_CLASSES: "best" gives each ROI at most one detection, its argmax class;
    "every" gives it one per object class above the threshold, each with its own deltas;
    both then NMS per class and keep the best by score."""
    cfg = tiny_cfg(DETECTION_CLASSES=rule, DETECTION_NMS_THRESHOLD=0.5,
                   DETECTION_MAX_INSTANCES=40)
    rng = np.random.RandomState(3)
    num_rois, num_classes = 16, 4
    corners = rng.uniform(0, 90, (num_rois, 2))
    rois = np.concatenate([corners, corners + rng.uniform(8, 40, (num_rois, 2))],
                          axis=1).astype(np.float32)
    rois[-2:] = 0.0                                          # padding rows
    probs = rng.dirichlet(np.ones(num_classes) * 0.7, num_rois).astype(np.float32)
    deltas = rng.normal(0, 1.0, (num_rois, num_classes, 4)).astype(np.float32)
    window = np.array([0, 0, 128, 128], np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        got = sess.run(detection.refine_detections(
            tf.constant(rois), tf.constant(probs), tf.constant(deltas),
            tf.constant(window), cfg, 0.05))
    real = rois.any(axis=1)
    expected = _numpy_detections(rois[real], probs[real], deltas[real], window, cfg,
                                 0.05, every=(rule == "every"))
    got = got[got[:, 4] > 0]
    assert len(got) == len(expected) > 4
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    # "every" adds the runner-up classes "best" leaves out (here, more detections).
    other = _numpy_detections(rois[real], probs[real], deltas[real], window, cfg, 0.05,
                              every=(rule != "every"))
    assert (len(expected) > len(other)) == (rule == "every")


def test_class_count_independent_head_restores_with_other_class_counts(tmp_path):
    """Trained with C classes, it runs with more: no variable is sized by NUM_CLASS."""
    options = dict(BACKGROUND_PROTOTYPE="pooled", BOX_REGRESSION="class_agnostic")
    shapes = {}
    for num_class in (3, 5):
        cfg = tiny_cfg(NUM_CLASS=num_class, **options)
        with seeded_graph().as_default():
            features, targets = fake_batch(cfg, 1)
            graph = detector_graph(features, None, PREDICT,
                                   {"net_config": cfg,
                                    "reference_images": reference_images(cfg)})
            detections = graph["fast_rcnn"].fast_rcnn_detection(0.0)
            saver = tf.train.Saver()
            with tf.Session() as sess:
                if num_class == 3:
                    sess.run(tf.global_variables_initializer())
                    saver.save(sess, str(tmp_path / "model"))
                else:
                    saver.restore(sess, str(tmp_path / "model"))
                logits, det = sess.run([graph["fast_rcnn"].class_logits, detections])
            shapes[num_class] = {v.op.name: v.shape.as_list()
                                 for v in tf.global_variables()}
        assert logits.shape[1] == num_class
        assert det[:, :, 5].max() < num_class
    assert shapes[3] == shapes[5]


def test_notebook_head_is_sized_by_the_number_of_classes():
    shapes = {}
    for num_class in (3, 5):
        cfg = tiny_cfg(NUM_CLASS=num_class)
        with seeded_graph().as_default():
            features, _ = fake_batch(cfg, 1)
            detector_graph(features, None, PREDICT,
                           {"net_config": cfg, "reference_images": reference_images(cfg)})
            shapes[num_class] = {v.op.name: v.shape.as_list()
                                 for v in tf.global_variables()}
    differ = sorted(n for n in shapes[3] if shapes[3][n] != shapes[5][n])
    assert differ == ["background_prototype/conv3x3/weights",
                      "fast_rcnn/box_regressor/bbox_pred/biases",
                      "fast_rcnn/box_regressor/bbox_pred/weights"]


@pytest.mark.parametrize("relu", [True, False])
def test_comparison_logits_equal_numpy(relu):
    cfg = tiny_cfg(COMPARISON_RELU=relu)
    rng = np.random.RandomState(3)
    m, k, s, f = 5, cfg.NUM_CLASS, cfg.ROI_SIZE, 6
    rois = rng.normal(size=[m, s, s, f]).astype(np.float32)
    protos = rng.normal(size=[k, s, s, f]).astype(np.float32)
    with seeded_graph().as_default():
        logits = classifiers.build(cfg, bn_training=False).logits(
            tf.constant(rois), None, tf.constant(protos))
        variables = {v.op.name.split("/")[-1]: v for v in tf.global_variables()}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            # Non-trivial batch-norm statistics so the test sees them used.
            sess.run([variables["moving_mean"].assign([0.7]),
                      variables["moving_variance"].assign([2.5]),
                      variables["gamma"].assign([1.7]),
                      variables["beta"].assign([0.3])])
            got, w = sess.run([logits, variables["weights"]])
    assert w.shape == (1, s, s, f, 1)
    squared = (rois[:, None] - protos[None]) ** 2                         # [M, K, S, S, F]
    raw = np.einsum("mkijc,ijc->mk", squared.astype(np.float64), w[0, :, :, :, 0])
    eps = 1e-5  # the notebook's head batch-norm epsilon
    expected = 1.7 * (raw - 0.7) / np.sqrt(2.5 + eps) + 0.3
    if relu:
        expected = np.maximum(expected, 0.0)
    else:
        assert (expected < 0).any()      # the case the ReLU would have cut
    assert got.shape == (m, k)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_distance_logits_equal_numpy():
    """COMPARISON_SCORE "distance": -exp(s) * mean_d softplus(v_d) (f_d - p_kd)^2, plus
    the background's bias on column 0; a nearer prototype always scores higher."""
    cfg = tiny_cfg(COMPARISON_SCORE="distance")
    rng = np.random.RandomState(4)
    m, k, s, f = 6, 5, cfg.ROI_SIZE, 3
    rois = rng.normal(size=[m, s, s, f]).astype(np.float32)
    protos = rng.normal(size=[k, s, s, f]).astype(np.float32)
    raw = rng.normal(size=[s * s * f, 1]).astype(np.float32)
    with seeded_graph().as_default():
        logits = classifiers.build(cfg, bn_training=False).logits(
            tf.constant(rois), None, tf.constant(protos))
        variables = {v.op.name.split("/")[-1]: v for v in tf.global_variables()}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run([variables["feature_weights"].assign(raw),
                      variables["log_scale"].assign(-0.7),
                      variables["background_bias"].assign(1.5)])
            got = sess.run(logits)
    weights = np.log1p(np.exp(raw[:, 0].astype(np.float64)))          # softplus
    diff = rois.reshape(m, 1, -1).astype(np.float64) - protos.reshape(1, k, -1)
    distances = (diff ** 2 * weights).mean(axis=-1)                    # [M, K]
    expected = -np.exp(-0.7) * distances
    expected[:, 0] += 1.5
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the nearest prototype (weighted) has the highest logit, background aside
    np.testing.assert_array_equal(np.argmax(got[:, 1:], axis=1),
                                  np.argmin(distances[:, 1:], axis=1))


def test_classifier_registry():
    """Each registered CLASSIFIER / COMPARISON_SCORE builds its base class's subclass,
    config validation offers exactly those names, and reading them (config loading)
    imports no TensorFlow."""
    assert classifiers.names() == ("comparison", "fc")
    assert classifiers.score_names() == ("learned", "distance")
    assert classifiers.uses_prototypes("comparison")
    assert not classifiers.uses_prototypes("fc")
    for name in classifiers.names():
        assert isinstance(classifiers.build(tiny_cfg(CLASSIFIER=name), False),
                          classifiers.Classifier)
    for score in classifiers.score_names():
        built = classifiers.build(tiny_cfg(COMPARISON_SCORE=score), False)
        assert isinstance(built.score, comparison.ComparisonScore)
    with pytest.raises(ConfigError, match=r"CLASSIFIER: must be one of \('comparison', "):
        tiny_cfg(CLASSIFIER="svm")
    with pytest.raises(ValueError, match="COMPARISON_SCORE must be one of"):
        classifiers.build_score(types.SimpleNamespace(COMPARISON_SCORE="cosine"), False)
    probe = ("import sys, libs.configs, libs.model.classifiers; "
             "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT).returncode == 0


def test_assign_levels_matches_formula():
    rois = np.array([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 20, 30], [0, 0, 900, 900],
                     [0, 0, 448, 448], [0, 0, 0, 0]], np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        got = sess.run(roi_pooling.assign_levels(tf.constant(rois), 224.0))
    expected = []
    for y1, x1, y2, x2 in rois:
        area = (y2 - y1) * (x2 - x1)
        level = 2 if area == 0 else 4 + math.log2(math.sqrt(area) / 224.0)
        expected.append(int(min(max(round(level), 2), 5)))
    assert got.tolist() == expected == [4, 3, 2, 5, 5, 2]


def test_roi_align_samples_the_right_feature_coordinates():
    """On a ramp feature map (value = x index), a crop's columns are linear in x."""
    side, crop = 64, 7
    rois = np.array([[8, 10, 40, 50], [4, 4, 12, 20]], np.float32)
    levels = np.array([2, 3], np.int32)
    with seeded_graph().as_default(), tf.Session() as sess:
        pyramid = {}
        for level in roi_pooling.ROI_LEVELS:
            n = side // 2 ** level
            ramp = np.tile(np.arange(n, dtype=np.float32)[None, :, None], [n, 1, 1])
            pyramid[f"P{level}"] = tf.constant(ramp[None])
        got = sess.run(roi_pooling.roi_align(pyramid, tf.constant(rois),
                                                 tf.constant(levels), 1, 2, crop, side))
    for roi, level, crop_values in zip(rois, levels, got):
        stride = 2 ** level
        x1, x2 = roi[1] / stride - 0.5, roi[3] / stride - 0.5
        expected_x = x1 + np.arange(crop) * (x2 - x1) / (crop - 1)
        np.testing.assert_allclose(crop_values[3, :, 0], expected_x, atol=1e-4)


def _bilinear_backward(grads, boxes, image_side):
    """numpy: d(sum(crops * grads)) / d(feature map) for crop_and_resize on one
    [H, H, F] map: every crop sample's gradient spread on its 4 bilinear neighbours."""
    _, crop, _, depth = grads.shape
    out = np.zeros([image_side, image_side, depth], np.float64)
    top = image_side - 1
    for box, grad in zip(boxes.astype(np.float64), grads.astype(np.float64)):
        y1, x1, y2, x2 = box
        for i in range(crop):
            in_y = y1 * top + i * (y2 - y1) * top / (crop - 1)
            if not 0 <= in_y <= top:
                continue
            y0, dy = int(np.floor(in_y)), in_y - np.floor(in_y)
            for j in range(crop):
                in_x = x1 * top + j * (x2 - x1) * top / (crop - 1)
                if not 0 <= in_x <= top:
                    continue
                x0, dx = int(np.floor(in_x)), in_x - np.floor(in_x)
                ya, xa = int(np.ceil(in_y)), int(np.ceil(in_x))
                out[y0, x0] += (1 - dy) * (1 - dx) * grad[i, j]
                out[y0, xa] += (1 - dy) * dx * grad[i, j]
                out[ya, x0] += dy * (1 - dx) * grad[i, j]
                out[ya, xa] += dy * dx * grad[i, j]
    return out


def test_roi_align_gradient_equals_numpy_on_every_run():
    """Many overlapping ROIs on one level: the gradient reaching the feature map is the
    exact bilinear scatter, on each of 4 runs.

    TensorFlow's CPU CropAndResizeGradImage shards the ROIs over threads that add into
    the same feature cells without a lock: lost updates, a 3-5% error on most runs of
    this case, unless op determinism is on (libs/base/tf_compat.py turns it on).
    """
    side, crop, depth, num_rois = 32, 7, 256, 512
    rng = np.random.RandomState(0)
    corners = np.sort(rng.uniform(40, 88, [num_rois, 2, 2]), axis=1)  # overlapping
    rois = np.concatenate([corners[:, 0], corners[:, 1]], axis=1).astype(np.float32)
    rois[:, 2:] += 2.0                                            # no zero-size ROI
    levels = np.full([num_rois], 2, np.int32)                   # all on P2 (stride 4)
    upstream = rng.normal(size=[num_rois, crop, crop, depth]).astype(np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        pyramid = {f"P{level}": tf.zeros([1] + [side * 4 // 2 ** level] * 2 + [depth])
                   for level in roi_pooling.ROI_LEVELS}
        pyramid["P2"] = tf.constant(rng.normal(size=[1, side, side, depth]), tf.float32)
        pooled = roi_pooling.roi_align(pyramid, tf.constant(rois), tf.constant(levels),
                                           1, num_rois, crop, side * 4)
        # Fed, not a constant: grappler would fold the whole (linear) gradient once.
        upstream_input = tf.placeholder(tf.float32, upstream.shape)
        gradient = tf.gradients(tf.reduce_sum(pooled * upstream_input), pyramid["P2"])[0]
        runs = [sess.run(gradient, {upstream_input: upstream})[0] for _ in range(4)]
    boxes = (rois / 4 - 0.5) / (side - 1)                 # as roi_align normalises them
    expected = _bilinear_backward(upstream, boxes, side)
    for got in runs:
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_fast_rcnn_targets_without_positives_give_an_empty_minibatch():
    cfg = tiny_cfg(ADD_GT_TO_PROPOSALS=False)
    proposals = np.array([[0, 0, 10, 10], [100, 100, 120, 120]], np.float32)
    gt = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES, 4], np.float32)
    gt[0] = [50, 50, 80, 80]
    labels = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES], np.int32)
    labels[0] = 1
    with seeded_graph().as_default(), tf.Session() as sess:
        rois, roi_labels, _ = sess.run(sampling.fast_rcnn_targets(
            tf.constant(proposals), tf.constant(gt), tf.constant(labels), cfg, 16))
    assert (roi_labels == -1).all() and not rois.any()


@pytest.mark.parametrize("sampler", ["balanced", "fill"])
def test_fast_rcnn_targets_respect_sampling_rules(sampler):
    cfg = tiny_cfg(FAST_RCNN_SAMPLER=sampler)
    rng = np.random.RandomState(0)
    centres = rng.uniform(10, 110, [300, 2])
    sizes = rng.uniform(8, 40, [300, 2])
    proposals = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).astype(np.float32)
    gt = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES, 4], np.float32)
    gt[:3] = [[10, 10, 40, 40], [50, 60, 90, 100], [70, 10, 110, 35]]
    labels = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES], np.int32)
    labels[:3] = [1, 2, 1]
    num_rois = cfg.FAST_RCNN_MINIBATCH_SIZE
    with seeded_graph().as_default(), tf.Session() as sess:
        rois, roi_labels, deltas = sess.run(sampling.fast_rcnn_targets(
            tf.constant(proposals), tf.constant(gt), tf.constant(labels), cfg, num_rois))
    positives = roi_labels > 0
    negatives = roi_labels == 0
    assert 0 < positives.sum() <= int(num_rois * cfg.FAST_RCNN_POSITIVE_RATIO)
    available = sum(1 for p in proposals if max(_box_iou(p, g) for g in gt[:3]) < 0.5)
    assert available > num_rois                 # enough negatives for either rule
    if sampler == "balanced":
        # the notebook's rule: two negatives per positive (ratio 0.33), padding after
        assert negatives.sum() == min(2 * positives.sum(), num_rois - positives.sum())
        assert positives.sum() + negatives.sum() < num_rois
    else:
        # Detectron's: the positives, then negatives up to the full minibatch
        assert positives.sum() + negatives.sum() == num_rois
    assert (roi_labels[positives.sum() + negatives.sum():] == -1).all()
    assert not rois[roi_labels == -1].any()

    def iou(a, b):
        ih = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        iw = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ih * iw
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    for roi, label, delta in zip(rois, roi_labels, deltas):
        ious = [iou(roi, g) for g in gt[:3]]
        if label > 0:
            best = int(np.argmax(ious))
            assert ious[best] >= 0.5 and labels[best] == label
            # the delta decodes the ROI back onto its GT
            g = gt[best]
            h = roi[2] - roi[0]
            d = delta * cfg.BBOX_STD_DEV
            cy = roi[0] + h / 2 + d[0] * h
            gh = h * np.exp(d[2])
            assert abs((cy - gh / 2) - g[0]) < 1e-2 and abs((cy + gh / 2) - g[2]) < 1e-2
        elif label == 0:
            assert max(ious) < 0.5 and not delta.any()


def _box_iou(a, b):
    ih = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ih * iw
    return ih * iw / union


def test_fast_rcnn_targets_without_sampling_keep_every_proposal_in_its_place():
    # EVAL: row i stays proposal i (the ROIs PREDICT scores, in the same order).
    cfg = tiny_cfg()
    proposals = np.array([[0, 0, 10, 10], [48, 52, 82, 80], [10, 10, 40, 40],
                          [100, 100, 120, 120]], np.float32)
    gt = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES, 4], np.float32)
    gt[:2] = [[50, 50, 80, 80], [10, 10, 40, 42]]
    labels = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES], np.int32)
    labels[:2] = [2, 1]
    padded = np.pad(proposals, [[0, 2], [0, 0]])           # RPN padding at the end
    with seeded_graph().as_default(), tf.Session() as sess:
        rois, roi_labels, deltas = sess.run(sampling.fast_rcnn_targets(
            tf.constant(padded), tf.constant(gt), tf.constant(labels), cfg, 6,
            sample=False))
    np.testing.assert_array_equal(rois, padded)
    np.testing.assert_array_equal(roi_labels, [0, 2, 1, 0, -1, -1])
    assert not deltas[[0, 3, 4, 5]].any() and deltas[[1, 2]].any()
    # proposal 2 is gt 1 but 2 px narrower: dw = log(32 / 30) / std, dh = 0
    np.testing.assert_allclose(deltas[2, 2:], [0, np.log(32 / 30) / cfg.BBOX_STD_DEV[3]],
                               rtol=1e-4, atol=1e-6)


def _np_inside_fraction(box, region):
    ih = max(0, min(box[2], region[2]) - max(box[0], region[0]))
    iw = max(0, min(box[3], region[3]) - max(box[1], region[1]))
    return ih * iw / ((box[2] - box[0]) * (box[3] - box[1]))


def test_fast_rcnn_targets_take_no_roi_inside_an_ignore_region():
    cfg = tiny_cfg(FAST_RCNN_SAMPLER="fill", IGNORE_OVERLAP=0.5, ADD_GT_TO_PROPOSALS=False)
    proposals = np.array([
        [10, 10, 40, 40], [11, 11, 41, 41],          # positives of the GT
        [60, 60, 90, 90],                            # the region, on a real object: positive
        [65, 65, 80, 80],                            # a part of the region: ignored
        [45, 60, 75, 90],                            # exactly half inside: ignored
        [40, 40, 70, 70],                            # a ninth inside: background
        [0, 90, 20, 120], [100, 0, 120, 30],         # background
        [58, 58, 92, 92],                            # on the real object: positive
    ], np.float32)
    gt = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES, 4], np.float32)
    gt[:2] = [[10, 10, 40, 40], [59, 59, 91, 91]]
    labels = np.zeros([cfg.FAST_RCNN_MAX_INSTANCES], np.int32)
    labels[:2] = [1, 2]
    region = [60, 60, 90, 90]
    ignore = np.zeros([4, 4], np.float32)
    ignore[0] = region
    inside = np.array([_np_inside_fraction(p, region) >= 0.5 for p in proposals])
    best_iou = np.array([max(_box_iou(p, g) for g in gt[:2]) for p in proposals])
    want_negative = {tuple(p) for p, i, b in zip(proposals, inside, best_iou)
                     if b < 0.5 and not i}
    want_positive = {tuple(p) for p, b in zip(proposals, best_iou) if b >= 0.5}
    assert want_negative == {tuple(proposals[i]) for i in (5, 6, 7)}
    with seeded_graph().as_default(), tf.Session() as sess:
        rois, roi_labels, _ = sess.run(sampling.fast_rcnn_targets(
            tf.constant(proposals), tf.constant(gt), tf.constant(labels), cfg, 32,
            ignore_boxes=tf.constant(ignore)))
        plain = sess.run(sampling.fast_rcnn_targets(
            tf.constant(proposals), tf.constant(gt), tf.constant(labels), cfg, 32)[1])
        # EVAL: every proposal in its place; an ignored one carries no loss (-1).
        _, eval_labels, _ = sess.run(sampling.fast_rcnn_targets(
            tf.constant(proposals), tf.constant(gt), tf.constant(labels), cfg,
            len(proposals), sample=False, ignore_boxes=tf.constant(ignore)))
    assert {tuple(r) for r in rois[roi_labels == 0]} == want_negative
    assert {tuple(r) for r in rois[roi_labels > 0]} == want_positive
    assert (plain == 0).sum() == 5          # without the region: two more negatives
    np.testing.assert_array_equal(eval_labels, [1, 1, 2, -1, -1, 0, 0, 0, 2])


def test_refine_detections_nms_per_class_and_drops():
    cfg = tiny_cfg(DETECTION_NMS_THRESHOLD=0.3)
    rois = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [11, 11, 51, 51],
                     [60, 60, 90, 90], [0, 0, 0, 0]], np.float32)
    probs = np.array([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.3, 0.0, 0.7],
                      [0.9, 0.05, 0.05], [0.0, 1.0, 0.0]], np.float32)
    deltas = np.zeros([5, cfg.NUM_CLASS, 4], np.float32)
    window = np.array([0, 0, 128, 128], np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        det = sess.run(detection.refine_detections(
            tf.constant(rois), tf.constant(probs), tf.constant(deltas),
            tf.constant(window), cfg, 0.5))
    kept = det[det[:, 4] > 0]
    # ROI 1 is suppressed by ROI 0 (same class); ROI 2 overlaps but is class 2: kept;
    # ROI 3 is background; ROI 4 is padding.
    np.testing.assert_allclose(kept[:, 4], [0.9, 0.7])
    assert kept[:, 5].tolist() == [1, 2]
    np.testing.assert_allclose(kept[0, :4], rois[0])
    assert det.shape == (cfg.DETECTION_MAX_INSTANCES, 6) and not det[2:].any()


def test_l2_regularisation_is_size_normalised_and_skips_batch_norm():
    rng = np.random.RandomState(0)
    a = rng.normal(size=[3, 3, 2, 4]).astype(np.float32)
    b = rng.normal(size=[5]).astype(np.float32)
    with seeded_graph().as_default():
        va = tf.Variable(a, name="conv/weights")
        vb = tf.Variable(b, name="conv/biases")
        vg = tf.Variable(np.ones(4, np.float32), name="conv/BatchNorm/gamma")
        loss = losses.l2_regularisation([va, vb, vg], 1e-4)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            got = sess.run(loss)
    expected = (a ** 2).sum() / 2 * 1e-4 / a.size + (b ** 2).sum() / 2 * 1e-4 / b.size
    assert got == pytest.approx(expected, rel=1e-5)


def test_losses_of_an_empty_minibatch_are_zero_not_nan():
    with seeded_graph().as_default(), tf.Session() as sess:
        ce = losses.sparse_softmax_cross_entropy(tf.zeros([0], tf.int32), tf.zeros([0, 3]))
        l1 = losses.safe_mean(losses.smooth_l1(tf.zeros([0, 4]), tf.zeros([0, 4])))
        assert sess.run([ce, l1]) == [0.0, 0.0]
