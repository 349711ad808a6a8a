"""Classes defined by references alone, end to end through the command lines.

The new-class head of docs/fewshot.md (no weight sized by the number of classes, a
nearer prototype scores higher) is trained on the generated sample's three classes;
the checkpoint is then exported with a reference set whose classes differ from
training: new names, fewer classes, in another order ("round" = crops of cells,
"triangle" = crops of spores, cropped from other images than the training ones). The
SavedModel must find and name exactly those: classification follows the prototypes,
not a weight row per trained class (rows 1 and 2 were cell and crystal, so a head
that scored by row would lose the triangles).

Objects of a class left out of the reference set are not rejected: the head ranks the
given prototypes and the background, and 6 of the 11 crystals here were labelled
round or triangle at score >= 0.5 (a closed-set classifier; docs/fewshot.md).

What this test does not claim: that a class the model has never seen is detected from
references alone. On this toy data it is not (docs/fewshot.md, "The generated sample":
with one or two base classes the features do not separate a new shape from the known
ones, and its objects are called background or a base class); that is measured on the
real datasets by bench/base_novel.py.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from data.sample.generate import generate_voc_dataset
from libs import export
from libs.metrics import DetectionEvaluator
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
HEAD = ["BACKGROUND_PROTOTYPE='pooled'", "BOX_REGRESSION='class_agnostic'",
        "COMPARISON_SCORE='distance'", "ROI_POOLING='all_levels'"]
TRAINED = ["cell", "crystal", "spore"]
RENAMED = {"round": "cell", "triangle": "spore"}       # export-time class -> its crops
# 72 images x 20 epochs, LR drops at 15 and 18: the tiny config's schedule, shortened.
SCHEDULE = ["EPOCH=20", "EPOCH_BOUNDARY=[15, 18]"]
# Measured on this fixture (seed 0, 2026-11-26): round 0.89, triangle 0.94. The bound
# leaves room for other CPUs' rounding in a from-scratch run; a head that ignored the
# prototypes would give the triangles (spores scored by the crystal row) near 0.
MIN_AP = 0.7


def _tool(name, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", name), *args],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _voc_args(voc, split):
    return ["--format", "voc", "--image_dir", str(voc / "JPEGImages"), "--annotations",
            str(voc / "Annotations"), "--split_file",
            str(voc / "ImageSets" / "Main" / f"{split}.txt")]


@pytest.fixture(scope="module")
def renamed_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot")
    train_voc, voc = root / "train_voc", root / "voc"
    generate_voc_dataset(str(train_voc), num_train=72, num_val=4, seed=0, classes=TRAINED)
    generate_voc_dataset(str(voc), num_train=12, num_val=12, seed=1, classes=TRAINED)
    data = str(root / "data")
    _tool("convert_to_tfrecord.py", *_voc_args(train_voc, "train"), "--output_dir", data)
    _tool("make_references.py", *_voc_args(train_voc, "train"), "--output_dir",
          str(root / "refs"), "--per_class", "3")
    # The export's reference set: crops of other images, under other names.
    _tool("make_references.py", *_voc_args(voc, "train"), "--output_dir",
          str(root / "crops"), "--per_class", "3")
    renamed = root / "renamed_refs"
    for name, source in RENAMED.items():
        shutil.copytree(root / "crops" / source, renamed / name)
    # evaluation keeps low-score detections (AP needs the ranking's tail)
    sets = [f"--set={s}" for s in HEAD + ["NUM_CLASS=4", "NUM_SUPPORTS=3",
                                          "DETECTION_MIN_CONFIDENCE=0.05"]]
    model_dir = str(root / "model")
    _tool("train.py", "--cfg", TINY, "--data_dir", data, "--reference_dir",
          str(root / "refs"), "--model_dir", model_dir, *sets,
          *[f"--set={s}" for s in SCHEDULE])
    export_dir = str(root / "export")
    _tool("export_savedmodel.py", "--cfg", TINY, "--data_dir", data, "--reference_dir",
          str(renamed), "--model_dir", model_dir, "--export_dir", export_dir, *sets)
    return {"voc": voc, "export_dir": export_dir}


def test_classes_defined_by_references_are_found_and_named(renamed_export):
    voc = renamed_export["voc"]
    classes = sorted(RENAMED)
    assert export.read_export_info(renamed_export["export_dir"])["class_names"] == classes
    val = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    evaluator = DetectionEvaluator(classes)
    with export.Detector.from_saved_model(renamed_export["export_dir"]) as detector:
        for index, image_id in enumerate(val):
            with open(voc / "JPEGImages" / f"{image_id}.jpg", "rb") as handle:
                found = detector.detect([handle.read()])[0]
            boxes, names = _ground_truth(voc / "Annotations" / f"{image_id}.xml")
            renamed = {source: name for name, source in RENAMED.items()}
            keep = [n in renamed for n in names]
            evaluator.add_ground_truth(
                index, boxes[keep],
                np.array([classes.index(renamed[n]) + 1 for n in names if n in renamed],
                         np.int64))
            evaluator.add_detections(index, found["boxes"], found["scores"],
                                     found["class_ids"])
    results = evaluator.evaluate()
    for name in classes:
        assert results[f"voc/AP@0.5/{name}"] >= MIN_AP, results


def _ground_truth(xml_path):
    """[y1, x1, y2, x2] boxes (pixels) and class names of a VOC annotation."""
    import xml.etree.ElementTree as ElementTree
    boxes, names = [], []
    for obj in ElementTree.parse(xml_path).getroot().iter("object"):
        box = obj.find("bndbox")
        x1, y1, x2, y2 = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([y1, x1, y2, x2])
        names.append(obj.find("name").text)
    return np.array(boxes, np.float32).reshape(-1, 4), names
