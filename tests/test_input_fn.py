"""Input pipeline (data/io/input_fn.py, preprocessing.py, rpn_targets.py) against numpy.

Every expected value is computed here, in numpy, from the annotations or from the
definitions of DESIGN.md (sections 4.3 and 6): resize keeping aspect to TARGET_SIDE,
centred square padding, image_window / image_scale, horizontal flip, small-GT filter,
GT padding/truncation, RPN labels and deltas.
"""
import json
import os

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

from data.io import convert, input_fn, rpn_targets, tfrecord_format
from data.sample.generate import generate_voc_dataset
from libs.base.tf_compat import seeded_graph, tf
from libs.box_utils import box_ops
from libs.box_utils.anchors import config_anchors
from libs.configs import load_config
from libs.model import preprocessing

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
RES101 = os.path.join(REPO_ROOT, "cfgs", "res101_fewshot.py")
FEATURE_KEYS = {"image", "image_window", "image_scale", "original_size", "image_id",
                "filename"}
LABEL_KEYS = {"gt_boxes", "gt_labels", "ignore_boxes", "rpn_labels", "rpn_bbox"}
# EVAL also carries every GT in original pixels for the metrics
EVAL_LABEL_KEYS = LABEL_KEYS | {"eval_gt_boxes", "eval_gt_labels", "eval_gt_difficult",
                                "eval_num_gt"}


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def tiny_config(**overrides):
    return load_config(TINY, overrides)


def np_iou(a, b):
    """IoU of every box of a [N, 4] with every box of b [M, 4], float64."""
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    inter_h = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]),
                      0, None)
    inter_w = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]),
                      0, None)
    inter = inter_h * inter_w
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def expected_geometry(height, width, side):
    """(window [4], scale [2]) of resize-long-side-to-`side` + centred padding."""
    factor = side / max(height, width)
    new_h = min(max(int(np.floor(height * factor + 0.5)), 1), side)
    new_w = min(max(int(np.floor(width * factor + 0.5)), 1), side)
    top, left = (side - new_h) // 2, (side - new_w) // 2
    window = np.array([top, left, top + new_h, left + new_w], np.float64)
    scale = np.array([new_h / height, new_w / width], np.float64)
    return window, scale


def expected_boxes(boxes, window, scale):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return boxes * np.tile(scale, 2) + np.array([window[0], window[1]] * 2)


def encode_png(rgb):
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return data.tobytes()


def write_records(data_dir, split, images):
    """images: dicts with rgb [H, W, 3] uint8, boxes [N, 4] (y1, x1, y2, x2), labels."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, f"{split}-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for index, image in enumerate(images):
            height, width = image["rgb"].shape[:2]
            labels = list(image["labels"])
            example = tfrecord_format.make_example(
                encode_png(image["rgb"]), "png", height, width, f"img_{index}.png",
                index + 1, image["boxes"], labels, [f"c{label}" for label in labels],
                ignore=image.get("ignore"))
            writer.write(example.SerializeToString())
    return data_dir


def run_pipeline(cfg, mode, data_dir, count, split="train", expect_end=False):
    """The first `count` elements (batches) of the pipeline, as numpy; with
    `expect_end`, asserts that the dataset ends right after them."""
    with seeded_graph().as_default():
        dataset = input_fn.make_input_fn(cfg, mode, data_dir=data_dir, split=split)()
        element = tf.data.make_one_shot_iterator(dataset).get_next()
        with tf.Session() as sess:
            elements = [sess.run(element) for _ in range(count)]
            if expect_end:
                with pytest.raises(tf.errors.OutOfRangeError):
                    sess.run(element)
            return elements


def sorted_rows(boxes):
    boxes = np.asarray(boxes)
    return boxes[np.lexsort(boxes.T[::-1])]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """6 generated training images, converted: (data_dir, generator info, class ids)."""
    root = tmp_path_factory.mktemp("sample")
    voc = str(root / "voc")
    info = generate_voc_dataset(voc, num_train=6, num_val=0, seed=0)
    data_dir = str(root / "data")
    convert.convert_dataset(
        "voc", os.path.join(voc, "JPEGImages"), os.path.join(voc, "Annotations"),
        data_dir, split_file=os.path.join(voc, "ImageSets", "Main", "train.txt"),
        progress_every_seconds=1e9)
    with open(os.path.join(data_dir, "label_map.json")) as handle:
        class_ids = {c["name"]: c["id"] for c in json.load(handle)["classes"]}
    info["voc"] = voc
    return data_dir, info, class_ids


# ---------------------------------------------------------------------------------------
# convert -> input_fn round trip (EVAL: no flip, no GT shuffling)
# ---------------------------------------------------------------------------------------

def test_eval_round_trip_matches_annotations(sample):
    data_dir, info, class_ids = sample
    cfg = tiny_config()
    side, max_gt = cfg.TARGET_SIDE, cfg.FAST_RCNN_MAX_INSTANCES
    # EVAL reads the split exactly once.
    elements = run_pipeline(cfg, input_fn.EVAL, data_dir, len(info["train"]),
                            expect_end=True)
    shapes_seen = set()
    for position, (features, labels) in enumerate(elements):
        assert set(features) == FEATURE_KEYS and set(labels) == EVAL_LABEL_KEYS
        stem = os.path.splitext(features["filename"][0].decode())[0]
        # EVAL reads the split once in file order: VOC ids are the sorted positions.
        assert stem == info["train"][position]
        assert features["image_id"][0] == position + 1
        height, width = info["sizes"][stem]
        shapes_seen.add(np.sign(height - width))
        np.testing.assert_array_equal(features["original_size"][0], [height, width])

        window, scale = expected_geometry(height, width, side)
        np.testing.assert_allclose(features["image_window"][0], window, atol=1e-4)
        np.testing.assert_allclose(features["image_scale"][0], scale, rtol=1e-6)

        image = features["image"][0]
        assert image.shape == (side, side, 3)
        y1, x1, y2, x2 = window.astype(int)
        inside = np.zeros((side, side), bool)
        inside[y1:y2, x1:x2] = True
        assert np.all(image[~inside] == 0), "padding must be exactly 0"
        assert np.any(image[inside] != 0)
        original = cv2.imread(os.path.join(info["voc"], "JPEGImages", stem + ".jpg"))
        original = original[..., ::-1].astype(np.float64)  # BGR -> RGB
        # Bilinear resizing keeps the mean colour (to a few grey levels).
        np.testing.assert_allclose(image[inside].reshape(-1, 3).mean(0),
                                   original.reshape(-1, 3).mean(0), atol=3.0)

        objects = info["objects"][stem]
        boxes = np.array([[b[1], b[0], b[3], b[2]] for _, b in objects], np.float64)
        names = np.array([class_ids[name] for name, _ in objects])
        # metrics' ground truth: every object, original pixels, unfiltered, not difficult
        num = len(objects)
        assert labels["eval_num_gt"][0] == num
        np.testing.assert_allclose(labels["eval_gt_boxes"][0, :num], boxes, atol=1e-4)
        np.testing.assert_array_equal(labels["eval_gt_labels"][0, :num], names)
        assert not labels["eval_gt_difficult"][0].any()
        assert not labels["eval_gt_boxes"][0, num:].any()
        assert not labels["eval_gt_labels"][0, num:].any()
        want = expected_boxes(boxes, window, scale)
        keep = np.minimum(want[:, 2] - want[:, 0], want[:, 3] - want[:, 1]) >= cfg.MIN_GT_SIZE
        want, names = want[keep], names[keep]
        count = len(want)
        assert count > 0
        np.testing.assert_allclose(labels["gt_boxes"][0, :count], want, atol=1e-3)
        np.testing.assert_array_equal(labels["gt_labels"][0, :count], names)
        assert labels["gt_boxes"].shape == (1, max_gt, 4)
        assert np.all(labels["gt_boxes"][0, count:] == 0)
        assert np.all(labels["gt_labels"][0, count:] == 0)
        # The GT lies inside the real image.
        assert np.all(want[:, :2] >= window[:2] - 1e-3)
        assert np.all(want[:, 2:] <= window[2:] + 1e-3)
    assert shapes_seen == {-1, 0, 1}, "need landscape, square and portrait images"


@pytest.mark.parametrize("height,width", [(90, 200), (210, 97), (128, 128), (37, 250)])
def test_window_scale_and_boxes_hand_made(tmp_path, height, width):
    colour = np.array([40, 90, 200], np.uint8)
    rgb = np.broadcast_to(colour, (height, width, 3)).copy()
    boxes = np.array([[0, 0, height, width],
                      [height * 0.25, width * 0.1, height * 0.75, width * 0.6]], np.float32)
    data_dir = write_records(str(tmp_path), "val",
                             [{"rgb": rgb, "boxes": boxes, "labels": [2, 1]}])
    cfg = tiny_config()
    side = cfg.TARGET_SIDE
    ((features, labels),) = run_pipeline(cfg, input_fn.EVAL, data_dir, 1, split="val")

    window, scale = expected_geometry(height, width, side)
    np.testing.assert_allclose(features["image_window"][0], window, atol=1e-4)
    np.testing.assert_allclose(features["image_scale"][0], scale, rtol=1e-6)
    np.testing.assert_array_equal(features["original_size"][0], [height, width])
    y1, x1, y2, x2 = window.astype(int)
    image = features["image"][0]
    np.testing.assert_allclose(image[y1:y2, x1:x2], np.broadcast_to(
        colour.astype(np.float32), (y2 - y1, x2 - x1, 3)), atol=1e-3)
    image = image.copy()
    image[y1:y2, x1:x2] = 0
    assert np.all(image == 0)
    # The full-image box becomes the window itself.
    want = expected_boxes(boxes, window, scale)
    np.testing.assert_allclose(want[0], window, atol=1e-9)
    np.testing.assert_allclose(labels["gt_boxes"][0, :2], want, atol=1e-3)
    np.testing.assert_array_equal(labels["gt_labels"][0, :3], [2, 1, 0])


def test_restore_boxes_inverts_transform_boxes():
    rng = np.random.default_rng(3)
    boxes = rng.uniform(0, 500, (20, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    window = np.array([12.0, 0.0, 500.0, 512.0], np.float32)
    scale = np.array([0.73, 0.7312], np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        moved = preprocessing.transform_boxes(tf.constant(boxes), window, scale)
        back = preprocessing.restore_boxes(moved, window, scale)
        moved, back = sess.run([moved, back])
    np.testing.assert_allclose(moved, expected_boxes(boxes, window, scale), rtol=1e-5)
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------
# Flips
# ---------------------------------------------------------------------------------------

def _mirror_left_right(b, side):
    b = np.asarray(b, np.float64)
    return np.stack([b[..., 0], side - b[..., 3], b[..., 2], side - b[..., 1]], -1)


def _mirror_top_bottom(b, side):
    b = np.asarray(b, np.float64)
    return np.stack([side - b[..., 2], b[..., 1], side - b[..., 0], b[..., 3]], -1)


@pytest.mark.parametrize("flip, flip_pixels, mirror", [
    (preprocessing.flip_horizontal, np.fliplr, _mirror_left_right),
    (preprocessing.flip_vertical, np.flipud, _mirror_top_bottom),
])
def test_flips_mirror_image_boxes_and_window(flip, flip_pixels, mirror):
    side = 64
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (side, side, 3)).astype(np.float32)
    boxes = np.array([[1, 2, 30, 40], [10, 0, 20, 64], [5, 33.5, 6, 34]], np.float32)
    window = np.array([3, 7, 61, 50], np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        flipped = sess.run(flip(tf.constant(image), tf.constant(boxes), tf.constant(window)))
    np.testing.assert_array_equal(flipped[0], flip_pixels(image))
    np.testing.assert_allclose(flipped[1], mirror(boxes, side), atol=1e-5)
    np.testing.assert_allclose(flipped[2], mirror(window, side), atol=1e-5)


def test_train_flip_happens_sometimes_and_keeps_gt_in_window(tmp_path):
    # Portrait with an odd padding (34 left, 35 right) so the flipped window differs.
    height, width = 210, 97
    rng = np.random.default_rng(1)
    rgb = rng.integers(1, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 80, 40], [100, 50, 200, 96], [0, 0, 30, 30]], np.float32)
    data_dir = write_records(str(tmp_path), "train",
                             [{"rgb": rgb, "boxes": boxes, "labels": [1, 2, 1]}])
    cfg = tiny_config()
    assert cfg.FLIP_HORIZONTAL
    side = cfg.TARGET_SIDE
    ((ref_features, ref_labels),) = run_pipeline(cfg, input_fn.EVAL, data_dir, 1)
    ref_image = ref_features["image"][0]
    ref_window = ref_features["image_window"][0]
    ref_boxes = ref_labels["gt_boxes"][0, :3]

    def mirror(b):
        return np.stack([b[..., 0], side - b[..., 3], b[..., 2], side - b[..., 1]], -1)

    assert not np.allclose(mirror(ref_window), ref_window)
    flips = []
    for features, labels in run_pipeline(cfg, input_fn.TRAIN, data_dir, 12):
        image, window = features["image"][0], features["image_window"][0]
        gt = labels["gt_boxes"][0]
        count = int(np.sum(labels["gt_labels"][0] > 0))
        assert count == 3 and np.all(gt[count:] == 0)
        flipped = not np.array_equal(image, ref_image)
        flips.append(flipped)
        if flipped:
            np.testing.assert_array_equal(image, np.fliplr(ref_image))
            np.testing.assert_allclose(window, mirror(ref_window), atol=1e-4)
            np.testing.assert_allclose(sorted_rows(gt[:count]),
                                       sorted_rows(mirror(ref_boxes)), atol=1e-3)
        else:
            np.testing.assert_allclose(window, ref_window, atol=1e-4)
            np.testing.assert_allclose(sorted_rows(gt[:count]), sorted_rows(ref_boxes),
                                       atol=1e-3)
        np.testing.assert_array_equal(features["image_scale"], ref_features["image_scale"])
        assert np.all(gt[:count, :2] >= window[:2] - 1e-3)
        assert np.all(gt[:count, 2:] <= window[2:] + 1e-3)
    assert any(flips) and not all(flips), flips


def test_train_vertical_flip_is_its_own_coin(tmp_path):
    """FLIP_VERTICAL alone: some elements come flipped top-bottom, with their GT."""
    height, width = 97, 210      # landscape: the window is padded top and bottom
    rng = np.random.default_rng(2)
    rgb = rng.integers(1, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.array([[5, 10, 40, 80], [50, 100, 96, 200]], np.float32)
    data_dir = write_records(str(tmp_path), "train",
                             [{"rgb": rgb, "boxes": boxes, "labels": [1, 2]}])
    cfg = tiny_config(FLIP_HORIZONTAL=False, FLIP_VERTICAL=True)
    side = cfg.TARGET_SIDE
    ((ref_features, ref_labels),) = run_pipeline(cfg, input_fn.EVAL, data_dir, 1)
    ref_image, ref_window = ref_features["image"][0], ref_features["image_window"][0]
    ref_boxes = ref_labels["gt_boxes"][0, :2]

    def mirror(b):
        return _mirror_top_bottom(b, side)

    flips = []
    for features, labels in run_pipeline(cfg, input_fn.TRAIN, data_dir, 12):
        image, window = features["image"][0], features["image_window"][0]
        gt = labels["gt_boxes"][0, :2]
        flipped = not np.array_equal(image, ref_image)
        flips.append(flipped)
        want_image, want_window, want_boxes = (
            (np.flipud(ref_image), mirror(ref_window), mirror(ref_boxes)) if flipped
            else (ref_image, ref_window, ref_boxes))
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_allclose(window, want_window, atol=1e-4)
        np.testing.assert_allclose(sorted_rows(gt), sorted_rows(want_boxes), atol=1e-3)
    assert any(flips) and not all(flips), flips


# ---------------------------------------------------------------------------------------
# RPN targets
# ---------------------------------------------------------------------------------------

def random_gt(rng, count, side, min_size, max_size):
    size = rng.uniform(min_size, max_size, (count, 2))
    corner = rng.uniform(0, 1, (count, 2)) * (side - size)
    return np.concatenate([corner, corner + size], axis=1).astype(np.float32)


def check_rpn_targets(anchors, gt, labels, deltas, cfg):
    """Asserts the RPN labels/deltas of one image against a numpy computation."""
    minibatch = cfg.RPN_MINIBATCH_SIZE
    max_positive = int(minibatch * cfg.RPN_POSITIVE_RATIO)
    tol = 1e-5  # float32 (TF) against float64 (here) near the thresholds and ties
    assert labels.shape == (len(anchors),) and deltas.shape == (minibatch, 4)
    assert set(np.unique(labels)) <= {-1, 0, 1}
    positive = np.flatnonzero(labels == 1)
    negative = np.flatnonzero(labels == 0)
    assert len(positive) + len(negative) <= minibatch
    assert len(positive) <= max_positive

    if len(gt) == 0:
        assert len(positive) == 0 and len(negative) == minibatch
        assert np.all(deltas == 0)
        return 0

    iou = np_iou(anchors, gt)                               # [A, G]
    best_iou = iou.max(axis=1)
    gt_best = iou.max(axis=0)                               # [G]
    # A GT's best anchor (argmax over anchors, ties allowed) is positive whatever its IoU.
    is_best_sure = np.any((iou >= gt_best - 1e-12) & (gt_best > 0), axis=1)
    is_best_maybe = np.any((iou >= gt_best - tol) & (gt_best > 0), axis=1)
    pos_sure = (best_iou >= cfg.RPN_POSITIVE_IOU + tol) | is_best_sure
    pos_maybe = (best_iou >= cfg.RPN_POSITIVE_IOU - tol) | is_best_maybe
    neg_sure = (best_iou < cfg.RPN_NEGATIVE_IOU - tol) & ~pos_maybe
    neg_maybe = (best_iou < cfg.RPN_NEGATIVE_IOU + tol) & ~pos_sure

    assert np.all(pos_maybe[positive]), "a positive with IoU < 0.7 that is no GT's best"
    assert np.all(neg_maybe[negative]), "a negative with IoU >= 0.3 (or a positive)"
    # Sampling takes as many as allowed: all positives up to the cap, negatives fill up.
    low, high = min(pos_sure.sum(), max_positive), min(pos_maybe.sum(), max_positive)
    assert low <= len(positive) <= high
    assert min(neg_sure.sum(), minibatch - len(positive)) <= len(negative) <= \
        min(neg_maybe.sum(), minibatch - len(positive))

    # Deltas: positives in increasing anchor order, then zero padding.
    assert np.all(deltas[len(positive):] == 0)
    with seeded_graph().as_default(), tf.Session() as sess:
        decoded = sess.run(box_ops.decode_boxes(
            anchors[positive], deltas[:len(positive)], cfg.RPN_BBOX_STD_DEV))
    for row, anchor in enumerate(positive):
        # The matched GT is the anchor's best GT (any of them on a tie).
        candidates = np.flatnonzero(iou[anchor] >= iou[anchor].max() - tol)
        errors = np.abs(gt[candidates] - decoded[row]).max(axis=1)
        assert errors.min() <= 1e-2, (anchor, decoded[row], gt[candidates])
    return len(positive)


@pytest.fixture(scope="module")
def rpn_session():
    """A graph computing build_rpn_targets for fed GT, per config (anchors constant)."""
    graphs = {}

    def run(cfg, gt, seed):
        key = cfg.CONFIG_PATH
        if key not in graphs:
            graph = seeded_graph()
            with graph.as_default():
                anchors = config_anchors(cfg)
                gt_in = tf.placeholder(tf.float32, [None, 4])
                seed_in = tf.placeholder(tf.int64, [2])
                outputs = rpn_targets.build_rpn_targets(
                    anchors, gt_in, cfg.RPN_POSITIVE_IOU, cfg.RPN_NEGATIVE_IOU,
                    cfg.RPN_MINIBATCH_SIZE, cfg.RPN_POSITIVE_RATIO, cfg.RPN_BBOX_STD_DEV,
                    seed=seed_in)
            graphs[key] = (tf.Session(graph=graph), anchors, gt_in, seed_in, outputs)
        sess, anchors, gt_in, seed_in, outputs = graphs[key]
        labels, deltas = sess.run(outputs, {gt_in: np.asarray(gt, np.float32).reshape(-1, 4),
                                            seed_in: seed})
        return anchors, labels, deltas

    yield run
    for sess, *_ in graphs.values():
        sess.close()


@pytest.mark.parametrize("seed,count,min_size,max_size", [
    (0, 1, 10, 60), (1, 3, 8, 40), (2, 6, 15, 90), (3, 10, 4, 30), (4, 2, 60, 128)])
def test_rpn_targets_tiny_random_gt(rpn_session, seed, count, min_size, max_size):
    cfg = tiny_config()
    rng = np.random.default_rng(seed)
    gt = random_gt(rng, count, cfg.TARGET_SIDE, min_size, max_size)
    anchors, labels, deltas = rpn_session(cfg, gt, [seed, 7])
    assert check_rpn_targets(anchors, gt, labels, deltas, cfg) >= 1


def test_rpn_targets_every_gt_gets_its_best_anchor(rpn_session):
    # Tiny boxes no anchor overlaps at 0.7: each still has a positive (its best anchor).
    cfg = tiny_config()
    gt = np.array([[10, 10, 13, 13], [50.5, 70.2, 54, 90], [100, 3, 127, 6]], np.float32)
    anchors, labels, deltas = rpn_session(cfg, gt, [5, 5])
    iou = np_iou(anchors, gt)
    assert np.all(iou.max(axis=0) < cfg.RPN_POSITIVE_IOU)
    check_rpn_targets(anchors, gt, labels, deltas, cfg)
    for g in range(len(gt)):
        best = np.flatnonzero(iou[:, g] >= iou[:, g].max() - 1e-6)
        assert np.any(labels[best] == 1), f"GT {g} has no positive among its best anchors"


def test_rpn_targets_cap_positives(rpn_session):
    # 200 GT boxes close to 200 distinct anchors: far more than 128 positive candidates;
    # exactly 128 are kept and the negatives fill the minibatch.
    cfg = tiny_config()
    rng = np.random.default_rng(11)
    anchors = config_anchors(cfg)
    chosen = rng.choice(len(anchors), 200, replace=False)
    gt = anchors[chosen] + rng.uniform(-0.5, 0.5, (200, 4)).astype(np.float32)
    anchors, labels, deltas = rpn_session(cfg, gt, [1, 1])
    positives = check_rpn_targets(anchors, gt, labels, deltas, cfg)
    assert positives == int(cfg.RPN_MINIBATCH_SIZE * cfg.RPN_POSITIVE_RATIO)
    assert np.sum(labels >= 0) == cfg.RPN_MINIBATCH_SIZE


def test_rpn_targets_without_gt_are_all_negative(rpn_session):
    cfg = tiny_config()
    anchors, labels, deltas = rpn_session(cfg, np.zeros([0, 4]), [0, 0])
    check_rpn_targets(anchors, np.zeros([0, 4], np.float32), labels, deltas, cfg)
    assert np.sum(labels == 0) == cfg.RPN_MINIBATCH_SIZE == 256
    assert np.sum(labels == 1) == 0


def test_rpn_targets_res101_anchors(rpn_session):
    cfg = load_config(RES101)
    rng = np.random.default_rng(5)
    gt = random_gt(rng, 8, cfg.TARGET_SIDE, 20, 400)
    anchors, labels, deltas = rpn_session(cfg, gt, [3, 4])
    assert len(anchors) == 3 * sum((1024 // s) ** 2 for s in (4, 8, 16, 32, 64))
    assert check_rpn_targets(anchors, gt, labels, deltas, cfg) >= 1


def test_rpn_targets_in_the_pipeline(sample):
    # The labels the pipeline emits obey the same rules for its own (flipped) GT.
    data_dir, _, _ = sample
    cfg = tiny_config()
    anchors = config_anchors(cfg)
    for _, labels in run_pipeline(cfg, input_fn.TRAIN, data_dir, 3):
        count = int(np.sum(labels["gt_labels"][0] > 0))
        check_rpn_targets(anchors, labels["gt_boxes"][0, :count], labels["rpn_labels"][0],
                          labels["rpn_bbox"][0], cfg)


# ---------------------------------------------------------------------------------------
# Small-GT filter, padding and truncation to FAST_RCNN_MAX_INSTANCES
# ---------------------------------------------------------------------------------------

def np_covered(boxes, regions, min_fraction):
    """[N] bool: some region holds >= min_fraction of box i's area (numpy)."""
    boxes = np.asarray(boxes, np.float64)[:, None, :]
    regions = np.asarray(regions, np.float64)[None, :, :]
    inter = (np.clip(np.minimum(boxes[..., 2], regions[..., 2])
                     - np.maximum(boxes[..., 0], regions[..., 0]), 0, None)
             * np.clip(np.minimum(boxes[..., 3], regions[..., 3])
                       - np.maximum(boxes[..., 1], regions[..., 1]), 0, None))
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return ((inter > 0) & (inter >= min_fraction * area)).any(axis=1)


def test_rpn_targets_with_ignore_regions_equal_numpy():
    # Hand-made anchors, and a minibatch that takes every candidate, so the labels are
    # the rule itself: positive by IoU (or a GT's best anchor), negative below 0.3 and
    # less than half inside the ignore region, else neither.
    anchors = np.array([
        [10, 10, 40, 40], [12, 12, 42, 42],     # on the GT
        [60, 60, 90, 90],                       # the ignore region itself
        [62, 62, 72, 72],                       # small, inside it (IoU 0.11)
        [50, 50, 70, 70],                       # a quarter inside: still background
        [55, 55, 80, 80],                       # 0.64 inside
        [0, 90, 20, 128], [100, 0, 128, 30],    # far away: background
        [45, 60, 75, 90],                       # exactly half inside
    ], np.float32)
    gt = np.array([[10, 10, 40, 40]], np.float32)
    ignore = np.array([[60, 60, 90, 90], [0, 0, 0, 0]], np.float32)   # one padding row
    with seeded_graph().as_default(), tf.Session() as sess:
        labels, _ = sess.run(rpn_targets.build_rpn_targets(
            anchors, tf.constant(gt), 0.7, 0.3, len(anchors), 1.0, [0.1, 0.1, 0.2, 0.2],
            seed=tf.constant([0, 0], tf.int64), ignore_boxes=tf.constant(ignore),
            ignore_overlap=0.5))
        plain, _ = sess.run(rpn_targets.build_rpn_targets(
            anchors, tf.constant(gt), 0.7, 0.3, len(anchors), 1.0, [0.1, 0.1, 0.2, 0.2],
            seed=tf.constant([0, 0], tf.int64)))
    iou = np_iou(anchors, gt).max(axis=1)
    positive = (iou >= 0.7) | (iou == iou.max())
    negative = (iou < 0.3) & ~positive & ~np_covered(anchors, ignore, 0.5)
    want = np.where(positive, 1, np.where(negative, 0, -1))
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_array_equal(labels, [1, 1, -1, -1, 0, -1, 0, 0, -1])
    # Without the region the same anchors are background (the test can fail).
    np.testing.assert_array_equal(plain, [1, 1, 0, 0, 0, 0, 0, 0, 0])


def test_ignore_regions_leave_the_gt_and_follow_the_image(tmp_path):
    # 128 x 256 at side 128: scale 0.5, window [32, 0, 96, 128].
    cfg = tiny_config(FLIP_HORIZONTAL=True)
    rgb = np.full((128, 256, 3), 100, np.uint8)
    boxes = np.array([[10, 10, 60, 80], [20, 150, 90, 250], [70, 100, 120, 140]],
                     np.float32)
    data_dir = write_records(str(tmp_path), "train", [
        {"rgb": rgb, "boxes": boxes, "labels": [1, 2, 1], "ignore": [0, 1, 0]}])
    ((_, labels),) = run_pipeline(cfg, input_fn.EVAL, data_dir, 1)
    window, scale = expected_geometry(128, 256, cfg.TARGET_SIDE)
    want = expected_boxes(boxes, window, scale)
    np.testing.assert_allclose(labels["gt_boxes"][0, :2], want[[0, 2]], atol=1e-4)
    np.testing.assert_array_equal(labels["gt_labels"][0, :3], [1, 1, 0])
    np.testing.assert_allclose(labels["ignore_boxes"][0, 0], want[1], atol=1e-4)
    assert labels["ignore_boxes"].shape == (1, cfg.IGNORE_MAX_REGIONS, 4)
    assert not labels["ignore_boxes"][0, 1:].any()
    anchors = config_anchors(cfg)
    rpn = labels["rpn_labels"][0]
    covered = np_covered(anchors, want[[1]], cfg.IGNORE_OVERLAP)
    assert covered.any() and not (rpn[covered] == 0).any()
    # TRAIN: a flipped image flips its ignore regions with its objects.
    flipped = 0
    for _, train in run_pipeline(cfg, input_fn.TRAIN, data_dir, 12):
        gt, region = sorted_rows(train["gt_boxes"][0, :2]), train["ignore_boxes"][0, 0]
        mirror = np.array([1, -1, 1, -1]) * want[:, [0, 3, 2, 1]] + [0, 128, 0, 128]
        if np.allclose(gt, sorted_rows(want[[0, 2]]), atol=1e-3):
            np.testing.assert_allclose(region, want[1], atol=1e-3)
        else:
            np.testing.assert_allclose(gt, sorted_rows(mirror[[0, 2]]), atol=1e-3)
            np.testing.assert_allclose(region, mirror[1], atol=1e-3)
            flipped += 1
    assert 0 < flipped < 12


def test_small_gt_are_dropped(tmp_path):
    # 128 x 256 at side 128: scale exactly 0.5, window [32, 0, 96, 128].
    cfg = tiny_config(MIN_GT_SIZE=3)
    rgb = np.full((128, 256, 3), 100, np.uint8)
    boxes = np.array([[10, 10, 15, 40],    # height 5 -> 2.5: dropped
                      [10, 10, 16, 40],    # height 6 -> 3.0: kept (>= MIN_GT_SIZE)
                      [20, 50, 60, 55],    # width 5 -> 2.5: dropped
                      [20, 50, 60, 56],    # width 6 -> 3.0: kept
                      [0, 0, 128, 256]],   # whole image: kept
                     np.float32)
    data_dir = write_records(str(tmp_path), "train",
                             [{"rgb": rgb, "boxes": boxes, "labels": [1, 2, 1, 2, 1]}])
    ((features, labels),) = run_pipeline(cfg, input_fn.EVAL, data_dir, 1)
    window, scale = expected_geometry(128, 256, cfg.TARGET_SIDE)
    np.testing.assert_array_equal(window, [32, 0, 96, 128])
    want = expected_boxes(boxes, window, scale)
    keep = np.minimum(want[:, 2] - want[:, 0], want[:, 3] - want[:, 1]) >= 3
    np.testing.assert_array_equal(keep, [False, True, False, True, True])
    np.testing.assert_allclose(labels["gt_boxes"][0, :3], want[keep], atol=1e-4)
    np.testing.assert_array_equal(labels["gt_labels"][0, :4], [2, 2, 1, 0])
    assert np.all(labels["gt_boxes"][0, 3:] == 0)


def test_gt_truncated_to_max_instances(tmp_path):
    cfg = tiny_config()
    max_gt = cfg.FAST_RCNN_MAX_INSTANCES
    count = max_gt + 10
    rng = np.random.default_rng(2)
    boxes = random_gt(rng, count, 256, 8, 60)   # on a 256 x 256 image: scale 0.5
    boxes = np.round(boxes)
    labels_in = rng.integers(1, 3, count)
    rgb = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    data_dir = write_records(str(tmp_path), "train",
                             [{"rgb": rgb, "boxes": boxes, "labels": labels_in}])
    window, scale = expected_geometry(256, 256, cfg.TARGET_SIDE)
    want = expected_boxes(boxes, window, scale)
    assert np.all(np.minimum(want[:, 2] - want[:, 0], want[:, 3] - want[:, 1]) >= 3)

    # EVAL: the first MAX boxes, in order.
    ((eval_features, labels),) = run_pipeline(cfg, input_fn.EVAL, data_dir, 1)
    assert labels["gt_boxes"].shape == (1, max_gt, 4)
    np.testing.assert_allclose(labels["gt_boxes"][0], want[:max_gt], atol=1e-3)
    np.testing.assert_array_equal(labels["gt_labels"][0], labels_in[:max_gt])

    # TRAIN: MAX distinct boxes of the record (a random subset), each with its label.
    side = cfg.TARGET_SIDE
    mirrored = np.stack([want[:, 0], side - want[:, 3], want[:, 2], side - want[:, 1]], -1)
    subsets = set()
    for features, labels in run_pipeline(cfg, input_fn.TRAIN, data_dir, 4):
        flipped = not np.array_equal(features["image"][0], eval_features["image"][0])
        reference = mirrored if flipped else want
        gt, gt_labels = labels["gt_boxes"][0], labels["gt_labels"][0]
        assert np.all(gt_labels > 0)
        picked = []
        for box, label in zip(gt, gt_labels):
            (match,) = np.flatnonzero(np.abs(reference - box).max(axis=1) < 1e-3)
            assert labels_in[match] == label
            picked.append(int(match))
        assert len(set(picked)) == max_gt
        subsets.add(frozenset(picked))
    assert len(subsets) > 1, "truncation in TRAIN should draw different subsets"


# ---------------------------------------------------------------------------------------
# Determinism, PREDICT, errors
# ---------------------------------------------------------------------------------------

def test_train_pipeline_is_deterministic_per_seed(sample):
    data_dir, info, _ = sample
    count = len(info["train"])
    first = run_pipeline(tiny_config(SEED=0), input_fn.TRAIN, data_dir, count)
    again = run_pipeline(tiny_config(SEED=0), input_fn.TRAIN, data_dir, count)
    other = run_pipeline(tiny_config(SEED=1), input_fn.TRAIN, data_dir, count)
    for (f1, l1), (f2, l2) in zip(first, again):
        for key in ("image", "image_window", "image_id"):
            np.testing.assert_array_equal(f1[key], f2[key])
        for key in ("gt_boxes", "gt_labels", "rpn_labels", "rpn_bbox"):
            np.testing.assert_array_equal(l1[key], l2[key])

    order = [int(f["image_id"][0]) for f, _ in first]
    other_order = [int(f["image_id"][0]) for f, _ in other]
    assert sorted(order) == sorted(other_order) == list(range(1, count + 1))  # one epoch
    assert order != other_order, "a different SEED should shuffle differently"
    # Same image seen the same way (both flipped or both not): the RPN minibatch still
    # differs, because the sampling is seeded from SEED.
    by_id = {int(f["image_id"][0]): (f["image"][0], l["rpn_labels"][0]) for f, l in first}
    other_by_id = {int(f["image_id"][0]): (f["image"][0], l["rpn_labels"][0])
                   for f, l in other}
    same_view = [i for i in by_id if np.array_equal(by_id[i][0], other_by_id[i][0])]
    assert same_view
    assert any(not np.array_equal(by_id[i][1], other_by_id[i][1]) for i in same_view), \
        "a different SEED should sample different RPN minibatches"


def test_predict_mode_gives_features_only(sample):
    data_dir, info, _ = sample
    cfg = tiny_config()
    elements = run_pipeline(cfg, input_fn.PREDICT, data_dir, 2)
    for position, features in enumerate(elements):
        assert isinstance(features, dict) and set(features) == FEATURE_KEYS
        stem = info["train"][position]
        assert features["filename"][0].decode() == stem + ".jpg"
        assert features["image_id"][0] == position + 1
        height, width = info["sizes"][stem]
        window, scale = expected_geometry(height, width, cfg.TARGET_SIDE)
        np.testing.assert_allclose(features["image_window"][0], window, atol=1e-4)
        np.testing.assert_allclose(features["image_scale"][0], scale, rtol=1e-6)
        np.testing.assert_array_equal(features["original_size"][0], [height, width])
        assert features["image"].shape == (1, cfg.TARGET_SIDE, cfg.TARGET_SIDE, 3)


def test_missing_data_dir_or_split_is_a_one_line_data_error(tmp_path, sample):
    cfg = tiny_config()
    missing = str(tmp_path / "no_such_dir")
    with pytest.raises(input_fn.DataError) as error:
        input_fn.make_input_fn(cfg, input_fn.TRAIN, data_dir=missing)
    assert missing in str(error.value) and "\n" not in str(error.value)

    data_dir, _, _ = sample
    with pytest.raises(input_fn.DataError) as error:
        input_fn.make_input_fn(cfg, input_fn.EVAL, data_dir=data_dir, split="nosplit")
    message = str(error.value)
    assert "nosplit" in message and data_dir in message and "\n" not in message
    # EVAL defaults to the config's EVAL_SPLIT ('val'), which was not converted here.
    with pytest.raises(input_fn.DataError, match="val"):
        input_fn.make_input_fn(cfg, input_fn.EVAL, data_dir=data_dir)


def test_bench_input_pipeline_reports_figures(sample, capsys):
    # The command behind docs/input_pipeline.md, on a minimal budget.
    from bench import input_pipeline as bench

    data_dir, info, _ = sample
    assert bench.main(["--cfg", TINY, "--data_dir", data_dir, "--images", "4",
                       "--windows", "2", "--warmup", "0", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["config"] == "tiny_cpu" and figures["target_side"] == 128
    assert figures["records"] == len(info["train"])
    assert figures["images_per_second"] > 0 and len(figures["window_rates"]) == 2
    assert figures["rpn_sampled_per_image"] == 256
    assert bench.main(["--cfg", TINY, "--data_dir", str(data_dir) + "_missing"]) == 1
    assert "error: data dir" in capsys.readouterr().err
