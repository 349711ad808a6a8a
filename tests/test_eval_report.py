"""The evaluation report (libs/evaluation/eval_report.py, error_analysis.py): each error
kind and count against hand-made cases, the PR curves against numpy, and the HTML folder as
a user opens it (every image it names exists; headless Chromium renders it)."""
import glob
import os
import re
import shutil
import subprocess
import types

import cv2
import numpy as np
import pytest

from data.io.dataset import RecordDataset
from libs.configs import load_config
from libs.evaluation import error_analysis, eval_report
from libs.evaluation.detection_evaluator import DetectionEvaluator, iou_matrix
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")


def test_every_error_kind_is_sorted_and_counted():
    """Two classes; objects: 0 cell (found), 1 cell (missed, touching 0), 2 crystal
    (seen as cell: a confusion), 3 crystal (missed, small). Detections by score: a hit
    on 0, a duplicate on 0, a cell on 2 (confusion), a cell half on 1 (localisation),
    a crystal on nothing (background)."""
    gt = np.array([[0, 0, 40, 40], [0, 30, 40, 70], [100, 100, 150, 150],
                   [200, 200, 210, 210]], np.float64)
    gt_labels = np.array([1, 1, 2, 2])
    boxes = np.array([[0, 0, 40, 40], [1, 1, 41, 41], [100, 100, 150, 150],
                      [0, 50, 40, 90], [300, 300, 340, 340]], np.float64)
    labels = np.array([1, 1, 1, 1, 2])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    result = error_analysis.analyse_image(gt, gt_labels, boxes, labels, scores)
    # detections come back by descending score: the background crystal first
    np.testing.assert_array_equal(result["scores"], [0.95, 0.9, 0.8, 0.7, 0.6])
    assert result["hits"] == [1] and result["hit_objects"] == [0]
    assert result["false_positives"] == [(0, "background"), (2, "duplicate"),
                                         (3, "confusion"), (4, "localisation")]
    assert result["misses"] == [
        {"index": 1, "size": "medium", "touching": True, "seen_as": None},
        {"index": 2, "size": "medium", "touching": False, "seen_as": 1},
        {"index": 3, "size": "small", "touching": False, "seen_as": None}]
    counts = error_analysis.confusion_counts(gt_labels, result, 2)
    expected = np.zeros([4, 4], np.int64)
    expected[1, 1] = 1          # cell found
    expected[1, 3] = 1          # cell missed
    expected[2, 1] = 1          # crystal seen as cell
    expected[2, 3] = 1          # crystal missed
    expected[3, 2] = 1          # background called crystal
    expected[3, 1] = 2          # duplicate + localisation cells: on no new cell
    np.testing.assert_array_equal(counts, expected)


def test_difficult_objects_are_ignored_as_voc_ignores_them():
    """detection_evaluator._match_greedy's rules, one case each. Objects: 0 difficult cell (two
    detections on it: both ignored), 1 difficult cell (undetected: not missed), 2
    difficult crystal (a cell on it: a false positive of cell, judged as if the crystal
    were not there: background), 3 cell and 4 difficult cell overlapping it (a cell
    closer to 4: ignored although IoU >= 0.5 with 3; then a cell on 3: a hit), 5 cell
    and 6 difficult cell overlapping it (a cell on 5: hit; another on 5: duplicate,
    although IoU >= 0.5 with the difficult 6), 7 difficult cell (a cell at IoU 0.23 with
    it: localisation)."""
    gt = np.array([[0, 0, 40, 40], [100, 0, 140, 40], [0, 100, 40, 140],
                   [100, 100, 140, 140], [100, 104, 140, 144], [200, 0, 240, 40],
                   [200, 2, 240, 42], [300, 0, 340, 40]], np.float64)
    gt_labels = np.array([1, 1, 2, 1, 1, 1, 1, 1])
    difficult = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    boxes = np.array([[0, 0, 40, 40], [1, 1, 41, 41], [0, 100, 40, 140],
                      [100, 103, 140, 143], [100, 100, 140, 140], [200, 0, 240, 40],
                      [200, 0, 240, 40], [300, 25, 340, 65]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4, 0.3])
    labels = np.ones(8, np.int64)
    result = error_analysis.analyse_image(gt, gt_labels, boxes, labels, scores,
                                          difficult)
    # by score: 0 on 5, 1-2 on 0, 3 on crystal 2, 4 near 4, 5 on 3, 6 on 5, 7 near 7
    assert result["hits"] == [0, 5] and result["hit_objects"] == [5, 3]
    assert result["ignored"] == [1, 2, 4] and result["ignored_objects"] == [0, 0, 4]
    assert result["false_positives"] == [(3, "background"), (6, "duplicate"),
                                         (7, "localisation")]
    assert result["misses"] == [] and result["num_gt"] == 2
    assert error_analysis.num_errors(result) == 3
    counts = error_analysis.confusion_counts(gt_labels, result, 2)
    expected = np.zeros([4, 4], np.int64)
    expected[1, 1] = 2          # cells 3 and 5 found
    expected[3, 1] = 3          # the background, duplicate and localisation cells
    np.testing.assert_array_equal(counts, expected)

    evaluator = DetectionEvaluator(["cell", "crystal"])
    evaluator.add_ground_truth(1, gt, gt_labels, difficult)
    evaluator.add_detections(1, boxes, scores, labels)
    _, is_tp, num_gt = evaluator.class_outcomes(1)
    assert (is_tp.sum(), (~is_tp).sum(), num_gt) == (2, 3, 2)

    # without flags nothing is difficult: every object counts
    plain = error_analysis.analyse_image(gt, gt_labels, boxes, labels, scores)
    assert plain["ignored"] == [] and plain["num_gt"] == len(gt)


def _voc_cases():
    """Hand-made images (gt boxes, gt labels, difficult, boxes, labels, scores) of two
    classes, then random ones crowded enough to overlap."""
    box = np.array
    cases = [
        # overlapping objects: both detections best match object 0 (the first on the
        # tie), so the second is a duplicate for VOC although object 1 is free
        (box([[0, 0, 40, 40], [0, 8, 40, 48]]), [1, 1], [0, 0],
         box([[0, 4, 40, 44], [0, 2, 40, 42]]), [1, 1], [0.9, 0.8]),
        # duplicates, equal scores, and a detection of the other class on the object
        (box([[10, 10, 50, 50]]), [2], [0],
         box([[10, 10, 50, 50], [11, 11, 50, 50], [10, 10, 49, 51], [10, 10, 50, 50]]),
         [2, 2, 2, 1], [0.6, 0.6, 0.7, 0.9]),
        # difficult: detected twice, undetected, overlapping a non-difficult object
        (box([[0, 0, 40, 40], [60, 60, 90, 90], [100, 100, 140, 140],
              [100, 104, 140, 144]]), [1, 2, 1, 1], [1, 1, 0, 1],
         box([[0, 0, 40, 40], [0, 1, 40, 41], [100, 103, 140, 143],
              [100, 100, 140, 140], [60, 60, 90, 90]]), [1, 1, 1, 1, 1],
         [0.9, 0.8, 0.7, 0.6, 0.5]),
        # detections and no ground truth; ground truth and no detections
        (box(np.zeros((0, 4))), [], [], box([[0, 0, 10, 10]]), [1], [0.5]),
        (box([[0, 0, 10, 10], [20, 20, 40, 40]]), [1, 2], [0, 1],
         box(np.zeros((0, 4))), [], []),
    ]
    rng = np.random.RandomState(3)
    for _ in range(40):
        n, m = rng.randint(0, 6), rng.randint(0, 9)
        gt = np.tile(rng.randint(0, 4, size=(n, 2)) * 12.0, 2) + [0, 0, 30, 30]
        gt += rng.uniform(-3, 3, size=gt.shape)
        pick = rng.randint(0, max(n, 1), size=m)
        det = (gt[pick] if n else np.full((m, 4), 50.0)) + rng.uniform(-8, 8, (m, 4))
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        cases.append((gt, rng.randint(1, 3, size=n), rng.uniform(size=n) < 0.3, det,
                      rng.randint(1, 3, size=m), np.round(rng.uniform(size=m), 1)))
    return cases


def test_hits_and_false_positives_are_vocs_true_and_false_positives():
    """Per class, at several display thresholds: the hits are the VOC evaluator's true
    positives with score >= threshold, the false positives its false positives, the
    ignored detections the ones it leaves out, num_gt its #GT; the confusion matrix's
    diagonal is the TPs and each class's row its non-difficult objects."""
    cases = _voc_cases()
    evaluator = DetectionEvaluator(["cell", "crystal"])
    for image_id, (gt, gt_labels, difficult, boxes, labels, scores) in enumerate(cases):
        evaluator.add_ground_truth(image_id, gt, gt_labels, difficult)
        evaluator.add_detections(image_id, boxes, scores, labels)
    first = error_analysis.analyse_image(*[cases[0][i] for i in (0, 1, 3, 4, 5, 2)])
    assert first["hits"] == [0] and first["false_positives"] == [(1, "duplicate")]
    covered = set()
    for threshold in (0.0, 0.35, 0.6, 0.8):
        errors = eval_report.image_errors(evaluator, threshold)
        matrix = eval_report.confusion_matrix(evaluator, errors, 2)
        for class_id in (1, 2):
            scores, is_tp, num_gt = evaluator.class_outcomes(class_id)
            kept = scores >= threshold
            voc = {"tp": int((is_tp & kept).sum()), "fp": int((~is_tp & kept).sum()),
                   "num_gt": num_gt, "detections": 0}
            mine = {"tp": 0, "fp": 0, "num_gt": 0, "ignored": 0}
            for image_id, result in errors.items():
                of_class = result["labels"] == class_id
                mine["tp"] += int(of_class[result["hits"]].sum())
                mine["fp"] += sum(of_class[d] for d, _ in result["false_positives"])
                mine["ignored"] += int(of_class[result["ignored"]].sum())
                covered.update(kind for _, kind in result["false_positives"])
                covered.update(["ignored"] * bool(result["ignored"])
                               + ["missed"] * bool(result["misses"]))
                gt_labels = evaluator.ground_truth_of(image_id)[1]
                mine["num_gt"] += int((gt_labels[~result["difficult"]] == class_id).sum())
                _, det_scores, det_labels = evaluator.detections_of(image_id)
                voc["detections"] += int(((det_labels == class_id)
                                          & (det_scores >= threshold)).sum())
            voc["ignored"] = voc.pop("detections") - voc["tp"] - voc["fp"]
            assert mine == voc, (threshold, class_id)
            assert matrix[class_id - 1, class_id - 1] == voc["tp"]
            assert matrix[class_id - 1].sum() == num_gt
    # the cases exercise every outcome
    assert covered == set(error_analysis.FALSE_POSITIVE_KINDS) | {"ignored", "missed"}


def test_report_leaves_difficult_objects_out():
    """One image: a cell found, a difficult crystal nobody found, a difficult cell with
    a cell detection on it. No "missed" crystal, no "background" cell: the matrix and
    the VOC figures count the one cell."""
    evaluator = DetectionEvaluator(["cell", "crystal"])
    evaluator.add_ground_truth(
        "a", [[0, 0, 40, 40], [100, 100, 140, 140], [200, 200, 240, 240]], [1, 2, 1],
        [False, True, True])
    evaluator.add_detections("a", [[0, 0, 40, 40], [201, 201, 240, 240]], [0.9, 0.8],
                             [1, 1])
    errors = eval_report.image_errors(evaluator, 0.5)
    matrix = eval_report.confusion_matrix(evaluator, errors, 2)
    # rows cell, crystal, background; columns cell, crystal, missed
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
    result = errors["a"]
    assert result["ignored"] == [1] and result["misses"] == []
    assert error_analysis.num_errors(result) == 0 and result["num_gt"] == 1
    _, is_tp, num_gt = evaluator.class_outcomes(1)
    assert list(is_tp) == [True] and num_gt == 1        # the ignored one is left out
    assert evaluator.class_outcomes(2)[2] == 0
    results = evaluator.evaluate()
    assert results["voc/AP@0.5/cell"] == 1.0 and np.isnan(results["voc/AP@0.5/crystal"])


def test_difficult_objects_and_ignored_detections_are_drawn_dashed():
    """Two difficult objects: one undetected (dashed green, not a red miss), one with a
    detection on it (ignored: dashed grey)."""
    rgb = np.full((120, 120, 3), 255, np.uint8)
    gt = np.array([[10, 10, 50, 50], [60, 60, 110, 110]], np.float64)
    result = error_analysis.analyse_image(gt, [1, 1], [[60, 60, 110, 110]], [1], [0.9],
                                          [True, True])
    assert result["ignored"] == [0] and result["misses"] == []
    canvas = error_analysis.draw_errors(rgb, gt, [1, 1], result, ["cell"])

    def share(colour, row, columns):
        return np.all(canvas[row, columns] == colour, axis=-1).mean()

    # bottom edges (the labels sit on top): lines with gaps
    assert 0.2 < share(error_analysis.COLOURS["gt"], 50, slice(15, 45)) < 0.9
    assert 0.2 < share(error_analysis.COLOURS["ignored"], 110, slice(65, 105)) < 0.9
    assert not np.all(canvas == error_analysis.COLOURS["miss"], axis=-1).any()


def test_pr_curve_counts_equal_numpy_and_the_evaluators_curve():
    rng = np.random.RandomState(0)
    scores = rng.uniform(size=40)
    is_true = rng.uniform(size=40) < 0.5
    num_gt = int(is_true.sum()) + 5
    tp, fp, tn, fn, precision, recall = eval_report.pr_curve_counts(scores, is_true,
                                                                    num_gt, 11)
    for k, threshold in enumerate(np.linspace(0, 1, 11)):
        kept = scores >= threshold
        assert tp[k] == (kept & is_true).sum() and fp[k] == (kept & ~is_true).sum()
        assert fn[k] == num_gt - tp[k] and tn[k] == 0
        if kept.any():
            assert precision[k] == pytest.approx((kept & is_true).sum() / kept.sum())
        assert recall[k] == pytest.approx(tp[k] / num_gt)

    # the evaluator's curve: one point per detection by score, as its AP uses
    evaluator = DetectionEvaluator(["a"])
    evaluator.add_ground_truth(1, [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
    evaluator.add_detections(1, [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]],
                             [0.9, 0.8, 0.3], [1, 1, 1])
    ordered, precision, recall, count = evaluator.pr_curve(1)
    np.testing.assert_allclose(ordered, [0.9, 0.8, 0.3])
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    assert count == 2


def _val_records(data_dir):
    from data.io import input_fn, tfrecord_format
    from libs.base.tf_compat import tf
    records = []
    for path in input_fn.tfrecord_files(data_dir, "val"):
        for serialized in tf.compat.v1.io.tf_record_iterator(path):
            records.append(tfrecord_format.decode_example(serialized))
    return records


def _free_spots(record, taken, count, side=16):
    """`count` boxes of the image touching none of `taken` nor each other (from the
    bottom right: away from the background detection at the top left)."""
    spots = []
    for y in range(record["height"] - side - 8, 8, -8):
        for x in range(record["width"] - side - 8, 8, -8):
            spot = [y, x, y + side, x + side]
            if not iou_matrix([spot], list(taken) + spots).any():
                spots.append(spot)
                if len(spots) == count:
                    return spots
    raise AssertionError(f"no room for {count} boxes in {record['filename']}")


@pytest.fixture(scope="module")
def report(sample_data, tmp_path_factory):
    """The report of made-up detections on the sample's val images: every object
    found except each image's last (missed), plus one background detection per image;
    and two difficult objects per image (VOC AP leaves them out, so must the report):
    a crystal nobody found and a cell with a cell detection on it. No model: what is
    drawn and counted is known."""
    names = sample_data["class_names"]
    evaluator = DetectionEvaluator(names)
    expected = np.zeros([len(names) + 1, len(names) + 1], np.int64)
    for record in _val_records(sample_data["data_dir"]):
        boxes, labels = record["boxes"], record["labels"]
        hard_crystal, hard_cell = _free_spots(record, list(boxes) + [[0, 0, 6, 6]], 2)
        evaluator.add_ground_truth(record["image_id"],
                                   list(boxes) + [hard_crystal, hard_cell],
                                   list(labels) + [2, 1], [0] * len(labels) + [1, 1])
        found = list(boxes[:-1]) + [[0, 0, 6, 6], np.add(hard_cell, 1)]
        evaluator.add_detections(record["image_id"], found, [0.9] * len(found),
                                 list(labels[:-1]) + [1, 1])
        for label in labels[:-1]:
            expected[label - 1, label - 1] += 1
        expected[labels[-1] - 1, -1] += 1         # missed
        expected[-1, 0] += 1                      # background called class 1
    results = evaluator.evaluate()
    cfg = load_config(TINY)
    run = types.SimpleNamespace(cfg=cfg, class_names=names,
                                dataset=RecordDataset(sample_data["data_dir"]))
    folder = str(tmp_path_factory.mktemp("report") / "val_html")
    page = eval_report.write_html_report(folder, evaluator, results, run, "val",
                                         "model.ckpt-7", step=7)
    matrix = eval_report.confusion_matrix(
        evaluator, eval_report.image_errors(evaluator, cfg.DETECTION_MIN_CONFIDENCE),
        len(names))
    return {"page": page, "folder": folder, "expected": expected, "matrix": matrix,
            "results": results, "names": names, "evaluator": evaluator,
            "min_score": cfg.DETECTION_MIN_CONFIDENCE}


def test_report_counts_what_was_made_up(report):
    """The difficult objects count nowhere: no "missed" crystal, no "background" cell;
    the matrix holds the VOC evaluator's TP, FP and #GT at the display threshold."""
    np.testing.assert_array_equal(report["matrix"], report["expected"])
    for class_id, name in enumerate(report["names"], start=1):
        scores, is_tp, num_gt = report["evaluator"].class_outcomes(class_id)
        kept = scores >= report["min_score"]
        assert report["matrix"][class_id - 1, class_id - 1] == (is_tp & kept).sum()
        # no confusions here: every false positive is in the background row
        assert report["matrix"][-1, class_id - 1] == (~is_tp & kept).sum()
        assert report["matrix"][class_id - 1].sum() == num_gt
        assert report["results"][f"voc/num_gt/{name}"] == num_gt


def test_report_page_names_only_images_that_exist(report):
    with open(report["page"], encoding="utf-8") as handle:
        page = handle.read()
    sources = re.findall(r"src=['\"]([^'\"]+)['\"]", page)
    assert {"pr_curves.png", "confusion.png", "ap_by_size.png"} <= set(sources)
    gallery = [s for s in sources if s.startswith("gallery_")]
    assert len(gallery) == 4                      # every val image has two errors
    for source in sources:
        assert "/" not in source and ":" not in source      # inside the folder, offline
        image = cv2.imread(os.path.join(report["folder"], source))
        assert image is not None and image.std() > 0, source
    assert "http" not in page                                # no CDN, no server
    for name in report["names"]:
        ap = report["results"][f"voc/AP@0.5/{name}"]
        assert f"<td>{name}</td><td>{ap:.3f}</td>" in page
    assert "model.ckpt-7" in page and "<dd>7</dd>" in page
    # each val image: two difficult objects, one detection on one of them
    text = " ".join(page.split())
    assert (f"the {2 * len(gallery)} difficult objects are not counted (never missed) "
            f"and the {len(gallery)} detections on a difficult object of their class "
            f"are ignored") in text
    # in each gallery image's alt text and caption
    assert text.count("1 ignored on difficult objects") == 2 * len(gallery)
    assert "difficult object (dashed: not counted)" in text
    assert sorted(os.listdir(report["folder"])) == sorted(set(sources) | {"index.html"})


def _chromium():
    """The Chromium executable (PATH, else Debian's /usr/bin/chromium) or None."""
    for candidate in (shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install "
                    "chromium; .ci/run installs it); the page's files are checked by "
                    "the test above")
    shot = str(tmp_path / "shot.png")
    # Offline and self-contained: a fresh profile, no sandbox (root in CI containers),
    # no GPU, no network chatter (sync, component updates, first-run), /tmp not /dev/shm
    # (a container's is small).
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--no-default-browser-check",
         f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1000,1400", "file://" + report["page"]],
        capture_output=True, text=True, timeout=120)
    image = cv2.imread(shot)
    assert image is not None, f"Chromium wrote no screenshot:\n{run.stderr[-2000:]}"
    # not blank: text, tables and plots give many distinct grey levels and dark pixels
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert (grey < 128).mean() > 0.01 and len(np.unique(grey)) > 50


def test_pr_curves_reach_tensorboard(report, tmp_path):
    """write_pr_curves: one curve per class, PR curve plugin data, at the step."""
    from libs.base.tf_compat import tf
    eval_dir = str(tmp_path / "eval_val")
    evaluator = DetectionEvaluator(report["names"])
    evaluator.add_ground_truth(1, [[0, 0, 10, 10]], [1])
    evaluator.add_detections(1, [[0, 0, 10, 10]], [0.705], [1])
    eval_report.write_pr_curves(eval_dir, evaluator, report["names"], step=12)
    tf.compat.v1.summary.FileWriterCache.get(eval_dir).close()
    tags = {}
    for path in glob.glob(os.path.join(eval_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags[value.tag] = (value.metadata.plugin_data.plugin_name, event.step,
                                   tf.make_ndarray(value.tensor))
    for name in report["names"]:
        plugin, step, data = tags[f"pr_curves/{name}/pr_curves"]
        assert plugin == "pr_curves" and step == 12
        assert data.shape == (6, eval_report.PR_CURVE_THRESHOLDS)
    data = tags[f"pr_curves/{report['names'][0]}/pr_curves"][2]
    # rows TP, FP, TN, FN, precision, recall: the detection (0.705) counts up to 0.70
    assert data[0, 70] == 1 and data[0, 71] == 0 and data[5, 0] == 1
