"""libs.box_utils.box_ops against independent numpy references.

The references below are deliberately naive (python loops over boxes) so that they
share no code or vectorisation tricks with the graph ops. Each test builds a fresh
tf.Graph and evaluates it with a tf.Session.
"""
import math

import numpy as np
import pytest

from libs.base.tf_compat import seeded_graph, tf
from libs.box_utils import box_ops

STD_DEV = [0.1, 0.1, 0.25, 0.27]


# ---------------------------------------------------------------- helpers

def _run(build_fn, feed=None):
    """Builds the ops of build_fn() in a fresh graph and evaluates them."""
    with seeded_graph().as_default():
        fetches = build_fn()
        with tf.Session() as sess:
            return sess.run(fetches, feed_dict=feed)


def _random_boxes(rng, count, max_corner=100.0, min_side=1.0, max_side=50.0):
    corners = rng.uniform(0.0, max_corner, size=(count, 2))
    sides = rng.uniform(min_side, max_side, size=(count, 2))
    return np.concatenate([corners, corners + sides], axis=1).astype(np.float32)


def _np_iou_pair(a, b):
    inter_h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = inter_h * inter_w
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - intersection
    return intersection / union if union > 0 else 0.0


def _np_iou_matrix(boxes1, boxes2):
    out = np.zeros((len(boxes1), len(boxes2)), dtype=np.float64)
    for i, a in enumerate(boxes1.astype(np.float64)):
        for j, b in enumerate(boxes2.astype(np.float64)):
            out[i, j] = _np_iou_pair(a, b)
    return out


def _np_encode(boxes, gt_boxes, std_dev):
    out = []
    for (y1, x1, y2, x2), (gy1, gx1, gy2, gx2) in zip(boxes.astype(np.float64),
                                                        gt_boxes.astype(np.float64)):
        h, w = y2 - y1, x2 - x1
        gh, gw = gy2 - gy1, gx2 - gx1
        cy, cx = y1 + h / 2, x1 + w / 2
        gcy, gcx = gy1 + gh / 2, gx1 + gw / 2
        out.append([(gcy - cy) / h / std_dev[0], (gcx - cx) / w / std_dev[1],
                    math.log(gh / h) / std_dev[2], math.log(gw / w) / std_dev[3]])
    return np.array(out).reshape(-1, 4)


def _np_decode(boxes, deltas, std_dev):
    out = []
    for (y1, x1, y2, x2), delta in zip(boxes.astype(np.float64),
                                       deltas.astype(np.float64)):
        dy, dx, dh, dw = [d * s for d, s in zip(delta, std_dev)]
        h, w = y2 - y1, x2 - x1
        cy, cx = y1 + h / 2 + dy * h, x1 + w / 2 + dx * w
        h, w = h * math.exp(dh), w * math.exp(dw)
        out.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.array(out).reshape(-1, 4)


def _np_greedy_nms(boxes, scores, max_output_size, iou_threshold,
                   score_threshold=-np.inf):
    """Textbook greedy NMS: highest score first, drop anything overlapping a kept box.

    Scores are compared to the threshold in float32, as the graph op sees them: a score
    equal to the threshold is dropped.
    """
    score_threshold = np.float32(score_threshold)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if len(keep) == max_output_size:
            break
        if not scores[i] > score_threshold:
            continue
        if all(_np_iou_pair(boxes[i], boxes[k]) <= iou_threshold for k in keep):
            keep.append(i)
    return keep


def _clustered_boxes(rng, count):
    """Boxes jittered around a few centres, so NMS has real work to do."""
    centres = rng.uniform(20, 80, size=(4, 2))
    picked = centres[rng.integers(0, 4, size=count)]
    jitter = rng.normal(0, 4, size=(count, 2))
    sides = rng.uniform(10, 30, size=(count, 2))
    y1x1 = picked + jitter - sides / 2
    return np.concatenate([y1x1, y1x1 + sides], axis=1).astype(np.float32)


# ---------------------------------------------------------------- iou

@pytest.mark.parametrize("seed", [0, 1])
def test_iou_matrix_random_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    boxes1 = _random_boxes(rng, 17)
    boxes2 = _random_boxes(rng, 11)
    got = _run(lambda: box_ops.iou_matrix(boxes1, boxes2))
    assert got.shape == (17, 11)
    np.testing.assert_allclose(got, _np_iou_matrix(boxes1, boxes2), atol=1e-5)
    assert got.max() > 0.0  # the data must contain overlaps for the test to mean much


def _np_covered(boxes, regions, min_fraction):
    """Brute force: some region holds >= min_fraction of the box's (non-zero) area."""
    out = []
    for a in boxes.astype(np.float64):
        area = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
        covered = False
        for b in regions.astype(np.float64):
            inter = (max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                     * max(0.0, min(a[3], b[3]) - max(a[1], b[1])))
            covered |= inter > 0 and inter / area >= min_fraction
        out.append(covered)
    return np.array(out)


@pytest.mark.parametrize("min_fraction", [0.3, 0.5, 0.9])
def test_covered_by_matches_brute_force(min_fraction):
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 60, max_side=30.0)
    boxes[5] = 0                                       # a zero-area box: never covered
    regions = np.concatenate([_random_boxes(rng, 4, min_side=20.0),
                              np.zeros([2, 4], np.float32)])   # padding rows cover nothing
    got = _run(lambda: box_ops.covered_by(boxes, regions, min_fraction))
    want = _np_covered(boxes, regions, min_fraction)
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < len(boxes) and not got[5]
    # A box inside a region is covered whatever their IoU (a part of an object).
    inside = np.array([[10, 10, 12, 12]], np.float32)
    big = np.array([[0, 0, 100, 100]], np.float32)
    assert _run(lambda: box_ops.covered_by(inside, big, 0.99)).tolist() == [True]
    assert _run(lambda: box_ops.covered_by(big, inside, 0.5)).tolist() == [False]
    assert _run(lambda: box_ops.covered_by(boxes, np.zeros([0, 4]), 0.5)).sum() == 0


def test_iou_matrix_special_cases():
    boxes1 = np.array([
        [10, 10, 20, 20],   # reference box
        [0, 0, 0, 0],       # padding row
        [15, 15, 15, 30],   # zero height (a line inside the reference box)
        [12, 12, 18, 18],   # contained in the reference box
    ], np.float32)
    boxes2 = np.array([
        [10, 10, 20, 20],   # identical to the reference
        [30, 30, 40, 40],   # disjoint
        [20, 10, 30, 20],   # shares an edge only
        [0, 0, 0, 0],       # padding row
        [12, 12, 18, 18],   # contained
    ], np.float32)
    got = _run(lambda: box_ops.iou_matrix(boxes1, boxes2))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _np_iou_matrix(boxes1, boxes2), atol=1e-6)
    assert got[0, 0] == pytest.approx(1.0)
    assert got[0, 1] == 0.0 and got[0, 2] == 0.0
    assert got[0, 4] == pytest.approx(36.0 / 100.0)
    assert np.all(got[1] == 0.0) and np.all(got[2] == 0.0)  # zero-area rows
    assert np.all(got[:, 3] == 0.0)                          # zero-area column


def test_iou_matrix_with_unknown_and_empty_sizes():
    def build():
        boxes1 = tf.placeholder(tf.float32, [None, 4])
        boxes2 = tf.placeholder(tf.float32, [None, 4])
        return boxes1, boxes2, box_ops.iou_matrix(boxes1, boxes2)

    with seeded_graph().as_default():
        boxes1, boxes2, iou = build()
        with tf.Session() as sess:
            empty = sess.run(iou, {boxes1: _random_boxes(np.random.default_rng(3), 5),
                                   boxes2: np.zeros((0, 4), np.float32)})
    assert empty.shape == (5, 0)


# ---------------------------------------------------------------- encode/decode

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encode_matches_numpy_and_round_trips(seed):
    rng = np.random.default_rng(seed)
    anchors = _random_boxes(rng, 50, max_corner=900, min_side=8, max_side=300)
    gt_boxes = _random_boxes(rng, 50, max_corner=900, min_side=5, max_side=500)

    def build():
        deltas = box_ops.encode_boxes(anchors, gt_boxes, STD_DEV)
        return deltas, box_ops.decode_boxes(anchors, deltas, STD_DEV)

    deltas, decoded = _run(build)
    np.testing.assert_allclose(deltas, _np_encode(anchors, gt_boxes, STD_DEV),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(decoded, gt_boxes, rtol=0, atol=1e-3)


def test_decode_matches_numpy():
    rng = np.random.default_rng(7)
    boxes = _random_boxes(rng, 40, max_corner=500, min_side=4, max_side=200)
    deltas = rng.normal(0, 1.5, size=(40, 4)).astype(np.float32)
    got = _run(lambda: box_ops.decode_boxes(boxes, deltas, STD_DEV))
    np.testing.assert_allclose(got, _np_decode(boxes, deltas, STD_DEV),
                               rtol=1e-5, atol=1e-3)


def test_decode_clamps_huge_scale_deltas():
    boxes = np.array([[100, 100, 116, 132], [0, 0, 10, 10]], np.float32)
    deltas = np.array([[0, 0, 1e4, 1e4], [0, 0, -1e4, 50]], np.float32)
    got = _run(lambda: box_ops.decode_boxes(boxes, deltas, [1.0, 1.0, 1.0, 1.0]))
    assert np.all(np.isfinite(got))
    heights = got[:, 2] - got[:, 0]
    widths = got[:, 3] - got[:, 1]
    # Growth is capped at exp(log(1000 / 16)) = 62.5 times; shrinking is not capped.
    np.testing.assert_allclose(heights[0], 16 * 62.5, rtol=1e-5)
    np.testing.assert_allclose(widths, [32 * 62.5, 10 * 62.5], rtol=1e-5)
    assert heights[1] == pytest.approx(0.0, abs=1e-6)


def test_encode_decode_accept_batched_boxes():
    rng = np.random.default_rng(11)
    anchors = _random_boxes(rng, 12, min_side=5).reshape(3, 4, 4)
    gt_boxes = _random_boxes(rng, 12, min_side=5).reshape(3, 4, 4)

    def build():
        deltas = box_ops.encode_boxes(anchors, gt_boxes, STD_DEV)
        return deltas, box_ops.decode_boxes(anchors, deltas, STD_DEV)

    deltas, decoded = _run(build)
    assert deltas.shape == (3, 4, 4)
    np.testing.assert_allclose(
        deltas.reshape(-1, 4),
        _np_encode(anchors.reshape(-1, 4), gt_boxes.reshape(-1, 4), STD_DEV),
        rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(decoded, gt_boxes, atol=1e-3)


def test_encode_of_degenerate_gt_is_finite():
    anchors = np.array([[0, 0, 16, 16]], np.float32)
    gt_boxes = np.array([[0, 0, 0, 0]], np.float32)
    got = _run(lambda: box_ops.encode_boxes(anchors, gt_boxes, STD_DEV))
    assert np.all(np.isfinite(got))


# ---------------------------------------------------------------- clip

def test_clip_boxes_matches_numpy():
    rng = np.random.default_rng(5)
    boxes = rng.uniform(-60, 160, size=(64, 4)).astype(np.float32)
    window = np.array([10, 20, 90, 110], np.float32)

    def build():
        window_input = tf.placeholder(tf.float32, [4])
        return box_ops.clip_boxes(boxes, window_input), window_input

    with seeded_graph().as_default():
        clipped, window_input = build()
        with tf.Session() as sess:
            got = sess.run(clipped, {window_input: window})

    want = np.empty_like(boxes)
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        want[i] = [min(max(y1, window[0]), window[2]), min(max(x1, window[1]), window[3]),
                   min(max(y2, window[0]), window[2]), min(max(x2, window[1]), window[3])]
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- trim_zeros

def test_trim_zeros_removes_exactly_the_zero_rows():
    rng = np.random.default_rng(9)
    boxes = _random_boxes(rng, 20)
    zero_rows = rng.choice(20, size=7, replace=False)
    boxes[zero_rows] = 0.0
    # A real box with zero coordinates is not padding: only all-zero rows are.
    boxes[np.setdiff1d(np.arange(20), zero_rows)[0]] = [0, 0, 5, 5]
    expected_keep = np.array([any(v != 0 for v in row) for row in boxes])

    kept, keep = _run(lambda: box_ops.trim_zeros(boxes))
    np.testing.assert_array_equal(keep, expected_keep)
    np.testing.assert_array_equal(kept, boxes[expected_keep])
    assert len(kept) == 20 - 7


# ---------------------------------------------------------------- nms

@pytest.mark.parametrize("seed,iou_threshold,max_output_size,score_threshold", [
    (0, 0.5, 30, -np.inf),
    (1, 0.3, 30, -np.inf),
    (2, 0.7, 5, -np.inf),      # truncation: more survivors than slots
    (3, 0.5, 30, 0.6),         # score threshold removes low scorers (0.6 itself too)
])
def test_nms_padded_matches_greedy_numpy(seed, iou_threshold, max_output_size,
                                         score_threshold):
    rng = np.random.default_rng(seed)
    boxes = _clustered_boxes(rng, 60)
    scores = rng.permutation(60).astype(np.float32) / 60.0  # distinct: no tie ordering

    def build():
        box_input = tf.placeholder(tf.float32, [None, 4])
        score_input = tf.placeholder(tf.float32, [None])
        outputs = box_ops.nms_padded(box_input, score_input, max_output_size,
                                     iou_threshold, score_threshold)
        return box_input, score_input, outputs

    with seeded_graph().as_default():
        box_input, score_input, outputs = build()
        # Static shapes are known although the input length is not.
        assert outputs[0].shape.as_list() == [max_output_size, 4]
        assert outputs[1].shape.as_list() == [max_output_size]
        assert outputs[2].shape.as_list() == [max_output_size]
        with tf.Session() as sess:
            kept_boxes, kept_scores, indices, num_valid = sess.run(
                outputs, {box_input: boxes, score_input: scores})

    want = _np_greedy_nms(boxes, scores, max_output_size, iou_threshold,
                          score_threshold)
    assert 0 < len(want) and num_valid == len(want)
    if max_output_size == 5:
        assert len(want) == 5
    assert len(want) < 60  # suppression happened
    np.testing.assert_array_equal(indices[:num_valid], want)
    np.testing.assert_array_equal(indices[num_valid:], -1)
    np.testing.assert_array_equal(kept_boxes[:num_valid], boxes[want])
    np.testing.assert_array_equal(kept_boxes[num_valid:], 0.0)
    np.testing.assert_array_equal(kept_scores[:num_valid], scores[want])
    np.testing.assert_array_equal(kept_scores[num_valid:], 0.0)


def test_nms_padded_with_no_boxes_is_all_padding():
    def build():
        return box_ops.nms_padded(tf.zeros([0, 4]), tf.zeros([0]), 4, 0.5)

    kept_boxes, kept_scores, indices, num_valid = _run(build)
    assert num_valid == 0
    np.testing.assert_array_equal(kept_boxes, np.zeros((4, 4)))
    np.testing.assert_array_equal(kept_scores, np.zeros(4))
    np.testing.assert_array_equal(indices, -np.ones(4))


def test_nms_padded_needs_python_int_size():
    with seeded_graph().as_default():
        with pytest.raises(ValueError, match="python int"):
            box_ops.nms_padded(tf.zeros([3, 4]), tf.zeros([3]), tf.constant(3), 0.5)


# ---------------------------------------------------------------- batch_slice

def test_batch_slice_single_output_equals_per_item():
    rng = np.random.default_rng(4)
    values = rng.normal(size=(3, 5, 4)).astype(np.float32)
    weights = rng.normal(size=(3, 4)).astype(np.float32)

    def build():
        out = box_ops.batch_slice([values, weights],
                                  lambda v, w: tf.reduce_sum(v * w, axis=1), 3,
                                  names=["weighted"])
        return out

    with seeded_graph().as_default():
        out = build()
        assert out.name.startswith("weighted")
        with tf.Session() as sess:
            got = sess.run(out)
    want = np.stack([values[i] @ weights[i] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batch_slice_multiple_outputs_nms_per_image():
    rng = np.random.default_rng(8)
    batch_boxes = np.stack([_clustered_boxes(rng, 40) for _ in range(2)])
    batch_scores = np.stack([rng.permutation(40).astype(np.float32) / 40
                             for _ in range(2)])

    def one_image(boxes, scores):
        kept_boxes, kept_scores, _, num_valid = box_ops.nms_padded(boxes, scores, 10, 0.5)
        return kept_boxes, kept_scores, num_valid

    outputs = _run(lambda: box_ops.batch_slice([batch_boxes, batch_scores], one_image, 2))
    assert isinstance(outputs, list) and len(outputs) == 3
    boxes_out, scores_out, num_valid = outputs
    assert boxes_out.shape == (2, 10, 4) and scores_out.shape == (2, 10)
    for i in range(2):
        single = _run(lambda: one_image(tf.constant(batch_boxes[i]),
                                        tf.constant(batch_scores[i])))
        np.testing.assert_array_equal(boxes_out[i], single[0])
        np.testing.assert_array_equal(scores_out[i], single[1])
        assert num_valid[i] == single[2]
        want = _np_greedy_nms(batch_boxes[i], batch_scores[i], 10, 0.5)
        np.testing.assert_array_equal(boxes_out[i][:len(want)], batch_boxes[i][want])


def test_batch_slice_accepts_a_single_tensor():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = _run(lambda: box_ops.batch_slice(tf.constant(values), lambda v: v * 2.0, 3))
    np.testing.assert_array_equal(got, values * 2.0)


def test_batch_slice_with_a_run_time_batch_equals_the_unrolled_one():
    """batch_size=None (the exported model's any-size batch) loops in the graph."""
    rng = np.random.default_rng(9)
    batch_boxes = np.stack([_clustered_boxes(rng, 30) for _ in range(3)])
    batch_scores = rng.uniform(size=(3, 30)).astype(np.float32)

    def one_image(boxes, scores):
        kept_boxes, kept_scores, _, num_valid = box_ops.nms_padded(boxes, scores, 8, 0.5)
        return kept_boxes, kept_scores, num_valid

    unrolled = _run(lambda: box_ops.batch_slice([batch_boxes, batch_scores], one_image, 3))
    with seeded_graph().as_default():
        boxes = tf.placeholder(tf.float32, [None, 30, 4])
        scores = tf.placeholder(tf.float32, [None, 30])
        looped = box_ops.batch_slice([boxes, scores], one_image, None,
                                     output_dtypes=[tf.float32, tf.float32, tf.int32])
        with pytest.raises(ValueError, match="output_dtypes"):
            box_ops.batch_slice([boxes, scores], one_image, None)
        with tf.Session() as sess:
            got = sess.run(looped, {boxes: batch_boxes, scores: batch_scores})
            one = sess.run(looped, {boxes: batch_boxes[1:2], scores: batch_scores[1:2]})
    for want, have in zip(unrolled, got):
        np.testing.assert_array_equal(have, want)
    for want, have in zip(unrolled, one):
        np.testing.assert_array_equal(have[0], want[1])
