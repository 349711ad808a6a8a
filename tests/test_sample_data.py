"""The synthetic sample dataset: deterministic, valid VOC, objects as described."""
import filecmp
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

from data.sample.generate import CLASSES, generate_voc_dataset


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("sample"))
    return out_dir, generate_voc_dataset(out_dir, num_train=12, num_val=4, seed=0)


def _read_xml(path):
    root = ElementTree.parse(path).getroot()
    size = (int(root.findtext("size/height")), int(root.findtext("size/width")))
    objects = [(o.findtext("name"), tuple(int(o.findtext(f"bndbox/{k}"))
                                          for k in ("xmin", "ymin", "xmax", "ymax")))
               for o in root.findall("object")]
    return root.findtext("filename"), size, objects


def test_layout_and_splits(sample):
    out_dir, result = sample
    with open(os.path.join(out_dir, "ImageSets/Main/train.txt")) as handle:
        assert handle.read().split() == result["train"]
    with open(os.path.join(out_dir, "ImageSets/Main/val.txt")) as handle:
        assert handle.read().split() == result["val"]
    assert len(result["train"]) == 12 and len(result["val"]) == 4
    assert not set(result["train"]) & set(result["val"])
    for image_id in result["train"] + result["val"]:
        assert os.path.isfile(os.path.join(out_dir, "JPEGImages", image_id + ".jpg"))
        assert os.path.isfile(os.path.join(out_dir, "Annotations", image_id + ".xml"))


def test_annotations_match_images_and_rules(sample):
    out_dir, result = sample
    shapes, class_counts = set(), {name: 0 for name in CLASSES}
    for image_id in result["train"] + result["val"]:
        filename, size, objects = _read_xml(os.path.join(out_dir, "Annotations",
                                                         image_id + ".xml"))
        image = cv2.imread(os.path.join(out_dir, "JPEGImages", filename))
        assert image.shape[:2] == size == result["sizes"][image_id]
        shapes.add(size)
        assert 1 <= len(objects) <= 4
        assert objects == [(n, tuple(b)) for n, b in result["objects"][image_id]]
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
        background = np.median(grey)
        for name, (x1, y1, x2, y2) in objects:
            class_counts[name] += 1
            assert 0 <= x1 < x2 <= size[1] and 0 <= y1 < y2 <= size[0]
            side = max(x2 - x1, y2 - y1)
            assert (16 if name == "cell" else 10) <= side <= (42 if name == "cell" else 31)
            centre = grey[(y1 + y2) // 2, (x1 + x2) // 2]
            # Cells are bright and crystals dark against the background.
            assert centre > background + 40 if name == "cell" else centre < background - 40
        boxes = [b for _, b in objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w <= 0 or overlap_h <= 0, (image_id, a, b)
    assert all(count >= 3 for count in class_counts.values()), class_counts
    assert len(shapes) >= 3
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)


def test_same_seed_same_bytes_other_seed_differs(sample, tmp_path):
    out_dir, _ = sample
    again, other = str(tmp_path / "again"), str(tmp_path / "other")
    generate_voc_dataset(again, num_train=12, num_val=4, seed=0)
    generate_voc_dataset(other, num_train=12, num_val=4, seed=1)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        names = sorted(os.listdir(os.path.join(out_dir, sub)))
        assert names == sorted(os.listdir(os.path.join(again, sub)))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(out_dir, sub),
                                                   os.path.join(again, sub), names,
                                                   shallow=False)
        assert not mismatch and not errors
    assert not filecmp.cmp(os.path.join(out_dir, "JPEGImages/sample_0000.jpg"),
                           os.path.join(other, "JPEGImages/sample_0000.jpg"), shallow=False)
    # No temporary files left behind by the atomic writes.
    for root, _, files in os.walk(out_dir):
        assert not [f for f in files if f.endswith(".tmp")], root


def test_cli(tmp_path):
    out_dir = str(tmp_path / "cli")
    done = subprocess.run([sys.executable, "-m", "data.sample.generate", "--out_dir", out_dir,
                           "--num_train", "3", "--num_val", "2"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "3 train + 2 val" in done.stdout
    assert len(os.listdir(os.path.join(out_dir, "Annotations"))) == 5

    missing = subprocess.run([sys.executable, "-m", "data.sample.generate"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert missing.stderr.strip() == "error: --out_dir is required"
