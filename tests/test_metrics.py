"""libs/evaluation: VOC AP by hand-computed cases, COCO figures against pycocotools used
directly, and the Estimator bridge in a TF session."""
import contextlib
import io
import math

import numpy as np
import pytest

from libs.evaluation.detection_evaluator import (
    COCO_STAT_NAMES,
    DetectionEvaluator,
    average_precision,
    iou_matrix,
    metric_names,
)
from libs.evaluation.metrics import eval_metric_ops
from libs.evaluation.table import format_table

BOX = [0.0, 0.0, 10.0, 10.0]          # [y1, x1, y2, x2]
OTHER_BOX = [50.0, 50.0, 70.0, 70.0]
# Shifted 6 px right: intersection 10 x 4 = 40, union 160, IoU 0.25 < 0.5.
SHIFTED_BOX = [0.0, 6.0, 10.0, 16.0]


def voc_ap(evaluator, name):
    return evaluator.evaluate()[f"voc/AP@0.5/{name}"]


# ---------------------------------------------------------------- IoU and AP helpers

def test_iou_is_continuous_without_plus_one():
    # Half overlap: intersection 10 x 5 = 50, union 150 -> 1/3 (the +1 rule gives 66/176).
    assert iou_matrix([BOX], [[0.0, 5.0, 10.0, 15.0]])[0, 0] == pytest.approx(1 / 3)
    assert iou_matrix([BOX], [SHIFTED_BOX])[0, 0] == pytest.approx(0.25)
    assert iou_matrix([BOX], [OTHER_BOX])[0, 0] == 0.0
    assert iou_matrix([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0  # empty union
    assert iou_matrix(np.zeros((0, 4)), [BOX]).shape == (0, 1)


def test_average_precision_envelope():
    # Precision 1, 0.5, 2/3 at recall .5, .5, 1: envelope 1 up to .5 then 2/3.
    assert average_precision([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(5 / 6)
    assert average_precision([], []) == 0.0


# ---------------------------------------------------------------- VOC, by hand

def test_perfect_detections_give_ap_one():
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth("a", [BOX, OTHER_BOX], [1, 1])
    evaluator.add_detections("a", [OTHER_BOX, BOX], [0.9, 0.8], [1, 1])
    evaluator.add_ground_truth("b", [BOX], [1])
    evaluator.add_detections("b", [BOX], [0.3], [1])
    results = evaluator.evaluate()
    assert results["voc/AP@0.5/cat"] == pytest.approx(1.0)
    assert results["voc/mAP@0.5"] == pytest.approx(1.0)
    assert results["voc/num_gt/cat"] == 3
    assert results["coco/mAP"] == pytest.approx(1.0)


def test_detections_below_iou_half_give_ap_zero():
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX], [1])
    evaluator.add_detections(1, [SHIFTED_BOX], [0.9], [1])
    assert voc_ap(evaluator, "cat") == 0.0


def test_iou_exactly_half_is_a_match():
    # [0, 0, 10, 20] against [0, 0, 10, 10]: 100 / 200 = 0.5 exactly; threshold is >=.
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX], [1])
    evaluator.add_detections(1, [[0.0, 0.0, 10.0, 20.0]], [0.9], [1])
    assert voc_ap(evaluator, "cat") == pytest.approx(1.0)


def duplicate_case(use_07_metric):
    # Two objects. By score: 0.9 on BOX (TP), 0.8 on BOX again (FP: duplicate),
    # 0.7 on OTHER_BOX (TP).
    #   after 1: TP 1 FP 0 -> precision 1,   recall 0.5
    #   after 2: TP 1 FP 1 -> precision 1/2, recall 0.5
    #   after 3: TP 2 FP 1 -> precision 2/3, recall 1
    # All-point: envelope 1 on (0, .5], 2/3 on (.5, 1] -> AP = .5 * 1 + .5 * 2/3 = 5/6.
    # 11-point: r = 0, .1, ..., .5 (6 points) -> 1; r = .6, ..., 1 (5 points) -> 2/3
    #   -> AP = (6 + 5 * 2/3) / 11 = 28/33.
    evaluator = DetectionEvaluator(["cat"], use_07_metric=use_07_metric)
    evaluator.add_ground_truth(1, [BOX, OTHER_BOX], [1, 1])
    evaluator.add_detections(1, [OTHER_BOX, BOX, BOX], [0.7, 0.9, 0.8], [1, 1, 1])
    return voc_ap(evaluator, "cat")


def test_duplicate_detection_is_a_false_positive():
    assert duplicate_case(use_07_metric=False) == pytest.approx(5 / 6)


def test_eleven_point_metric():
    assert duplicate_case(use_07_metric=True) == pytest.approx(28 / 33)


def test_missed_object_halves_recall():
    # One TP at the top score, one object never found: recall stops at 0.5 with
    # precision 1 -> all-point AP = 0.5.
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX, OTHER_BOX], [1, 1])
    evaluator.add_detections(1, [BOX], [0.9], [1])
    assert voc_ap(evaluator, "cat") == pytest.approx(0.5)


def test_missed_image_counts_its_objects():
    # Image 2 has ground truth and no detections at all: same as a missed object.
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX], [1])
    evaluator.add_detections(1, [BOX], [0.9], [1])
    evaluator.add_ground_truth(2, [BOX], [1])
    assert voc_ap(evaluator, "cat") == pytest.approx(0.5)


def test_detection_on_image_without_ground_truth_is_false_positive():
    # Ranked: 0.9 on an image with no GT (FP), then 0.5 TP -> precision 1/2 at recall 1.
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX], [1])
    evaluator.add_detections(1, [BOX], [0.5], [1])
    evaluator.add_detections(2, [BOX], [0.9], [1])
    assert voc_ap(evaluator, "cat") == pytest.approx(0.5)


def test_difficult_ground_truth_is_ignored():
    # The top detection sits on a difficult box: ignored, not a FP. The difficult box
    # in image 2 is never found: not a miss. So the one real object, found -> AP 1.
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX, OTHER_BOX], [1, 1], difficult=[False, True])
    evaluator.add_detections(1, [OTHER_BOX, BOX], [0.95, 0.9], [1, 1])
    evaluator.add_ground_truth(2, [BOX], [1], difficult=[True])
    results = evaluator.evaluate()
    assert results["voc/AP@0.5/cat"] == pytest.approx(1.0)
    assert results["voc/num_gt/cat"] == 1          # non-difficult boxes only
    assert results["voc/num_detections/cat"] == 1  # the ignored one is not counted


def test_only_difficult_ground_truth_gives_undefined_ap():
    evaluator = DetectionEvaluator(["cat", "dog"])
    evaluator.add_ground_truth(1, [BOX, OTHER_BOX], [1, 2], difficult=[True, False])
    evaluator.add_detections(1, [BOX, OTHER_BOX], [0.9, 0.9], [1, 2])
    results = evaluator.evaluate()
    assert math.isnan(results["voc/AP@0.5/cat"])
    assert results["voc/mAP@0.5"] == pytest.approx(1.0)


def test_wrong_class_is_a_false_positive_and_classes_are_averaged():
    # cat: one object, found -> AP 1.
    # dog: one object at OTHER_BOX found with score 0.5; a "dog" on the cat (score 0.9)
    #   comes first and is a FP -> precision 1/2 at recall 1 -> AP 0.5.
    # mAP = (1 + 0.5) / 2 = 0.75. "bird" has no ground truth: NaN, not in the mean.
    evaluator = DetectionEvaluator(["cat", "dog", "bird"])
    evaluator.add_ground_truth(1, [BOX, OTHER_BOX], [1, 2])
    evaluator.add_detections(1, [BOX, BOX, OTHER_BOX], [0.8, 0.9, 0.5], [1, 2, 2])
    results = evaluator.evaluate()
    assert results["voc/AP@0.5/cat"] == pytest.approx(1.0)
    assert results["voc/AP@0.5/dog"] == pytest.approx(0.5)
    assert math.isnan(results["voc/AP@0.5/bird"])
    assert results["voc/mAP@0.5"] == pytest.approx(0.75)


def test_nothing_at_all_is_nan_not_a_crash():
    evaluator = DetectionEvaluator(["cat"])
    results = evaluator.evaluate()
    assert list(results) == metric_names(["cat"])
    assert math.isnan(results["voc/mAP@0.5"]) and math.isnan(results["coco/mAP"])
    assert results["num_images"] == 0


def test_no_detections_give_zero_where_there_is_ground_truth():
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX], [1])
    results = evaluator.evaluate()
    assert results["voc/mAP@0.5"] == 0.0
    for name in ("coco/mAP", "coco/AP50", "coco/AP75", "coco/AR@100"):
        assert results[name] == 0.0
    assert math.isnan(results["coco/AP_large"])  # no large object: undefined


def test_reset_and_duplicate_images_and_bad_labels():
    evaluator = DetectionEvaluator(["cat"])
    evaluator.add_ground_truth(1, [BOX], [1])
    evaluator.add_detections(1, [BOX], [0.9], [1])
    evaluator.add_ground_truth(1, [OTHER_BOX], [1])       # repeated image: ignored
    evaluator.add_detections(1, [OTHER_BOX], [0.99], [1])
    assert evaluator.num_duplicate_images == 2
    assert voc_ap(evaluator, "cat") == pytest.approx(1.0)
    evaluator.reset()
    assert evaluator.num_images == 0
    with pytest.raises(ValueError, match="1..1"):
        evaluator.add_ground_truth(1, [BOX], [2])
    with pytest.raises(ValueError, match="1..1"):
        evaluator.add_detections(1, [BOX], [0.5], [0])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        evaluator.add_detections(1, [[1, 2, 3]], [0.5], [1])


def test_format_table():
    evaluator = DetectionEvaluator(["cat", "long dog name"])
    evaluator.add_ground_truth(1, [BOX], [1])
    evaluator.add_detections(1, [BOX], [0.9], [1])
    results = evaluator.evaluate()
    text = format_table(results, evaluator.class_names, evaluator.coco_summary_text)
    lines = text.splitlines()
    assert lines[0].split() == ["class", "#GT", "#det", "AP@0.5"]
    assert lines[2].split() == ["cat", "1", "1", "1.0000"]
    assert lines[3].split() == ["long", "dog", "name", "0", "0", "n/a"]
    assert "VOC mAP@0.5 (1/2 classes with ground truth): 1.0000" in text
    assert "COCO mAP@[.5:.95]: 1.0000" in text
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in text


# ---------------------------------------------------------------- COCO vs pycocotools

def synthetic_dataset(seed, num_images=10, num_classes=3):
    """Per image: (gt boxes, labels, difficult, det boxes, scores, det labels).

    Boxes of 6..200 px (all COCO area ranges), detections jittered from ground truth,
    some with a wrong class, plus random false positives. Image 0 has no detections,
    the last image no ground truth.
    """
    rng = np.random.RandomState(seed)
    images = []
    for index in range(num_images):
        num_gt = 0 if index == num_images - 1 else rng.randint(1, 6)
        sizes = rng.uniform(6, 200, size=(num_gt, 2))
        corners = rng.uniform(0, 300, size=(num_gt, 2))
        gt_boxes = np.concatenate([corners, corners + sizes], axis=1)
        gt_labels = rng.randint(1, num_classes + 1, size=num_gt)
        difficult = rng.uniform(size=num_gt) < 0.15
        det_boxes, scores, det_labels = [], [], []
        if index != 0:
            for box, label in zip(gt_boxes, gt_labels):
                # 0: missed, 2: a duplicate
                for _ in range(rng.choice(3, p=[0.2, 0.6, 0.2])):
                    size = box[2:] - box[:2]
                    jitter = rng.normal(0, 0.06, size=4) * np.concatenate([size, size])
                    det_boxes.append(box + jitter)
                    wrong = rng.uniform() < 0.1
                    det_labels.append(rng.randint(1, num_classes + 1) if wrong else label)
                    scores.append(rng.uniform(0.05, 1.0))
            for _ in range(rng.randint(0, 4)):
                corner = rng.uniform(0, 300, size=2)
                det_boxes.append(np.concatenate([corner, corner + rng.uniform(6, 150, 2)]))
                det_labels.append(rng.randint(1, num_classes + 1))
                scores.append(rng.uniform(0.05, 1.0))
        images.append((gt_boxes, gt_labels, difficult,
                       np.array(det_boxes).reshape(-1, 4), np.array(scores),
                       np.array(det_labels, dtype=np.int64)))
    return images


def pycocotools_stats(images, num_classes):
    """COCOeval run directly: COCO-format dicts built here, independently of libs."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [], "annotations": [],
          "categories": [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)]}
    detections = []
    for image_id, (gt_boxes, gt_labels, difficult, det_boxes, scores, det_labels) in \
            enumerate(images, start=7):
        gt["images"].append({"id": image_id})
        for (y1, x1, y2, x2), label, crowd in zip(gt_boxes, gt_labels, difficult):
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image_id,
                "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
        for (y1, x1, y2, x2), score, label in zip(det_boxes, scores, det_labels):
            detections.append({"image_id": image_id, "category_id": int(label),
                               "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(detections), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return np.where(coco_eval.stats < 0, np.nan, coco_eval.stats)


def fill(evaluator, images, first_id=0):
    for image_id, (gt_boxes, gt_labels, difficult, det_boxes, scores, det_labels) in \
            enumerate(images, start=first_id):
        # Empty lists are allowed: the image still counts (as it does in COCO).
        evaluator.add_ground_truth(image_id, gt_boxes, gt_labels, difficult)
        evaluator.add_detections(image_id, det_boxes, scores, det_labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_figures_equal_pycocotools(seed):
    images = synthetic_dataset(seed)
    evaluator = DetectionEvaluator(["a", "b", "c"])
    fill(evaluator, images)
    results = evaluator.evaluate()
    expected = pycocotools_stats(images, num_classes=3)
    got = np.array([results[name] for name in COCO_STAT_NAMES])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, equal_nan=True)
    assert 0.05 < results["coco/mAP"] < 0.95          # the data is neither trivial
    assert 0.05 < results["voc/mAP@0.5"] < 0.95       # nor hopeless
    assert "maxDets=100" in evaluator.coco_summary_text


# ---------------------------------------------------------------- Estimator bridge

def padded_batch(images, first_id, max_detections=12, max_gt=7):
    """The tensors of one batch as the model produces them: zero-padded."""
    batch = len(images)
    detections = np.zeros((batch, max_detections, 6), np.float32)
    gt_boxes = np.zeros((batch, max_gt, 4), np.float32)
    gt_labels = np.zeros((batch, max_gt), np.int32)
    gt_difficult = np.zeros((batch, max_gt), bool)
    num_gt = np.zeros(batch, np.int32)
    for row, (boxes, labels, difficult, det_boxes, scores, det_labels) in enumerate(images):
        count = len(det_boxes)
        detections[row, :count, :4] = det_boxes
        detections[row, :count, 4] = scores
        detections[row, :count, 5] = det_labels
        gt_boxes[row, :len(boxes)] = boxes
        gt_labels[row, :len(boxes)] = labels
        gt_difficult[row, :len(boxes)] = difficult
        num_gt[row] = len(boxes)
    image_ids = np.arange(first_id, first_id + batch, dtype=np.int64)
    return detections, gt_boxes, gt_labels, gt_difficult, image_ids, num_gt


def float32_images(images):
    """What the evaluator sees through the float32 tensors (the comparison is exact)."""
    return [(boxes.astype(np.float32), labels, difficult, det_boxes.astype(np.float32),
             scores.astype(np.float32), det_labels)
            for boxes, labels, difficult, det_boxes, scores, det_labels in images]


def expected_results(images, class_names):
    evaluator = DetectionEvaluator(class_names)
    fill(evaluator, float32_images(images))
    return evaluator.evaluate()


def test_estimator_bridge_matches_evaluator_and_resets():
    from libs.base.tf_compat import seeded_graph, tf

    class_names = ["a", "b", "c"]
    images = synthetic_dataset(seed=3, num_images=6)
    images = [image for image in images if len(image[3]) <= 12 and len(image[0]) <= 7]
    first, second = images[:2], images[2:4]
    new_data = synthetic_dataset(seed=4, num_images=3)
    with seeded_graph().as_default():
        detections = tf.placeholder(tf.float32, [None, None, 6])
        gt_boxes = tf.placeholder(tf.float32, [None, None, 4])
        gt_labels = tf.placeholder(tf.int32, [None, None])
        gt_difficult = tf.placeholder(tf.bool, [None, None])
        image_ids = tf.placeholder(tf.int64, [None])
        num_gt = tf.placeholder(tf.int32, [None])
        placeholders = (detections, gt_boxes, gt_labels, gt_difficult, image_ids, num_gt)
        ops = eval_metric_ops(detections, gt_boxes, gt_labels, gt_difficult, image_ids,
                              num_gt, class_names=class_names)
        assert sorted(ops) == sorted(metric_names(class_names))
        update_ops = {update for _, update in ops.values()}
        assert len(update_ops) == 1
        update_op = update_ops.pop()
        values = {name: value for name, (value, _) in ops.items()}

        def run_evaluation(sess, batches, first_id):
            for batch in batches:
                sess.run(update_op, dict(zip(placeholders,
                                             padded_batch(batch, first_id))))
                first_id += len(batch)
            return sess.run(values)

        with tf.Session() as sess:
            got = run_evaluation(sess, [first, second], first_id=0)
            want = expected_results(first + second, class_names)
            assert got["num_images"] == 4
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-6,
                                           equal_nan=True, err_msg=name)
            # Reading again (no update in between) keeps the same evaluation.
            again = sess.run(values["coco/mAP"])
            np.testing.assert_allclose(again, got["coco/mAP"], equal_nan=True)
            # A second evaluation in the same session: the same image ids with new data.
            got = run_evaluation(sess, [new_data], first_id=0)
            want = expected_results(new_data, class_names)
            assert got["num_images"] == 3
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-6,
                                           equal_nan=True, err_msg=name)


def test_estimator_bridge_subset_and_optional_inputs():
    from libs.base.tf_compat import seeded_graph, tf

    with seeded_graph().as_default():
        detections = tf.constant([[[0, 0, 10, 10, 0.9, 1], [0, 0, 0, 0, 0, 0]]],
                                 tf.float32)
        gt_boxes = tf.constant([[[0, 0, 10, 10], [0, 0, 0, 0]]], tf.float32)
        gt_labels = tf.constant([[1, 0]], tf.int32)
        image_ids = tf.constant([b"image.jpg"])
        ops = eval_metric_ops(detections, gt_boxes, gt_labels, None, image_ids,
                              class_names=["cat"], names=["voc/mAP@0.5", "coco/AP50"])
        assert sorted(ops) == ["coco/AP50", "voc/mAP@0.5"]
        with tf.Session() as sess:
            sess.run(ops["voc/mAP@0.5"][1])
            values = sess.run({name: value for name, (value, _) in ops.items()})
        assert values == {"voc/mAP@0.5": 1.0, "coco/AP50": 1.0}
        with pytest.raises(ValueError, match="unknown metric"):
            eval_metric_ops(detections, gt_boxes, gt_labels, None, image_ids,
                            class_names=["cat"], names=["voc/mAP"])
