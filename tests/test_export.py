"""SavedModel export, the serving graph and prediction (tools/export_savedmodel.py,
tools/predict.py): equal to Estimator.predict, exact original-pixel boxes, cached
prototypes, reproducible exports, clear errors on bad bytes."""
import glob
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data.io import input_fn as input_lib
from data.io import reference_set, tfrecord_format
from data.io.dataset import open_run
from libs.base import io_utils
from libs.base.tf_compat import seeded_graph, tf
from libs.configs import load_config
from libs.model import preprocessing
from libs.serving import export
from libs.train import model_fn as model_lib
from libs.train import runs, training
from tests.conftest import REPO_ROOT, convert_sample_classes

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
# A short schedule that spans the run (8 images/epoch), and a low display threshold so
# that a briefly trained model returns enough detections to compare.
# (120 steps left most sample images without a detection even at threshold 0; 360 give
# one to four confident ones on every image, of both classes, in about 12 s)
TRAIN_STEPS = 360
SETTINGS = dict(EPOCH=45, EPOCH_BOUNDARY=[36, 42], SAVE_CHECKPOINTS_STEPS=TRAIN_STEPS,
                DETECTION_MIN_CONFIDENCE=0.1)
# The served graph is not the Estimator's op for op: the prototypes come from another
# session (a cached constant), grappler fuses and orders ops differently, and oneDNN
# picks other kernels on CPUs with or without AVX-512. float32 sums in another order
# differ by about eps * sqrt(terms) per layer (6e-8 * ~25 for a 3x3x64 conv), over ~20
# layers: ~3e-5 relative in the logits. Measured: scores 1.3e-5 apart with AVX2
# kernels (issue 13), 0 with AVX-512. Hence 1e-4 on scores (in [0, 1]) and, for boxes
# of ~100 px decoded through exp(delta), 1e-2 px.
BOX_TOLERANCE_PX = 1e-2
SCORE_TOLERANCE = 1e-4


def tiny(**overrides):
    return load_config(TINY, dict(SETTINGS, **overrides))


@pytest.fixture(scope="module")
def trained(sample_data, tmp_path_factory):
    """A tiny comparison detector trained briefly; its run and checkpoint."""
    model_dir = str(tmp_path_factory.mktemp("export_run"))
    run = open_run(tiny(), sample_data["data_dir"], sample_data["reference_dir"],
                               model_dir)
    training.train(run, max_steps=TRAIN_STEPS)
    return run, runs.resolve_checkpoint(model_dir)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    run, checkpoint = trained
    export_dir = str(tmp_path_factory.mktemp("exports") / "model")
    info = export.export_saved_model(run, checkpoint, export_dir)
    return export_dir, info


def _records(data_dir, split):
    """[(image_id, encoded bytes)] of a split, in the input pipeline's order."""
    out = []
    for path in input_lib.tfrecord_files(data_dir, split):
        for serialized in tf.python_io.tf_record_iterator(path):
            feature = tf.train.Example.FromString(serialized).features.feature
            out.append((feature[tfrecord_format.IMAGE_ID].int64_list.value[0],
                        feature[tfrecord_format.ENCODED].bytes_list.value[0]))
    return out


def _png(rgb):
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def _sample_rgb(sample_data, index):
    path = sorted(glob.glob(os.path.join(sample_data["voc_dir"], "JPEGImages", "*.jpg")))[index]
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------- original-pixel mapping

@pytest.mark.parametrize("height, width", [(100, 300), (301, 77), (128, 128),
                                           (999, 1000), (37, 512), (640, 480)])
def test_serving_boxes_map_back_to_original_pixels(height, width):
    """Original boxes -> network pixels (serving preprocessing's window and scale) ->
    the PREDICT outputs: the same boxes, for sizes and aspect ratios that need padding
    on either axis and scales above and below 1."""
    cfg = tiny(TARGET_SIDE=128)
    rng = np.random.default_rng(height * 7 + width)
    y = np.sort(rng.uniform(0, height, size=(5, 2)), axis=1)
    x = np.sort(rng.uniform(0, width, size=(5, 2)), axis=1)
    boxes = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], axis=1).astype(np.float32)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    with seeded_graph().as_default():
        encoded = tf.placeholder(tf.string, [None])
        features = preprocessing.serving_features(encoded, cfg)
        network = preprocessing.transform_boxes(tf.constant(boxes)[tf.newaxis],
                                                features["image_window"][:, tf.newaxis],
                                                features["image_scale"][:, tf.newaxis])
        detections = tf.concat([network, tf.ones([1, 5, 2])], axis=-1)
        predictions = model_lib.predictions_from_detections(detections, features,
                                                            ["a", "b"])
        with tf.Session() as session:
            out, feats = session.run([predictions, features],
                                     {encoded: np.array([_png(image)], object)})
    np.testing.assert_allclose(out["predict_bbox"][0], boxes, atol=BOX_TOLERANCE_PX)
    assert out["num_detections"].tolist() == [5]
    assert [n.decode() for n in out["predict_class_name"][0]] == ["a"] * 5
    # the window is the resized image inside the padded square, centred
    top, left, bottom, right = feats["image_window"][0]
    assert max(bottom - top, right - left) == cfg.TARGET_SIDE
    assert abs((bottom - top) / (right - left) - height / width) < 2.0 / min(
        bottom - top, right - left) * (height / width) + 1e-6
    assert feats["original_size"][0].tolist() == [height, width]


def test_serving_preprocessing_equals_the_input_pipeline(sample_data):
    """The exported model sees exactly the pixels Estimator.predict's input_fn gives."""
    cfg = tiny()
    records = _records(sample_data["data_dir"], "val")
    pipeline = []
    with seeded_graph().as_default():
        dataset = input_lib.make_input_fn(cfg, input_lib.PREDICT,
                                          data_dir=sample_data["data_dir"], split="val")()
        element = tf.data.make_one_shot_iterator(dataset).get_next()
        with tf.Session() as session:
            for _ in records:
                pipeline.append(session.run(element))
    with seeded_graph().as_default():
        encoded = tf.placeholder(tf.string, [None])
        features = preprocessing.serving_features(encoded, cfg)
        with tf.Session() as session:
            served = session.run(features, {encoded: np.array([r[1] for r in records],
                                                              object)})
    for i, expected in enumerate(pipeline):
        for key in ("image", "image_window", "image_scale", "original_size"):
            np.testing.assert_array_equal(served[key][i], expected[key][0], err_msg=key)


# ------------------------------------------------------------- the exported model

def test_saved_model_equals_estimator_predict(trained, exported, sample_data):
    run, checkpoint = trained
    export_dir, _ = exported
    records = _records(sample_data["data_dir"], "train")
    estimator = training.make_estimator(runs.model_params(run), run.model_dir,
                                        distribute=False)
    expected = list(estimator.predict(
        input_lib.make_input_fn(run.cfg, input_lib.PREDICT, data_dir=run.data_dir,
                                split="train"), checkpoint_path=checkpoint))
    assert len(expected) == len(records)
    with export.Detector.from_saved_model(export_dir) as detector:
        # all images in one call: the serving batch is dynamic
        served = detector.run([encoded for _, encoded in records])
    total = 0
    for i, want in enumerate(expected):
        count = int(want["num_detections"])
        total += count
        assert served["num_detections"][i] == count, f"image {i}"
        np.testing.assert_allclose(served["predict_bbox"][i, :count],
                                   want["predict_bbox"][:count], atol=BOX_TOLERANCE_PX)
        np.testing.assert_allclose(served["predict_scores"][i, :count],
                                   want["predict_scores"][:count], atol=SCORE_TOLERANCE)
        np.testing.assert_array_equal(served["predict_class_id"][i, :count],
                                      want["predict_class_id"][:count])
        names = [run.class_names[c - 1] for c in want["predict_class_id"][:count]]
        assert [n.decode() for n in served["predict_class_name"][i, :count]] == names
        assert (served["predict_class_id"][i, count:] == 0).all()
    assert total >= len(records), f"only {total} detections: nothing to compare"


def test_boxes_scale_with_the_image(exported, sample_data):
    """An image and its 2x / 3x pixel-replicated copies reach the network as the same
    pixels, so their boxes must be exactly 2x / 3x apart in original pixels; square and
    non-square (padded) images."""
    export_dir, info = exported
    # The long side equals the network side, so a k-times copy is resized by exactly 1/k
    # and bilinear sampling lands on whole source pixels.
    side = info["target_side"]
    base = cv2.resize(_sample_rgb(sample_data, 0), (side, side),
                      interpolation=cv2.INTER_AREA)
    crops = [base, base[:, : side * 3 // 4]]      # the second one is narrower (padded)
    with export.Detector.from_saved_model(export_dir) as detector:
        for image in crops:
            results = {}
            for k in (1, 2, 3):
                big = np.repeat(np.repeat(image, k, axis=0), k, axis=1)
                results[k] = detector.detect([_png(big)])[0]
            assert len(results[1]["scores"]) > 0
            height, width = image.shape[:2]
            for k in (2, 3):
                np.testing.assert_array_equal(results[k]["class_ids"], results[1]["class_ids"])
                np.testing.assert_allclose(results[k]["scores"], results[1]["scores"],
                                           atol=SCORE_TOLERANCE)
                np.testing.assert_allclose(results[k]["boxes"], k * results[1]["boxes"],
                                           atol=k * BOX_TOLERANCE_PX * 10)
                boxes = results[k]["boxes"]
                assert (boxes >= -1e-3).all()
                assert (boxes[:, [0, 2]] <= k * height + 1e-3).all()
                assert (boxes[:, [1, 3]] <= k * width + 1e-3).all()


def test_prototypes_are_cached_not_recomputed(trained, exported):
    """The exported graph holds the prototypes as a constant equal to the reference
    branch's output, and has no reference branch and no input but the images."""
    run, checkpoint = trained
    export_dir, info = exported
    assert info["prototypes"] == "cached at export"
    expected = export.compute_prototypes(run.cfg, checkpoint, run.reference_images)
    assert expected.shape == (run.cfg.NUM_CLASS, run.cfg.ROI_SIZE, run.cfg.ROI_SIZE,
                              run.cfg.FPN_CHANNELS)
    with seeded_graph().as_default() as graph, tf.Session() as session:
        tf.saved_model.loader.load(session, ["serve"], export_dir)
        names = [op.name for op in graph.get_operations()]
        assert not [n for n in names if "reference_branch" in n]
        placeholders = [op.name for op in graph.get_operations() if op.type == "Placeholder"]
        assert placeholders == ["encoded_images"]
        cached = session.run(graph.get_tensor_by_name("cached_prototypes:0"))
    np.testing.assert_allclose(cached, expected, rtol=1e-6, atol=1e-6)


def test_another_reference_dir_changes_only_the_prototypes(trained, exported, sample_data,
                                                           tmp_path):
    """The few-shot promise: the same checkpoint exported with other references."""
    run, checkpoint = trained
    other = str(tmp_path / "other_refs")
    shutil.copytree(sample_data["reference_dir"], other)
    for class_name in run.class_names:   # another image of each class: a mirrored one
        folder = os.path.join(other, reference_set.class_dir_name(class_name))
        for path in glob.glob(os.path.join(folder, "*.png")):
            cv2.imwrite(path, cv2.flip(cv2.imread(path), 0))
    other_run = open_run(run.cfg, run.data_dir, other, run.model_dir)
    info = export.export_saved_model(other_run, checkpoint, str(tmp_path / "other_model"))
    assert info["reference_dir"] == os.path.abspath(other)
    assert info["checkpoint"] == exported[1]["checkpoint"]
    with seeded_graph().as_default() as graph, tf.Session() as session:
        tf.saved_model.loader.load(session, ["serve"], str(tmp_path / "other_model"))
        cached = session.run(graph.get_tensor_by_name("cached_prototypes:0"))
    mine = export.compute_prototypes(run.cfg, checkpoint, other_run.reference_images)
    theirs = export.compute_prototypes(run.cfg, checkpoint, run.reference_images)
    np.testing.assert_allclose(cached, mine, rtol=1e-6, atol=1e-6)
    assert np.abs(cached - theirs).max() > 1e-3


def test_exporting_twice_gives_identical_outputs(trained, exported, sample_data, tmp_path):
    run, checkpoint = trained
    second = str(tmp_path / "again")
    info = export.export_saved_model(run, checkpoint, second)
    assert {k: v for k, v in info.items()} == exported[1]
    images = [encoded for _, encoded in _records(sample_data["data_dir"], "val")]
    with export.Detector.from_saved_model(exported[0]) as first_model, \
            export.Detector.from_saved_model(second) as second_model:
        a, b = first_model.run(images), second_model.run(images)
    for key in export.OUTPUT_KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_checkpoint_detector_equals_saved_model(trained, exported, sample_data):
    run, checkpoint = trained
    images = [encoded for _, encoded in _records(sample_data["data_dir"], "val")]
    with export.Detector.from_checkpoint(run, checkpoint) as from_checkpoint, \
            export.Detector.from_saved_model(exported[0]) as from_saved:
        a, b = from_checkpoint.run(images), from_saved.run(images)
    for key in export.OUTPUT_KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_notebook_style_export_reruns_the_reference_branch(trained, exported, sample_data,
                                                           tmp_path):
    """--nocache_prototypes: same detections, reference branch in the graph."""
    run, checkpoint = trained
    per_call = str(tmp_path / "per_call")
    info = export.export_saved_model(run, checkpoint, per_call, cache_prototypes=False)
    assert info["prototypes"] == "reference branch rerun at every call"
    images = [encoded for _, encoded in _records(sample_data["data_dir"], "val")]
    with export.Detector.from_saved_model(per_call) as slow, \
            export.Detector.from_saved_model(exported[0]) as fast:
        a, b = slow.run(images), fast.run(images)
        ops = [op.name for op in slow.session.graph.get_operations()]
    assert any("reference_branch" in name for name in ops)
    np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
    np.testing.assert_allclose(a["predict_bbox"], b["predict_bbox"], atol=BOX_TOLERANCE_PX)
    np.testing.assert_allclose(a["predict_scores"], b["predict_scores"],
                               atol=SCORE_TOLERANCE)


@pytest.mark.parametrize("bad, message", [
    (b"this is not an image", "image 1 of the batch is not a JPEG, PNG, GIF or BMP file"),
    (b"", "image 1 of the batch is not a JPEG, PNG, GIF or BMP file"),
    ("truncated_png", "corrupt or truncated"),
    ("truncated_jpeg", "corrupt or truncated"),
])
def test_bad_image_bytes_give_one_clear_error(exported, sample_data, bad, message):
    good = _png(_sample_rgb(sample_data, 1))
    if bad == "truncated_png":
        bad = good[:len(good) // 3]
    elif bad == "truncated_jpeg":
        ok, jpeg = cv2.imencode(".jpg", _sample_rgb(sample_data, 1))
        bad = jpeg.tobytes()[:300]
    with export.Detector.from_saved_model(exported[0]) as detector:
        with pytest.raises(export.ExportError) as error:
            detector.detect([good, bad])
        assert message in str(error.value)
        assert "\n" not in str(error.value)
        # the session survives: the next call works
        assert len(detector.detect([good])) == 1


def test_export_refuses_to_overwrite_and_replaces_atomically(trained, exported, tmp_path):
    run, checkpoint = trained
    target = str(tmp_path / "model")
    export.export_saved_model(run, checkpoint, target)
    with pytest.raises(export.ExportError, match="already exists"):
        export.export_saved_model(run, checkpoint, target)
    before = set(os.listdir(tmp_path))
    export.export_saved_model(run, checkpoint, target, overwrite=True)
    assert set(os.listdir(tmp_path)) == before       # no temporary folder left over
    assert tf.saved_model.contains_saved_model(target)


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(str(target), overwrite=True) as temp:
            with open(os.path.join(temp, "new.txt"), "w") as handle:
                handle.write("half")
            raise RuntimeError("crash while writing")
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert os.listdir(target) == ["old.txt"]
    with io_utils.atomic_directory(str(target), overwrite=True) as temp:
        with open(os.path.join(temp, "new.txt"), "w") as handle:
            handle.write("new")
    assert os.listdir(target) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


# ------------------------------------------------------------ outside this process

def test_loads_with_saved_model_cli_and_tf2_saved_model_load(exported, sample_data):
    export_dir, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--all", "--dir", export_dir],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signature_def['serving_default']" in result.stdout
    for key in ("images", *export.OUTPUT_KEYS):
        assert f"['{key}']" in result.stdout, key

    # plain TensorFlow 2 (eager), nothing of this project imported
    image = _png(_sample_rgb(sample_data, 0))
    script = (
        "import sys, tensorflow as tf\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "serve = model.signatures['serving_default']\n"
        "out = serve(images=tf.constant([open(sys.argv[2], 'rb').read()]))\n"
        "print(int(out['num_detections'][0]), float(tf.reduce_sum(out['predict_bbox'])))\n")
    image_path = os.path.join(os.path.dirname(export_dir), "probe.png")
    with open(image_path, "wb") as handle:
        handle.write(image)
    result = subprocess.run([sys.executable, "-c", script, export_dir, image_path],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count, box_sum = result.stdout.split()[-2:]
    with export.Detector.from_saved_model(export_dir) as detector:
        expected = detector.detect([image])[0]
    assert int(count) == len(expected["scores"])
    assert abs(float(box_sum) - float(expected["boxes"].sum())) < 1e-2


def _tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", name), *args],
                          capture_output=True, text=True, timeout=300)


def test_export_and_predict_command_lines(trained, sample_data, tmp_path):
    run, checkpoint = trained
    export_dir = str(tmp_path / "model")
    common = ["--cfg", TINY, "--data_dir", run.data_dir, "--reference_dir",
              run.reference_dir, "--model_dir", run.model_dir]
    sets = [f"--set={k}={v}" for k, v in SETTINGS.items()]
    result = _tool("export_savedmodel.py", *common, *sets, "--export_dir", export_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"step {TRAIN_STEPS}" in result.stdout
    again = _tool("export_savedmodel.py", *common, *sets, "--export_dir", export_dir)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: --export_dir {export_dir} already exists (pass --overwrite to replace it)")

    # a folder with good images, a corrupt one, an empty one and a grayscale one
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"good_{i}.jpg"),
                    cv2.cvtColor(_sample_rgb(sample_data, i), cv2.COLOR_RGB2BGR))
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    cv2.imwrite(str(images / "grey.png"), cv2.cvtColor(_sample_rgb(sample_data, 3),
                                                       cv2.COLOR_RGB2GRAY))
    out = str(tmp_path / "predictions")
    result = _tool("predict.py", "--saved_model", export_dir, "--images", str(images),
                   "--output_dir", out, "--label_studio", "--image_url_prefix", "/d/?f=")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 image(s)" in result.stdout and "2 skipped" in result.stdout
    assert "predicting: 6/6" in result.stderr
    with open(os.path.join(out, "detections.json")) as handle:
        summary = json.load(handle)
    assert sorted(os.path.basename(s["file"]) for s in summary["skipped"]) == [
        "corrupt.jpg", "empty.png"]
    assert len(summary["images"]) == 4
    assert sum(len(i["detections"]) for i in summary["images"]) > 0
    for entry in summary["images"]:
        drawn = cv2.imread(entry["output"])
        assert drawn.shape[:2] == (entry["height"], entry["width"])
        for det in entry["detections"]:
            box = det["box"]
            assert 0 <= box["xmin"] <= box["xmax"] <= entry["width"] + 1e-3
            assert 0 <= box["ymin"] <= box["ymax"] <= entry["height"] + 1e-3
            assert det["class"] in run.class_names and det["score"] >= 0.1
    # the same detections as Label Studio pre-annotations: percent, top-left corner
    with open(os.path.join(out, "label_studio.json")) as handle:
        tasks = {t["data"]["image"]: t for t in json.load(handle)}
    with_detections = [i for i in summary["images"] if i["detections"]]
    assert sorted(tasks) == sorted("/d/?f=" + os.path.basename(i["file"])
                                   for i in with_detections)
    for entry in with_detections:
        (predicted,) = tasks["/d/?f=" + os.path.basename(entry["file"])]["predictions"]
        assert predicted["model_version"] == os.path.basename(export_dir)
        assert len(predicted["result"]) == len(entry["detections"])
        for det, shown in zip(entry["detections"], predicted["result"]):
            box, value = det["box"], shown["value"]
            np.testing.assert_allclose(
                [value["x"], value["y"], value["width"], value["height"]],
                [100 * box["xmin"] / entry["width"], 100 * box["ymin"] / entry["height"],
                 100 * (box["xmax"] - box["xmin"]) / entry["width"],
                 100 * (box["ymax"] - box["ymin"]) / entry["height"]], rtol=1e-6)
            assert value["rectanglelabels"] == [det["class"]]
            assert shown["score"] == det["score"]
    # the drawn image differs from the input where there are detections
    with_boxes = next(i for i in summary["images"] if i["detections"])
    original = cv2.imread(with_boxes["file"])
    assert np.abs(cv2.imread(with_boxes["output"]).astype(int) - original).max() > 50

    # the same through a checkpoint instead of a SavedModel
    out2 = str(tmp_path / "predictions2")
    result = _tool("predict.py", *common, *sets, "--images", str(images / "good_0.jpg"),
                   "--output_dir", out2, "--nodraw")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(out2, "detections.json")) as handle:
        from_checkpoint = json.load(handle)["images"][0]["detections"]
    good_0 = next(i for i in summary["images"] if i["file"].endswith("good_0.jpg"))
    assert from_checkpoint == good_0["detections"]
    assert not glob.glob(os.path.join(out2, "*.jpg"))

    result = _tool("predict.py", "--saved_model", str(tmp_path / "nothing"),
                   "--images", str(images))
    assert result.returncode == 1
    assert "not a SavedModel folder" in result.stderr.strip().splitlines()[-1]


def test_empty_batch_is_refused_clearly(exported):
    with export.Detector.from_saved_model(exported[0]) as detector:
        with pytest.raises(export.ExportError, match="non-empty list"):
            detector.detect([])


def test_fc_baseline_exports_without_references(sample_data, tmp_path):
    """CLASSIFIER = fc: no reference branch, no prototypes, same signature."""
    cfg = tiny(CLASSIFIER="fc")
    run = open_run(cfg, sample_data["data_dir"], sample_data["reference_dir"],
                               str(tmp_path / "fc_run"))
    training.train(run, max_steps=2)
    checkpoint = runs.resolve_checkpoint(run.model_dir)
    info = export.export_saved_model(run, checkpoint, str(tmp_path / "fc_model"))
    assert info["prototypes"].startswith("none") and info["reference_dir"] is None
    images = [encoded for _, encoded in _records(sample_data["data_dir"], "val")]
    with export.Detector.from_saved_model(str(tmp_path / "fc_model")) as detector:
        out = detector.run(images)
        ops = [op.name for op in detector.session.graph.get_operations()]
    assert not any("prototypes" in name for name in ops)
    assert out["predict_bbox"].shape == (len(images), cfg.DETECTION_MAX_INSTANCES, 4)


def test_export_with_test_time_flips_merges_in_the_serving_graph(trained, sample_data,
                                                                 tmp_path):
    """TEST_FLIPS at export: the SavedModel (any batch size) scores every proposal on
    the mirrored images too, and says so in its info; the plain export does not."""
    run, checkpoint = trained
    images = [encoded for _, encoded in _records(sample_data["data_dir"], "val")][:3]
    outputs = {}
    for flips in ((), ("horizontal", "vertical")):
        flipped_run = open_run(
            tiny(TEST_FLIPS=flips, DETECTION_MIN_CONFIDENCE=0.0), sample_data["data_dir"],
            sample_data["reference_dir"], run.model_dir, inference=True)
        export_dir = str(tmp_path / f"export_{len(flips)}")
        info = export.export_saved_model(flipped_run, checkpoint, export_dir)
        assert info["test_flips"] == list(flips)
        with export.Detector.from_saved_model(export_dir) as detector:
            outputs[flips] = detector.run(images)
            ops = [op.name for op in detector.session.graph.get_operations()]
        assert any("test_time_flip_vertical" in name for name in ops) == bool(flips)
    plain, merged = outputs[()], outputs[("horizontal", "vertical")]
    assert merged["predict_bbox"].shape == plain["predict_bbox"].shape
    assert merged["num_detections"].sum() > 0
    assert not np.allclose(merged["predict_scores"], plain["predict_scores"])


NEW_CLASS_HEAD = dict(BACKGROUND_PROTOTYPE="pooled", BOX_REGRESSION="class_agnostic",
                      COMPARISON_SCORE="distance", ROI_POOLING="all_levels")


def test_export_and_predict_with_new_classes_from_references(sample_data, tmp_path):
    """A head that does not depend on the number of classes, trained on 'cell' only,
    runs with a reference set of other classes: the SavedModel holds one prototype per
    reference folder and names its detections by the folders."""
    base_data = convert_sample_classes(sample_data, tmp_path / "cell_only", ["cell"])
    model_dir = str(tmp_path / "cell_run")
    sets = dict(SETTINGS, NUM_CLASS=2, **NEW_CLASS_HEAD)
    run = open_run(tiny(**sets), base_data, sample_data["reference_dir"],
                               model_dir)
    training.train(run, max_steps=20)
    # three classes, one of them new, one renamed: folders are what names a class
    references = tmp_path / "new_references"
    for source, name in (("cell", "cell"), ("crystal", "crystal"), ("cell", "blob")):
        shutil.copytree(os.path.join(sample_data["reference_dir"], source),
                        references / name)
    set_args = [f"--set={k}={v!r}" for k, v in sets.items()]
    export_dir = str(tmp_path / "export_new")
    result = _tool("export_savedmodel.py", "--cfg", TINY, "--data_dir", base_data,
                   "--model_dir", model_dir, "--reference_dir", str(references),
                   "--export_dir", export_dir, *set_args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "classes: blob, cell, crystal" in result.stdout
    info = export.read_export_info(export_dir)
    assert info["class_names"] == ["blob", "cell", "crystal"]
    with export.Detector.from_saved_model(export_dir) as detector:
        prototypes = detector.session.graph.get_tensor_by_name("cached_prototypes:0")
        assert prototypes.shape.as_list()[0] == 4            # background + 3 classes
        raw = detector.run([_png(_sample_rgb(sample_data, i)) for i in range(4)])
    names = {n.decode() for n in raw["predict_class_name"].ravel()} - {""}
    assert names <= {"blob", "cell", "crystal"}
    assert raw["predict_class_id"].max() <= 3

    # predict straight from the checkpoint with the same references
    out = str(tmp_path / "predictions")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), cv2.cvtColor(_sample_rgb(sample_data, 0),
                                                    cv2.COLOR_RGB2BGR))
    result = _tool("predict.py", "--cfg", TINY, "--data_dir", base_data, "--model_dir",
                   model_dir, "--reference_dir", str(references), "--images",
                   str(images), "--output_dir", out, "--nodraw", "--min_score", "0",
                   *set_args)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(out, "detections.json")) as handle:
        found = {d["class"] for d in json.load(handle)["images"][0]["detections"]}
    assert found and found <= {"blob", "cell", "crystal"}

    # the cached prototypes detect what the reference branch in the graph (pooling the
    # references' objects on every level, as this head does) detects per call
    per_call_dir = str(tmp_path / "export_new_per_call")
    result = _tool("export_savedmodel.py", "--cfg", TINY, "--data_dir", base_data,
                   "--model_dir", model_dir, "--reference_dir", str(references),
                   "--export_dir", per_call_dir, "--nocache_prototypes", *set_args)
    assert result.returncode == 0, result.stderr[-2000:]
    with export.Detector.from_saved_model(per_call_dir) as detector:
        per_call = detector.run([_png(_sample_rgb(sample_data, i)) for i in range(4)])
    np.testing.assert_array_equal(per_call["num_detections"], raw["num_detections"])
    np.testing.assert_allclose(per_call["predict_scores"], raw["predict_scores"],
                               atol=SCORE_TOLERANCE)


def test_notebook_head_refuses_other_classes_in_one_line(trained, sample_data, tmp_path):
    run, _ = trained
    references = tmp_path / "one_class"
    shutil.copytree(os.path.join(sample_data["reference_dir"], "cell"), references / "cell")
    result = _tool("export_savedmodel.py", "--cfg", TINY, "--data_dir", run.data_dir,
                   "--model_dir", run.model_dir, "--reference_dir", str(references),
                   "--export_dir", str(tmp_path / "never"),
                   *[f"--set={k}={v}" for k, v in SETTINGS.items()])
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config tiny_cpu: NUM_CLASS = 3 but there are 1 classes")
    assert "BACKGROUND_PROTOTYPE = 'stacked'" in last and "BOX_REGRESSION = 'per_class'" in last
    assert not os.path.exists(tmp_path / "never")
