"""A class the model never saw, added from references alone, end to end.

cfgs/tiny_fewshot.py (the tiny model on ImageNet EfficientNet-Lite0 features, with the
head of docs/fewshot.md: no weight sized by the number of classes, a nearer prototype
scores higher, ROIs and references pooled from every level) is trained on two classes
of the generated sample, cells and crystals; spores never appear in its training
images. The checkpoint is then exported, without retraining, with
  - references of all three classes (crops of other images): spores must be found and
    named, and the trained classes kept;
  - the same references under other names, in another order ("angular" = crystals,
    "round" = cells, "triangle" = spores): the SavedModel must name them so, which
    means classification follows the prototypes, not a weight row per trained class
    (rows 1 and 2 were cell and crystal: a head that scored by row would swap cells
    and crystals).

Measured (2026-11-29, seed 0; docs/fewshot.md): spore AP@0.5 0.80 from three reference
crops (0.75 on another sample seed); the same model pooling by size 0.16, and 0.04
from scratch (issue 14). One base class is not enough even on ImageNet features: cells
alone, then crystals or spores from references, 0.22 / 0.12 (the model only learned
"cell or not").

Objects of a class left out of the reference set are not rejected: the head ranks the
given prototypes and the background (a closed set; docs/fewshot.md). With crystals
left out, round / triangle scored 0.60 / 0.53 on this fixture, for that reason.
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

CFG = os.path.join(REPO_ROOT, "cfgs", "tiny_fewshot.py")
TRAINED = ["cell", "crystal"]
NEW = "spore"
RENAMED = {"angular": "crystal", "round": "cell", "triangle": "spore"}  # export name: crops
# Measured on this fixture (seed 0): cell 0.70, crystal 0.91, spore 0.80, renamed the
# same; the bound leaves room for other CPUs' rounding. Without the new class's
# prototype working (by-size pooling, or features trained from scratch) spores score
# 0.16 or less.
MIN_AP = 0.5


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
def exports(tmp_path_factory, imported_lite0):
    root = tmp_path_factory.mktemp("fewshot")
    train_voc, voc = root / "train_voc", root / "voc"
    generate_voc_dataset(str(train_voc), num_train=72, num_val=4, seed=0, classes=TRAINED)
    generate_voc_dataset(str(voc), num_train=12, num_val=12, seed=1,
                         classes=TRAINED + [NEW])
    data = str(root / "data")
    _tool("convert_to_tfrecord.py", *_voc_args(train_voc, "train"), "--output_dir", data)
    _tool("make_references.py", *_voc_args(train_voc, "train"), "--output_dir",
          str(root / "refs"), "--per_class", "3")
    # The exports' references: crops of other images, the new class among them.
    crops = root / "crops"
    _tool("make_references.py", *_voc_args(voc, "train"), "--output_dir", str(crops),
          "--per_class", "3")
    renamed = root / "renamed_refs"
    for name, source in RENAMED.items():
        shutil.copytree(crops / source, renamed / name)
    # evaluation keeps low-score detections (AP needs the ranking's tail)
    sets = [f"--set={s}" for s in [f"CHECKPOINT_DIR='{imported_lite0[0]}'", "NUM_CLASS=3",
                                   "DETECTION_MIN_CONFIDENCE=0.05"]]
    model_dir = str(root / "model")
    _tool("train.py", "--cfg", CFG, "--data_dir", data, "--reference_dir",
          str(root / "refs"), "--model_dir", model_dir, *sets)
    found = {}
    for name, references in (("all", crops), ("renamed", renamed)):
        found[name] = str(root / f"export_{name}")
        _tool("export_savedmodel.py", "--cfg", CFG, "--data_dir", data, "--reference_dir",
              str(references), "--model_dir", model_dir, "--export_dir", found[name],
              *sets)
    return {"voc": voc, **found}


def _average_precision(export_dir, voc, rename):
    """AP@0.5 per exported class over voc's val split; ground truth of the classes the
    export names (`rename`: its class -> the sample's), other objects dropped."""
    classes = export.read_export_info(export_dir)["class_names"]
    assert classes == sorted(rename)
    sample_name = {source: name for name, source in rename.items()}
    evaluator = DetectionEvaluator(classes)
    val = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    with export.Detector.from_saved_model(export_dir) as detector:
        for index, image_id in enumerate(val):
            with open(voc / "JPEGImages" / f"{image_id}.jpg", "rb") as handle:
                found = detector.detect([handle.read()])[0]
            boxes, names = _ground_truth(voc / "Annotations" / f"{image_id}.xml")
            keep = [n in sample_name for n in names]
            evaluator.add_ground_truth(
                index, boxes[keep],
                np.array([classes.index(sample_name[n]) + 1 for n in names
                          if n in sample_name], np.int64))
            evaluator.add_detections(index, found["boxes"], found["scores"],
                                     found["class_ids"])
    results = evaluator.evaluate()
    return {name: results[f"voc/AP@0.5/{name}"] for name in classes}


def test_a_class_never_trained_on_is_found_from_references(exports):
    average_precision = _average_precision(
        exports["all"], exports["voc"], {name: name for name in TRAINED + [NEW]})
    for name in TRAINED + [NEW]:
        assert average_precision[name] >= MIN_AP, average_precision


def test_classes_defined_by_references_are_found_and_named(exports):
    average_precision = _average_precision(exports["renamed"], exports["voc"], RENAMED)
    for name in RENAMED:
        assert average_precision[name] >= MIN_AP, average_precision


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
