"""The evaluation report (libs/eval_report.py, libs/error_analysis.py): each error kind
and count against hand-made cases, the PR curves against numpy, and the HTML folder as
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

from libs import error_analysis, eval_report, metrics
from libs.configs import load_config
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
    evaluator = metrics.DetectionEvaluator(["a"])
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
    from libs.tf_compat import tf
    records = []
    for path in input_fn.tfrecord_files(data_dir, "val"):
        for serialized in tf.compat.v1.io.tf_record_iterator(path):
            records.append(tfrecord_format.decode_example(serialized))
    return records


@pytest.fixture(scope="module")
def report(sample_data, tmp_path_factory):
    """The report of made-up detections on the sample's val images: every object
    found except each image's last (missed), plus one background detection per image.
    No model: what is drawn and counted is known."""
    names = sample_data["class_names"]
    evaluator = metrics.DetectionEvaluator(names)
    expected = np.zeros([len(names) + 1, len(names) + 1], np.int64)
    for record in _val_records(sample_data["data_dir"]):
        boxes, labels = record["boxes"], record["labels"]
        evaluator.add_ground_truth(record["image_id"], boxes, labels)
        found = list(boxes[:-1]) + [[0, 0, 6, 6]]
        evaluator.add_detections(record["image_id"], found, [0.9] * len(found),
                                 list(labels[:-1]) + [1])
        for label in labels[:-1]:
            expected[label - 1, label - 1] += 1
        expected[labels[-1] - 1, -1] += 1         # missed
        expected[-1, 0] += 1                      # background called class 1
    results = evaluator.evaluate()
    cfg = load_config(TINY)
    run = types.SimpleNamespace(cfg=cfg, class_names=names,
                                data_dir=sample_data["data_dir"])
    folder = str(tmp_path_factory.mktemp("report") / "val_html")
    page = eval_report.write_html_report(folder, evaluator, results, run, "val",
                                         "model.ckpt-7", step=7)
    matrix = eval_report.confusion_matrix(
        evaluator, eval_report.image_errors(evaluator, cfg.DETECTION_MIN_CONFIDENCE),
        len(names))
    return {"page": page, "folder": folder, "expected": expected, "matrix": matrix,
            "results": results, "names": names}


def test_report_counts_what_was_made_up(report):
    np.testing.assert_array_equal(report["matrix"], report["expected"])


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
    assert sorted(os.listdir(report["folder"])) == sorted(set(sources) | {"index.html"})


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install "
                    "chromium); the page's files are checked by the test above")
    shot = str(tmp_path / "shot.png")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1000,1400",
                    "file://" + report["page"]], capture_output=True, timeout=120)
    image = cv2.imread(shot)
    assert image is not None, "Chromium wrote no screenshot"
    # not blank: text, tables and plots give many distinct grey levels and dark pixels
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert (grey < 128).mean() > 0.01 and len(np.unique(grey)) > 50


def test_pr_curves_reach_tensorboard(report, tmp_path):
    """write_pr_curves: one curve per class, PR curve plugin data, at the step."""
    from libs.tf_compat import tf
    eval_dir = str(tmp_path / "eval_val")
    evaluator = metrics.DetectionEvaluator(report["names"])
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
