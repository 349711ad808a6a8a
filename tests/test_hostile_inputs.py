"""Hostile inputs, end to end (docs/reliability.md has the same table).

One corpus of bad inputs, generated here, goes through the whole pipeline: convert ->
crop references -> train -> evaluate -> export -> predict. Each row of HOSTILE names an
input, the documented rule (skip, convert, clip, drop, refuse) and where it applies;
each gets its own test below. The pipeline must finish for everything that is not
refused, a refusal must be one line, and nothing refused may change an output.
"""
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data.io import convert, reference_set
from data.io.dataset import open_run
from data.io.input_fn import DataError
from libs.configs import ConfigError, load_config
from libs.serving import export, prediction
from libs.train import runs, training
from tests.conftest import REPO_ROOT, snapshot_tree
from tests.test_convert import read_records, write_voc_xml

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
CLASSES = ["RBC", "WBC"]

# (case id, the input, the rule)
HOSTILE = [
    ("corrupt_jpeg", "random bytes named .jpg", "conversion: image skipped"),
    ("truncated_jpeg", "JPEG cut in half", "conversion: image skipped"),
    ("truncated_png", "PNG cut in half", "conversion: image skipped"),
    ("zero_byte", "empty image file", "conversion: image skipped"),
    ("empty_annotation", "VOC file without objects", "conversion: image skipped"),
    ("million_px_box", "box 1,000,000 px wide", "conversion: clipped to the image"),
    ("nan_box", "NaN coordinates", "conversion: box dropped"),
    ("grayscale", "1-channel PNG", "conversion: stored as RGB"),
    ("rgba", "4-channel PNG", "conversion: stored as RGB"),
    ("16bit", "16-bit PNG", "conversion: stored as 8-bit RGB"),
    ("reference_not_image", "notes.txt in a reference folder", "references: skipped"),
    ("reference_corrupt", "corrupt .png in a reference folder", "references: skipped"),
    ("truncated_tfrecord", "train TFRecord cut short", "training: refused at start"),
    ("config_typo", "--set LRR=0.1", "every tool: refused"),
    ("serving_not_image", "text bytes sent to the SavedModel", "serving: refused"),
    ("predict_unreadable", "corrupt / zero-byte files given to predict.py",
     "predict: skipped, the rest goes on"),
]


def test_the_table_is_complete():
    """Every row has its test below (and docs/reliability.md lists them)."""
    ids = [case for case, _, _ in HOSTILE]
    assert len(ids) == len(set(ids)) == 16
    names = set(globals())
    for case in ids:
        assert f"test_{case}" in names, case
    with open(os.path.join(REPO_ROOT, "docs", "reliability.md")) as handle:
        doc = handle.read()
    for case in ids:
        assert f"`{case}`" in doc, case


# ------------------------------------------------------------------------- the corpus

def _rgb(rng, height=96, width=128):
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png(image):
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Runs the corpus through convert -> references -> train -> export once."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(7)
    voc = root / "voc"
    images, xmls = voc / "JPEGImages", voc / "Annotations"
    images.mkdir(parents=True)
    xmls.mkdir()
    boxes = [("RBC", (10, 10, 40, 40), 0), ("WBC", (60, 30, 110, 80), 0),
             ("RBC", (20, 50, 45, 75), 0)]

    def add(stem, filename, data, objects, size=(96, 128)):
        if data is not None:
            (images / filename).write_bytes(data)
        write_voc_xml(str(xmls / f"{stem}.xml"), filename, size, objects)

    jpeg = cv2.imencode(".jpg", _rgb(rng))[1].tobytes()
    png = _png(_rgb(rng))
    for k in range(4):
        add(f"good{k}", f"good{k}.jpg", cv2.imencode(".jpg", _rgb(rng))[1].tobytes(), boxes)
    add("corrupt_jpeg", "corrupt_jpeg.jpg", bytes(rng.integers(0, 256, 5000, np.uint8)),
        boxes)
    add("truncated_jpeg", "truncated_jpeg.jpg", jpeg[:len(jpeg) // 2], boxes)
    add("truncated_png", "truncated_png.png", png[:len(png) // 2], boxes)
    add("zero_byte", "zero_byte.jpg", b"", boxes)
    add("empty_annotation", "empty_annotation.jpg", jpeg, [])
    add("million_px_box", "million_px_box.jpg", jpeg,
        [("RBC", (5, 10, 1_000_000, 30), 0), boxes[1]])
    add("nan_box", "nan_box.jpg", jpeg, [("RBC", ("nan", 10, 30, 30), 0), boxes[1]])
    grey = rng.integers(0, 256, size=(96, 128), dtype=np.uint8)
    add("grayscale", "grayscale.png", _png(grey), boxes)
    rgba = np.dstack([_rgb(rng), np.full((96, 128), 200, np.uint8)])
    add("rgba", "rgba.png", _png(rgba), boxes)
    deep = (_rgb(rng).astype(np.uint16) * 257)
    add("16bit", "16bit.png", cv2.imencode(".png", deep[:, :, ::-1])[1].tobytes(), boxes)
    ids = sorted(p.stem for p in xmls.iterdir())
    sets = voc / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(ids) + "\n")

    data_dir = str(root / "data")
    summary = {}
    for split in ("train", "val"):        # val = the same files: evaluation must cope too
        summary[split] = convert.convert_dataset(
            "voc", str(images), str(xmls), data_dir, split_file=str(sets / "train.txt"),
            split=split, classes=CLASSES, progress_every_seconds=1e9)
    annotations, _ = convert.read_annotations("voc", str(images), str(xmls))
    reference_dir = str(root / "references")
    reference_set.crop_references(annotations, reference_dir, per_class=3,
                                  progress_every_seconds=1e9)
    for name in CLASSES:
        folder = os.path.join(reference_dir, reference_set.class_dir_name(name))
        # sorted first, so the loader meets them before the good crops
        with open(os.path.join(folder, "0_notes.txt"), "w") as handle:
            handle.write("not an image")
        with open(os.path.join(folder, "0_broken.png"), "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\n garbage")

    model_dir = str(root / "run")
    cfg = load_config(TINY, {"SAVE_CHECKPOINTS_STEPS": 3})
    run = open_run(cfg, data_dir, reference_dir, model_dir)
    step = training.train(run, max_steps=3)
    results, _ = training.evaluate(run)
    export_dir = str(root / "model")
    export.export_saved_model(run, runs.resolve_checkpoint(model_dir), export_dir)
    return {"root": root, "voc": voc, "images": images, "data_dir": data_dir,
            "reference_dir": reference_dir, "model_dir": model_dir, "run": run,
            "summary": summary["train"], "records": {
                r["filename"]: r for r in read_records(data_dir, "train")},
            "step": step, "eval": results, "export_dir": export_dir}


def test_the_pipeline_finished_on_the_corpus(pipeline):
    assert pipeline["step"] == 3
    assert pipeline["eval"]["num_images"] == len(pipeline["records"]) == 9
    assert np.isfinite(pipeline["eval"]["loss"])


def _skipped(pipeline, filename):
    return filename not in pipeline["records"]


def test_corrupt_jpeg(pipeline):
    assert _skipped(pipeline, "corrupt_jpeg.jpg")


def test_truncated_jpeg(pipeline):
    assert _skipped(pipeline, "truncated_jpeg.jpg")


def test_truncated_png(pipeline):
    assert _skipped(pipeline, "truncated_png.png")


def test_zero_byte(pipeline):
    assert _skipped(pipeline, "zero_byte.jpg")
    assert pipeline["summary"]["image_unreadable"] == 4     # with the three above


def test_empty_annotation(pipeline):
    assert _skipped(pipeline, "empty_annotation.jpg")
    assert pipeline["summary"]["image_no_objects"] == 1


def test_million_px_box(pipeline):
    record = pipeline["records"]["million_px_box.jpg"]
    np.testing.assert_array_equal(record["boxes"][0], [10, 5, 30, 128])   # [y1 x1 y2 x2]
    assert pipeline["summary"]["box_clipped"] == 1


def test_nan_box(pipeline):
    record = pipeline["records"]["nan_box.jpg"]
    assert record["labels"].tolist() == [2]                 # only the WBC is left
    assert pipeline["summary"]["box_not_finite"] == 1


def _assert_converted(pipeline, filename):
    record = pipeline["records"][filename]
    assert record["format"] == b"png"
    assert record["pixels"].shape == (96, 128, 3) and record["pixels"].dtype == np.uint8


def test_grayscale(pipeline):
    _assert_converted(pipeline, "grayscale.png")
    pixels = pipeline["records"]["grayscale.png"]["pixels"]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_rgba(pipeline):
    _assert_converted(pipeline, "rgba.png")


def test_16bit(pipeline):
    _assert_converted(pipeline, "16bit.png")
    assert pipeline["summary"]["image_converted"] == 3


def test_reference_not_image(pipeline, caplog):
    paths, _ = reference_set.select_reference_files(pipeline["reference_dir"], CLASSES, 2)
    for files in paths.values():
        assert not any(f.endswith("0_notes.txt") for f in files)
    assert "0_notes.txt: not an image file (extension) -> skipped" in caplog.text


def test_reference_corrupt(pipeline, caplog):
    paths, _ = reference_set.select_reference_files(pipeline["reference_dir"], CLASSES, 2)
    for files in paths.values():
        assert len(files) == 2 and not any(f.endswith("0_broken.png") for f in files)
    assert "0_broken.png: unreadable" in caplog.text


def test_truncated_tfrecord(pipeline, tmp_path):
    data_dir = str(tmp_path / "data")
    shutil.copytree(pipeline["data_dir"], data_dir)
    shard = sorted(f for f in os.listdir(data_dir) if f.startswith("train-"))[0]
    path = os.path.join(data_dir, shard)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 100)
    model_dir = str(tmp_path / "run")
    shutil.copytree(pipeline["model_dir"], model_dir)
    before = snapshot_tree(model_dir)
    run = open_run(pipeline["run"].cfg, data_dir, pipeline["reference_dir"],
                               model_dir)
    with pytest.raises(DataError, match=r"is truncated: it ends inside record \d+") as caught:
        training.train(run, max_steps=6)
    assert "\n" not in str(caught.value)
    assert snapshot_tree(model_dir) == before                   # nothing written


def test_config_typo(pipeline):
    with pytest.raises(ConfigError, match="unknown field LRR"):
        load_config(TINY, {"LRR": 0.1})
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "--cfg", TINY,
         "--data_dir", pipeline["data_dir"], "--reference_dir", pipeline["reference_dir"],
         "--model_dir", pipeline["model_dir"], "--set", "LRR=0.1"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "unknown field LRR" in result.stderr.strip().splitlines()[-1]


def test_serving_not_image(pipeline):
    with export.Detector.from_saved_model(pipeline["export_dir"]) as detector:
        with pytest.raises(export.ExportError, match="not a JPEG, PNG, GIF or BMP") as caught:
            detector.detect([b"just some text, not an image"])
        assert "\n" not in str(caught.value)
        good = (pipeline["images"] / "good0.jpg").read_bytes()
        assert len(detector.detect([good])) == 1            # the model still serves


def test_predict_unreadable(pipeline, tmp_path):
    folder = pipeline["images"]
    with export.Detector.from_saved_model(pipeline["export_dir"]) as detector:
        summary = prediction.predict_files(detector, [str(folder)], str(tmp_path / "out"))
    skipped = sorted(os.path.basename(s["file"]) for s in summary["skipped"])
    assert skipped == ["corrupt_jpeg.jpg", "truncated_jpeg.jpg", "truncated_png.png",
                       "zero_byte.jpg"]
    assert len(summary["images"]) == len(os.listdir(folder)) - 4
    with open(tmp_path / "out" / prediction.DETECTIONS_FILE) as handle:
        assert json.load(handle)["skipped"] == summary["skipped"]


def test_every_hostile_kind_has_its_test():
    """docs/reliability.md's table of hostile-input kinds: at least 30 rows, each an
    error line, a skip or a repair, each naming tests that exist."""
    import re
    with open(os.path.join(REPO_ROOT, "docs", "reliability.md")) as handle:
        doc = handle.read()
    section = doc.split("## Every hostile-input kind tested", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| input")]
    assert len(rows) >= 30
    groups = set()
    for row in rows:
        group, kind, outcome, tests = [cell.strip() for cell in row.strip("|").split("|")]
        groups.add(group)
        assert "traceback" not in outcome.lower(), row
        named = re.findall(r"`((?:tests/[\w./]+)?::\w+)`", tests)
        assert named, row
        current = None
        for reference in named:
            path, _, name = reference.partition("::")
            current = path or current
            with open(os.path.join(REPO_ROOT, current)) as handle:
                assert re.search(rf"^def {name}\(", handle.read(), re.M), reference
    assert {"weights", "VOC", "COCO", "YOLO", "references", "configs",
            "checkpoints"} <= groups
