"""Reference images: cropping from annotations (library and CLI) and loading supports."""
import dataclasses
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT, snapshot_tree

from data.io import convert, reference_set
from data.io.reference_set import ReferenceSetError, load_reference_images
from data.sample.generate import generate_voc_dataset

MAKE_REFERENCES = os.path.join(REPO_ROOT, "tools", "make_references.py")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sample"))
    generate_voc_dataset(root, num_train=10, num_val=2, seed=5)
    images, names = convert.read_annotations(
        "voc", os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations"),
        os.path.join(root, "ImageSets/Main/train.txt"))
    return root, images, names


# ---------------------------------------------------------------------------------------
# crop_references
# ---------------------------------------------------------------------------------------

def test_crops_follow_the_stated_rule(sample, tmp_path):
    _, images, names = sample
    out = str(tmp_path / "refs")
    summary = reference_set.crop_references(images, out, per_class=3, margin=0.1,
                                            min_size=8, progress_every_seconds=1e9)
    assert names == ["cell", "crystal"]
    assert summary["classes"] == {"cell": 3, "crystal": 3}

    by_name = {image.filename: image for image in images}
    for name in names:
        files = sorted(os.listdir(os.path.join(out, name)))
        assert len(files) == 3
        sources = []
        for file_name in files:
            stem, index = file_name[:-4].rsplit("_", 1)
            sources.append(stem)
            image = by_name[stem + ".jpg"]
            obj = image.objects[int(index)]
            assert obj.name == name
            # The crop is the box plus 10 % on each side, clipped to the image.
            y1, x1, y2, x2 = obj.box
            full = cv2.imread(image.image_path)
            dy, dx = (y2 - y1) * 0.1, (x2 - x1) * 0.1
            expected = full[max(int(np.floor(y1 - dy)), 0):int(np.ceil(y2 + dy)),
                            max(int(np.floor(x1 - dx)), 0):int(np.ceil(x2 + dx))]
            crop = cv2.imread(os.path.join(out, name, file_name))
            np.testing.assert_array_equal(crop, expected)
        # Pass 1: one object per image, images in sorted order, the largest of each.
        assert len(set(sources)) == 3
        holders = sorted(i.filename for i in images if any(o.name == name for o in i.objects))
        assert sorted(s + ".jpg" for s in sources) == holders[:3]
        for stem in sources:
            areas = [(o.box[2] - o.box[0]) * (o.box[3] - o.box[1])
                     for o in by_name[stem + ".jpg"].objects if o.name == name]
            chosen = [f for f in files if f.startswith(stem + "_")][0]
            obj = by_name[stem + ".jpg"].objects[int(chosen[:-4].rsplit("_", 1)[1])]
            assert (obj.box[2] - obj.box[0]) * (obj.box[3] - obj.box[1]) == max(areas)

    with open(os.path.join(out, reference_set.MANIFEST)) as handle:
        manifest = json.load(handle)
    assert sorted(manifest["files"]) == sorted(summary["files"])


def test_crops_are_deterministic_and_stale_ones_removed(sample, tmp_path):
    _, images, _ = sample
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    reference_set.crop_references(images, first, per_class=4, progress_every_seconds=1e9)
    reference_set.crop_references(images, second, per_class=4, progress_every_seconds=1e9)
    assert snapshot_tree(first) == snapshot_tree(second)
    # Fewer per class: crops of the earlier run that are no longer chosen go away,
    # a file the user put there stays.
    with open(os.path.join(first, "cell", "mine.png"), "wb") as handle:
        handle.write(b"user file")
    summary = reference_set.crop_references(images, first, per_class=2,
                                            progress_every_seconds=1e9)
    assert sorted(os.listdir(os.path.join(first, "cell"))) == sorted(
        [f.split("/")[1] for f in summary["files"] if f.startswith("cell/")] + ["mine.png"])


def test_min_size_and_difficult_objects_are_skipped(tmp_path):
    image_dir, xml_dir = tmp_path / "images", tmp_path / "xml"
    image_dir.mkdir()
    xml_dir.mkdir()
    cv2.imwrite(str(image_dir / "one.png"), np.full((50, 50, 3), 90, np.uint8))
    (xml_dir / "one.xml").write_text(
        "<annotation><filename>one.png</filename>"
        "<object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>6</xmax>"
        "<ymax>30</ymax></bndbox></object>"                       # 5 px wide: too small
        "<object><name>a</name><difficult>1</difficult><bndbox><xmin>10</xmin>"
        "<ymin>10</ymin><xmax>40</xmax><ymax>40</ymax></bndbox></object>"   # difficult
        "<object><name>a</name><bndbox><xmin>30</xmin><ymin>30</ymin><xmax>60</xmax>"
        "<ymax>45</ymax></bndbox></object>"                       # reaches outside
        "<object><name>a</name><bndbox><xmin>20</xmin><ymin>5</ymin><xmax>35</xmax>"
        "<ymax>25</ymax></bndbox></object>"                       # the one to crop
        "</annotation>")
    (xml_dir / "two.xml").write_text(   # its image does not exist
        "<annotation><filename>two.png</filename><object><name>a</name><bndbox>"
        "<xmin>1</xmin><ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        "</annotation>")
    images, _ = convert.read_annotations("voc", str(image_dir), str(xml_dir))
    summary = reference_set.crop_references(images, str(tmp_path / "refs"), per_class=3,
                                            min_size=8, progress_every_seconds=1e9)
    assert summary["files"] == ["a/one_3.png"]
    assert summary["skipped"] == {"difficult": 1, "image_missing": 1, "partly_outside": 1,
                                  "too_small": 1}


def test_make_references_cli(sample, tmp_path):
    root, _, _ = sample
    out = str(tmp_path / "cli_refs")
    done = subprocess.run(
        [sys.executable, MAKE_REFERENCES, "--format", "voc",
         "--image_dir", os.path.join(root, "JPEGImages"),
         "--annotations", os.path.join(root, "Annotations"),
         "--split_file", os.path.join(root, "ImageSets/Main/train.txt"),
         "--output_dir", out, "--per_class", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "cell 2, crystal 2" in done.stdout
    assert sorted(os.listdir(out)) == ["cell", "crystal", "references.json"]
    batch = load_reference_images(out, ["cell", "crystal"], 2, 32)
    # Cells are bright, crystals dark (the crops hold mostly object pixels).
    assert batch[0].mean() > batch[1].mean() + 40

    missing = subprocess.run(
        [sys.executable, MAKE_REFERENCES, "--format", "voc", "--image_dir", str(tmp_path),
         "--annotations", str(tmp_path / "nope"), "--output_dir", out, "--per_class", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "no such directory" in missing.stderr


def test_a_class_folder_dropped_into_a_cropped_set_joins_it(sample, tmp_path):
    """Adding a class to a trained model's references (README): crops of the new class,
    from the tool or by hand, copied in beside the folders the manifest lists."""
    _, images, _ = sample
    renamed = [dataclasses.replace(image, objects=[
        dataclasses.replace(obj, name="cell/round") for obj in image.objects
        if obj.name == "cell"]) for image in images]
    out = str(tmp_path / "refs")
    reference_set.crop_references(renamed, out, per_class=2, progress_every_seconds=1e9)
    assert reference_set.reference_classes(out) == ["cell/round"]     # folder cell_round
    os.makedirs(os.path.join(out, "spore"))
    assert reference_set.reference_classes(out) == ["cell/round"]     # no image yet
    for k in range(2):
        cv2.imwrite(os.path.join(out, "spore", f"s{k}.png"),
                    np.full((12, 12, 3), 200, np.uint8))
    assert reference_set.reference_classes(out) == ["cell/round", "spore"]
    batch = load_reference_images(out, ["cell/round", "spore"], 2, 16)
    assert batch.shape == (2, 2, 16, 16, 3)


# ---------------------------------------------------------------------------------------
# load_reference_images
# ---------------------------------------------------------------------------------------

@pytest.fixture()
def reference_dir(tmp_path):
    """Two classes: 'bright' has 5 images (one grey, one RGBA), 'dark' has 3."""
    root = tmp_path / "refs"
    for name in ("bright", "dark"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        image = rng.integers(150, 256, size=(20 + k, 30, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "bright" / f"b{k}.png"), image)
        cv2.imwrite(str(root / "dark" / f"d{k}.jpg"), image // 4)
    cv2.imwrite(str(root / "bright" / "b0_grey.png"), np.full((10, 10), 200, np.uint8))
    cv2.imwrite(str(root / "bright" / "b3_rgba.png"),
                np.dstack([np.full((10, 12, 3), 180, np.uint8), np.zeros((10, 12), np.uint8)]))
    return str(root)


def test_loader_shapes_order_and_conversion(reference_dir):
    batch, paths = load_reference_images(reference_dir, ["bright", "dark"], 3, 16,
                                         return_paths=True)
    assert batch.shape == (2, 3, 16, 16, 3) and batch.dtype == np.uint8
    # seed=None: the first files in sorted name order.
    assert [os.path.basename(p) for p in paths["bright"]] == ["b0.png", "b0_grey.png", "b1.png"]
    assert [os.path.basename(p) for p in paths["dark"]] == ["d0.jpg", "d1.jpg", "d2.jpg"]
    expected = cv2.resize(cv2.cvtColor(cv2.imread(paths["dark"][1]), cv2.COLOR_BGR2RGB),
                          (16, 16), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(batch[1, 1], expected)
    assert (batch[0, 1] == 200).all()   # grey -> RGB
    five = load_reference_images(reference_dir, ["bright"], 5, 8)
    assert (five[0, 4] == 180).all()    # b3_rgba.png: RGBA -> RGB (alpha dropped)
    again = load_reference_images(reference_dir, ["bright", "dark"], 3, 16)
    np.testing.assert_array_equal(batch, again)


def test_loader_seeded_subset(reference_dir):
    picks = set()
    for seed in range(8):
        _, paths = load_reference_images(reference_dir, ["bright"], 2, 8, seed=seed,
                                         return_paths=True)
        _, same = load_reference_images(reference_dir, ["bright"], 2, 8, seed=seed,
                                        return_paths=True)
        assert paths == same
        picks.add(tuple(paths["bright"]))
    assert len(picks) > 1
    # A class's choice does not depend on the other classes asked for.
    _, alone = load_reference_images(reference_dir, ["dark"], 2, 8, seed=3, return_paths=True)
    _, both = load_reference_images(reference_dir, ["bright", "dark"], 2, 8, seed=3,
                                    return_paths=True)
    assert alone["dark"] == both["dark"]


def test_loader_errors(reference_dir, tmp_path):
    with pytest.raises(ReferenceSetError, match="does not exist"):
        load_reference_images(str(tmp_path / "nowhere"), ["bright"], 1, 8)
    with pytest.raises(ReferenceSetError, match="no folder for class 'WBC'") as info:
        load_reference_images(reference_dir, ["bright", "WBC"], 1, 8)
    assert "found: bright, dark" in str(info.value)
    with pytest.raises(ReferenceSetError, match=r"'dark'.* has 3 usable image\(s\), "
                                                r"need num_supports=4"):
        load_reference_images(reference_dir, ["dark"], 4, 8)
    assert isinstance(ReferenceSetError("x"), ValueError)


def test_loader_skips_bad_files_when_enough_remain(reference_dir):
    dark = os.path.join(reference_dir, "dark")
    with open(os.path.join(dark, "a_broken.jpg"), "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 not really")
    with open(os.path.join(dark, "notes.txt"), "w") as handle:
        handle.write("not an image")
    with open(os.path.join(dark, ".DS_Store"), "wb") as handle:
        handle.write(b"\0")
    _, paths = load_reference_images(reference_dir, ["dark"], 3, 8, return_paths=True)
    assert [os.path.basename(p) for p in paths["dark"]] == ["d0.jpg", "d1.jpg", "d2.jpg"]
    with pytest.raises(ReferenceSetError, match=r"3 usable image\(s\), 2 unusable file\(s\)"):
        load_reference_images(reference_dir, ["dark"], 4, 8)
