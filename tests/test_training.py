"""Training: towers, LR schedule, clipping, checkpoint init, summaries, resume, learning."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data.io import tfrecord_format
from data.io.dataset import open_run
from data.io.input_fn import PREDICT, make_input_fn
from libs.base.tf_compat import seeded_graph, tf
from libs.configs import load_config
from libs.model import backbones
from libs.train import model_fn as model_lib
from libs.train import runs, training
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")


def tiny(**overrides):
    return load_config(TINY, overrides)


# ---------------------------------------------------------------------------- towers

def test_two_towers_of_one_image_update_like_one_tower_of_two(sample_data, tmp_path):
    """Runs tests/tower_equivalence.py in a fresh process (the CPU split needs it)."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tests", "tower_equivalence.py"),
         sample_data["data_dir"], sample_data["reference_dir"], str(tmp_path),
         "comparison"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["moved"] == report["compared"] > 50       # every weight was updated
    # float32 summation order differs between layouts; updates agree to 1e-4 relative
    assert report["worst_relative"] < 1e-4, report
    # summaries are written once per step, not once per tower
    tags = report["tags_2x1"]
    for tag in ("rpn/cls_loss", "fast_rcnn/cls_loss", "total_loss", "learning_rate"):
        assert tags.count(tag) == 1, tags


# ------------------------------------------------------------------------ optimiser

def test_learning_rate_is_piecewise_at_the_boundaries():
    cfg = tiny(NUM_TRAIN_IMAGES=10, EPOCH=40, EPOCH_BOUNDARY=[30, 36], LR=0.02)
    assert cfg.BOUNDARY == [300, 360]
    with seeded_graph().as_default():
        step = tf.placeholder(tf.int64, [])
        lr = model_lib.learning_rate(cfg, step)
        with tf.Session() as sess:
            got = {s: sess.run(lr, {step: s}) for s in (0, 299, 300, 301, 359, 360, 361, 400)}
    # tf.train.piecewise_constant switches AFTER each boundary step
    assert got[0] == got[299] == got[300] == pytest.approx(0.02)
    assert got[301] == got[359] == got[360] == pytest.approx(0.002)
    assert got[361] == got[400] == pytest.approx(0.0002)


def test_each_gradient_is_clipped_by_its_own_norm():
    cfg = tiny(NUM_TRAIN_IMAGES=4, CLIP_GRADIENT_NORM=0.5, LR=0.1)
    with seeded_graph().as_default():
        tf.train.get_or_create_global_step()
        big = tf.Variable(np.full([3], 10.0, np.float32), name="big")
        small = tf.Variable(np.full([2], 0.01, np.float32), name="small")
        loss = 100.0 * tf.reduce_sum(tf.square(big)) + tf.reduce_sum(tf.square(small))
        train_op, _, clipped = model_lib.build_train_op(loss, cfg, [])
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            grads = sess.run([g for g, _ in clipped])
            sess.run(train_op)
            new_big, new_small = sess.run([big, small])
    norms = [np.linalg.norm(g) for g in grads]
    assert max(norms) <= 0.5 + 1e-6
    # per tensor, not global: the small gradient (norm 0.028) is left alone
    np.testing.assert_allclose(grads[1], 2 * 0.01 * np.ones(2), rtol=1e-5)
    assert norms[0] == pytest.approx(0.5, rel=1e-5)
    # first Momentum step: w -= lr * clipped gradient
    np.testing.assert_allclose(new_big, 10.0 - 0.1 * grads[0], rtol=1e-6)
    np.testing.assert_allclose(new_small, 0.01 - 0.1 * grads[1], rtol=1e-5)


# ----------------------------------------------------------------- checkpoint init

def _save_backbone_checkpoint(path, net_name, seed=7):
    """A checkpoint holding only the backbone, with values a fresh init cannot produce."""
    values = {}
    with seeded_graph().as_default():
        backbones.build_backbone(net_name, tf.zeros([1, 64, 64, 3]))
        variables = tf.global_variables()
        rng = np.random.RandomState(seed)
        with tf.Session() as sess:
            for var in variables:
                value = rng.uniform(3, 4, var.shape.as_list()).astype(np.float32)
                var.load(value, sess)
                values[var.op.name] = value
            tf.train.Saver(variables).save(sess, path)
    return values


def _build_training_graph(cfg, batch_features, batch_labels, params):
    spec = model_lib.model_fn(batch_features, batch_labels, tf.estimator.ModeKeys.TRAIN,
                              dict(params, net_config=cfg))
    return spec


def test_init_from_checkpoint_restores_the_backbone(tmp_path, sample_data):
    from tests.test_model_blocks import fake_batch, reference_images
    prefix = str(tmp_path / "pretrained" / "model.ckpt")
    cfg = tiny(NUM_TRAIN_IMAGES=4, BACKBONE_CHECKPOINT=str(tmp_path / "pretrained"))
    saved = _save_backbone_checkpoint(prefix, cfg.NET_NAME)
    with seeded_graph().as_default():
        features, labels = fake_batch(cfg, 1)
        _build_training_graph(cfg, features, labels,
                              {"reference_images": reference_images(cfg)})
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            restored = {v.op.name: sess.run(v) for v in tf.global_variables()}
    # (optimizer slots like .../weights/Momentum are the optimizer's, not the backbone's)
    backbone = [n for n in restored
                if n.startswith(cfg.NET_NAME + "/") and not n.endswith("/Momentum")]
    assert backbone and set(backbone) == set(saved)
    for name in backbone:
        np.testing.assert_array_equal(restored[name], saved[name])
    # the rest is freshly initialised, not taken from anywhere
    fpn = [v for n, v in restored.items() if n.startswith("build_pyramid/")]
    assert fpn and all(np.abs(v).max() < 3 for v in fpn)


@pytest.mark.parametrize("which, message", [
    ("missing", "not a readable checkpoint"),
    ("empty_dir", "no checkpoint in this folder"),
    ("other_net", "holds no variables under 'tiny_resnet_gn/'"),
])
def test_init_from_checkpoint_errors_are_one_clear_line(tmp_path, which, message):
    from tests.test_model_blocks import fake_batch, reference_images
    if which == "missing":
        path = str(tmp_path / "nope" / "model.ckpt")
    elif which == "empty_dir":
        path = str(tmp_path)
    else:
        path = str(tmp_path / "other" / "model.ckpt")
        with seeded_graph().as_default():
            var = tf.Variable(1.0, name="resnet_v1_50/conv1/weights")
            with tf.Session() as sess:
                sess.run(var.initializer)
                tf.train.Saver([var]).save(sess, path)
    cfg = tiny(NUM_TRAIN_IMAGES=4, BACKBONE_CHECKPOINT=path)
    with seeded_graph().as_default():
        features, labels = fake_batch(cfg, 1)
        with pytest.raises(ValueError) as err:
            _build_training_graph(cfg, features, labels,
                                  {"reference_images": reference_images(cfg)})
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- it learns (e2e)

def _gt_by_image(data_dir, split):
    gt = {}
    for path in glob.glob(os.path.join(data_dir, f"{split}-*.tfrecord")):
        for raw in tf.python_io.tf_record_iterator(path):
            record = tfrecord_format.decode_example(raw)
            gt[int(record["image_id"])] = (record["boxes"], record["labels"])
    return gt


def _iou(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * \
        max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _found_fraction(predictions, gt):
    found = total = 0
    for pred in predictions:
        boxes, labels = gt[int(pred["image_id"])]
        n = int(pred["num_detections"])
        for box, label in zip(boxes, labels):
            total += 1
            found += any(_iou(box, pred["predict_bbox"][k]) >= 0.5 and
                         pred["predict_class_id"][k] == label for k in range(n))
    return found / total


def _event_tags(model_dir):
    scalars, images = set(), set()
    for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
        for event in tf.train.summary_iterator(path):
            for value in event.summary.value:
                (images if value.HasField("image") else scalars).add(value.tag)
    return scalars, images


LEARN_STEPS = 800
# "Most objects". Measured on this fixture: comparison 1.00, fc 0.74-0.89 of the train
# objects (CPU training is not bit-reproducible, so runs differ); the bound leaves margin.
MIN_FOUND = 0.6


@pytest.mark.parametrize("classifier, head_bn", [("comparison", True), ("fc", False)])
def test_tiny_detector_learns_the_sample_objects(sample_data, tmp_path, classifier,
                                                 head_bn):
    # The FC baseline has no comparison conv3d, and its box branch learns faster with
    # the notebook's frozen head batch norm (no train/inference statistics gap).
    # The schedule spans the run: 8 images x 100 epochs = 800 steps, LR / 10 after 75.
    cfg = tiny(CLASSIFIER=classifier, SAVE_CHECKPOINTS_STEPS=LEARN_STEPS,
               SAVE_SUMMARY_STEPS=100, HEAD_TRAIN_BATCH_NORM=head_bn,
               EPOCH=100, EPOCH_BOUNDARY=[75, 90])
    model_dir = str(tmp_path / classifier)
    run = open_run(cfg, sample_data["data_dir"], sample_data["reference_dir"],
                               model_dir)
    assert training.train(run, max_steps=LEARN_STEPS) == LEARN_STEPS
    estimator = training.make_estimator(runs.model_params(run), model_dir)
    predictions = list(estimator.predict(
        make_input_fn(run.cfg, PREDICT, data_dir=run.data_dir, split="train")))
    found = _found_fraction(predictions, _gt_by_image(run.data_dir, "train"))
    assert found >= MIN_FOUND, f"{classifier}: only {found:.0%} of the objects detected"

    scalars, images = _event_tags(model_dir)
    assert {"rpn/cls_loss", "rpn/loc_loss", "fast_rcnn/cls_loss", "fast_rcnn/loc_loss",
            "learning_rate", "total_loss", "l2_regularisation"} <= scalars
    assert {"gt/image/0", "proposals/image/0", "detections/image/0"} <= images

    # EVAL mode: the detection metrics agree with what was found above
    results, checkpoint = training.evaluate(run, split="train")
    assert checkpoint.endswith(f"model.ckpt-{LEARN_STEPS}")
    assert results["global_step"] == LEARN_STEPS
    assert results["voc/mAP@0.5"] >= 0.5, results
    assert 0 < results["coco/mAP"] <= results["coco/AP50"] <= 1
    assert 0 < results["coco/AR@100"] <= 1
    for name in ("rpn/cls_loss", "fast_rcnn/cls_loss", "loss"):
        assert np.isfinite(results[name])

    # a rerun resumes from the run directory's checkpoint and continues the step count
    assert "resuming" in training.describe_start(cfg, model_dir)
    assert f"step {LEARN_STEPS}" in training.describe_start(cfg, model_dir)
    assert training.train(run, max_steps=LEARN_STEPS + 5) == LEARN_STEPS + 5


# ------------------------------------------------------------------ command line

def _train_cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"),
                           *args], capture_output=True, text=True, timeout=300)


def test_train_cli_reports_bad_input_in_one_line(tmp_path, sample_data):
    result = _train_cli("--cfg", str(tmp_path / "missing.py"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --cfg")
    result = _train_cli("--cfg", TINY, "--data_dir", str(tmp_path / "nodata"))
    assert result.returncode == 1
    assert "no label map" in result.stderr.strip().splitlines()[-1]
    result = _train_cli("--cfg", TINY, "--data_dir", sample_data["data_dir"],
                        "--reference_dir", str(tmp_path / "norefs"))
    assert result.returncode == 1
    assert "norefs" in result.stderr.strip().splitlines()[-1]
    # the whole output is the one line: TensorFlow, imported by then, says nothing
    result = _train_cli("--cfg", TINY, "--max_minutes", "0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --max_minutes must be a positive number of minutes, got 0.0"]


def test_train_and_eval_cli_run_and_write_their_outputs(tmp_path, sample_data):
    model_dir = str(tmp_path / "run")
    common = ["--cfg", TINY, "--data_dir", sample_data["data_dir"],
              "--reference_dir", sample_data["reference_dir"], "--model_dir", model_dir]
    result = _train_cli(*common, "--max_steps", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "from scratch" in result.stderr
    assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-3")

    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "eval.py"),
                             *common, "--novel_classes", "crystal"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "VOC mAP@0.5" in result.stdout and "COCO mAP@[.5:.95]" in result.stdout
    assert "bAP50 (" in result.stdout and "nAP50 (" in result.stdout
    assert "evaluating val: 4/4" in result.stderr            # progress, with the total
    report_path = os.path.join(model_dir, "model.ckpt-3.eval_val.json")
    with open(report_path) as handle:
        report = json.load(handle)
    assert report["split"] == "val" and "voc/mAP@0.5" in report["results"]
    # one class each: bAP50 / nAP50 are that class's AP (NaN == NaN for an untrained model)
    assert (report["base_classes"], report["novel_classes"]) == (["cell"], ["crystal"])
    np.testing.assert_equal(report["results"]["voc/bAP@0.5"],
                            report["results"]["voc/AP@0.5/cell"])
    np.testing.assert_equal(report["results"]["voc/nAP@0.5"],
                            report["results"]["voc/AP@0.5/crystal"])
    # the HTML report beside the JSON, and per-class PR curves beside the mAP scalars
    page = os.path.join(model_dir, "model.ckpt-3.eval_val_html", "index.html")
    assert f"html report: {page}" in result.stdout and os.path.isfile(page)
    tags = {}
    for path in glob.glob(os.path.join(model_dir, "eval_val", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update({v.tag: v.metadata.plugin_data.plugin_name
                         for v in event.summary.value})
    assert tags["pr_curves/cell/pr_curves"] == tags["pr_curves/crystal/pr_curves"] == \
        "pr_curves"
    assert "voc/mAP@0.5" in tags

    # test-time flips: their own report (the plain one stays), saying which flips
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "eval.py"),
                             *common, "--test_flips", "horizontal,vertical"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "split val, test-time flips horizontal+vertical" in result.stdout
    with open(os.path.join(model_dir, "model.ckpt-3.eval_val_flips.json")) as handle:
        assert json.load(handle)["test_flips"] == ["horizontal", "vertical"]
    with open(report_path) as handle:
        assert json.load(handle)["test_flips"] == []

    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "eval.py"),
                             *common, "--checkpoint", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "no such checkpoint" in result.stderr.strip().splitlines()[-1]


def test_train_with_eval_writes_metrics_for_each_checkpoint(tmp_path, sample_data):
    model_dir = str(tmp_path / "run")
    result = _train_cli("--cfg", TINY, "--data_dir", sample_data["data_dir"],
                        "--reference_dir", sample_data["reference_dir"],
                        "--model_dir", model_dir, "--max_steps", "4", "--eval",
                        "--set", "SAVE_CHECKPOINTS_STEPS=2")
    assert result.returncode == 0, result.stderr[-2000:]
    steps_with_map = set()
    for path in glob.glob(os.path.join(model_dir, "eval_val", "events.out.tfevents.*")):
        for event in tf.train.summary_iterator(path):
            if any(value.tag == "voc/mAP@0.5" for value in event.summary.value):
                steps_with_map.add(event.step)
    # each new checkpoint (steps 2 and 4) was evaluated: an mAP curve, not a point
    assert {2, 4} <= steps_with_map, steps_with_map

