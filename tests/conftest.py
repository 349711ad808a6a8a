"""Shared pytest setup: the repo root on sys.path and paths to repo files."""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


import pytest  # noqa: E402


def snapshot_tree(directory):
    """{relative path: bytes} of every file under `directory` ({} if it does not exist):
    compare two snapshots to prove that nothing was written, half-written or removed."""
    found = {}
    for base, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


def convert_sample_classes(sample_data, output_dir, classes):
    """The sample's train split converted with only `classes` (the others' boxes are
    dropped): a base-class dataset for the few-shot tests. Returns output_dir."""
    from data.io import convert

    voc = sample_data["voc_dir"]
    convert.convert_dataset("voc", os.path.join(voc, "JPEGImages"),
                            os.path.join(voc, "Annotations"), str(output_dir),
                            split_file=os.path.join(voc, "ImageSets", "Main", "train.txt"),
                            classes=list(classes), progress_every_seconds=1e9)
    return str(output_dir)


@pytest.fixture(scope="session")
def imported_lite0(tmp_path_factory):
    """The ImageNet EfficientNet-Lite0 of the installed package, imported once per test
    session as tools/import_backbone.py does: (checkpoint folder, import info)."""
    from libs.weights import pretrained

    output_dir = str(tmp_path_factory.mktemp("pretrained") / "efficientnet_lite0")
    info = pretrained.import_backbone("efficientnet_lite0", output_dir)
    return output_dir, info


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """Generated sample dataset, converted, with references: the tiny config's inputs.

    Returns a dict with data_dir, reference_dir, voc_dir and the class names.
    """
    from data.io import convert, reference_set
    from data.sample.generate import generate_voc_dataset

    root = tmp_path_factory.mktemp("sample")
    voc = root / "voc"
    generate_voc_dataset(str(voc), num_train=8, num_val=4, seed=0)
    data_dir = root / "data"
    for split in ("train", "val"):
        convert.convert_dataset("voc", str(voc / "JPEGImages"), str(voc / "Annotations"),
                                str(data_dir),
                                split_file=str(voc / "ImageSets" / "Main" / f"{split}.txt"),
                                progress_every_seconds=1e9)
    images, classes = convert.read_annotations(
        "voc", str(voc / "JPEGImages"), str(voc / "Annotations"),
        split_file=str(voc / "ImageSets" / "Main" / "train.txt"))
    refs = root / "references"
    reference_set.crop_references(images, str(refs), per_class=3)
    return {"data_dir": str(data_dir), "reference_dir": str(refs), "voc_dir": str(voc),
            "class_names": classes}
