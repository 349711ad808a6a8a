"""Base/novel few-shot data: K-shot sampling, base filtering, the tool, id mapping, bAP/nAP.

The sampling rule is checked against counts computed here from the raw annotations
(numpy), not through the module's own helpers: exactly K (or the stated reason why
not), only the class's non-difficult boxes, nesting in K, seeded determinism.
"""
import json
import math
import os
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT

from data.io import (
    annotation,
    convert,
    fewshot,
    label_map,
    reference_set,
    tfrecord_format,
)
from libs.base.tf_compat import tf
from libs.evaluation import base_novel
from libs.evaluation.detection_evaluator import DetectionEvaluator
from libs.evaluation.table import format_table

TOOL = os.path.join(REPO_ROOT, "tools", "make_fewshot_split.py")
EVAL = os.path.join(REPO_ROOT, "tools", "eval.py")
TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
NAN = float("nan")


# ---------------------------------------------------------------------------------------
# Synthetic annotations (no files: the sampler never opens an image)
# ---------------------------------------------------------------------------------------

def _annotations(seed, num_images=60, classes=("a", "b", "c", "dense")):
    """Random images: 0-4 objects per class ("dense": 0 or 3-7), ~15 % difficult, a few
    unusable boxes."""
    rng = np.random.default_rng(seed)
    images = []
    for image_id in rng.permutation(np.arange(1, num_images + 1)):   # any input order
        objects = []
        for name in classes:
            number = int(rng.choice([0, 3, 4, 5, 6, 7]) if name == "dense"
                         else rng.integers(0, 5))
            for _ in range(number):
                y, x = rng.uniform(0, 100, 2)
                box = (y, x, y + rng.uniform(1, 30), x + rng.uniform(1, 30))
                roll = rng.random()
                if roll < 0.03:
                    box = (y, x, math.nan, x + 5)          # not finite
                elif roll < 0.06:
                    box = (y, x, y - 1, x + 5)             # degenerate
                objects.append(annotation.ObjectAnnotation(
                    name=name, box=box, difficult=bool(rng.random() < 0.15),
                    index=len(objects)))
        rng.shuffle(objects)
        images.append(annotation.ImageAnnotation(
            image_id=int(image_id), filename=f"img_{image_id:03d}.jpg", image_path=None,
            source=f"img_{image_id:03d}.xml", objects=objects))
    return images


def _shot_counts(images, name):
    """{image id: usable non-difficult boxes of `name`}, from the raw numbers."""
    counts = {}
    for image in images:
        boxes = np.array([obj.box for obj in image.objects
                          if obj.name == name and not obj.difficult], float).reshape(-1, 4)
        usable = np.all(np.isfinite(boxes), axis=1) & (boxes[:, 2] > boxes[:, 0]) \
            & (boxes[:, 3] > boxes[:, 1])
        counts[image.image_id] = int(usable.sum())
    return counts


def _taken_ids(kshot_set, name):
    return [image.image_id for image, _ in kshot_set.draws[name].images]


# ---------------------------------------------------------------------------------------
# The filling rule on hand-worked draw sequences
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("counts, shots, expected", [
    ([1, 1, 1], 2, [0, 1]),
    # an overshooting image is passed over and the next one that fits is taken
    ([2, 1, 1], 2, [1, 2]),
    ([2, 1, 1], 3, [1, 2]),          # 2 of 3: the image with 2 never fits the gap of 1
    ([2, 1, 1], 4, [1, 2, 0]),       # the passed-over image is taken at target 4
    # the steps 1, 2, 3 are kept for nesting: K=3 cannot take the 2nd image
    ([1, 2, 1], 2, [0, 2]),
    ([1, 2, 1], 3, [0, 2]),
    ([1, 2, 1], 4, [0, 2, 1]),
    # K=5 steps from 3 to 5 at once: the gap of 2 takes the image with 2
    ([1, 2, 1, 1, 1], 5, [0, 2, 3, 1]),
    # every image holds more than K: one image, the first with the fewest ...
    ([4, 3, 3], 1, [1]),
    ([4, 3, 3], 3, [1]),
    # ... and K outside the series 1, 2, 3, 5, 10, ... is not nested with K - 1
    ([4, 3, 3], 6, [1, 2]),
    ([4, 3, 3], 7, [1, 0]),
    # the fewest (4, not in the series) is a step of every larger K: nested
    ([4, 6, 4], 1, [0]),
    ([4, 6, 4], 5, [0]),
    ([4, 6, 4], 10, [0, 1]),
    ([], 5, []),
])
def test_fill_to_hand_worked(counts, shots, expected):
    assert fewshot.fill_to(counts, shots) == expected


# ---------------------------------------------------------------------------------------
# sample_kshot against independent counts
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_kshot_sets_follow_the_rule(data_seed):
    images = _annotations(data_seed)
    classes = ["a", "b", "c", "dense"]
    by_id = {image.image_id: image for image in images}
    counts = {name: _shot_counts(images, name) for name in classes}
    for seed in (0, 7):
        sets = {shots: fewshot.sample_kshot(images, classes, shots, seed)
                for shots in range(1, 13)}
        for shots, kset in sets.items():
            for name in classes:
                ids = _taken_ids(kset, name)
                assert len(ids) == len(set(ids))            # an image once per class
                for image, objects in kset.draws[name].images:
                    # only the class's shots, all of them, untouched
                    expected = [obj for obj in image.objects if obj.name == name
                                and not obj.difficult and np.all(np.isfinite(obj.box))
                                and obj.box[2] > obj.box[0] and obj.box[3] > obj.box[1]]
                    assert sorted(id(o) for o in objects) == sorted(id(o) for o in expected)
                total = sum(counts[name][i] for i in ids)
                assert total == kset.draws[name].instances
                holding = [i for i, n in counts[name].items() if n > 0]
                fewest = min(counts[name][i] for i in holding)
                if fewest > shots:
                    # every image overshoots: one image with the fewest shots
                    assert len(ids) == 1 and total == fewest
                else:
                    assert total <= shots
                    if total < shots:
                        # brute force: no image left could have filled the gap ...
                        left = [i for i in holding if i not in ids]
                        assert all(counts[name][i] > shots - total for i in left), name
                        assert kset.problems()
                    # ... and with K single-shot images it is always exactly K
                    if sum(counts[name][i] == 1 for i in holding) >= shots:
                        assert total == shots
                # the draw order is the documented permutation: the first image taken
                # at target 1 is the first image in that order holding one shot
                order = sorted(holding)
                rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                order = [order[i] for i in rng.permutation(len(order))]
                singles = [i for i in order if counts[name][i] == 1]
                if singles:
                    assert ids[0] == singles[0]
                # difficult objects of the class in the drawn images are counted
                assert kset.draws[name].difficult_dropped == sum(
                    1 for i in ids for obj in by_id[i].objects
                    if obj.name == name and obj.difficult)
        # nested along the series: the set of K is a prefix of every larger K's
        for small in (1, 2, 3, 5, 10):
            for large in range(small + 1, 13):
                for name in classes:
                    before = _taken_ids(sets[small], name)
                    assert _taken_ids(sets[large], name)[:len(before)] == before


def test_kshot_is_seeded_and_per_class():
    images = _annotations(3)
    first = fewshot.sample_kshot(images, ["a", "b", "c"], 5, 0)
    again = fewshot.sample_kshot(list(reversed(images)), ["a", "b", "c"], 5, 0)
    other = fewshot.sample_kshot(images, ["a", "b", "c"], 5, 1)
    for name in "abc":
        assert _taken_ids(first, name) == _taken_ids(again, name)   # input order is moot
        assert _taken_ids(first, name) != _taken_ids(other, name)
    # a class's draw does not depend on which other classes are sampled
    alone = fewshot.sample_kshot(images, ["b"], 5, 0)
    assert _taken_ids(alone, "b") == _taken_ids(first, "b")


def test_shortfall_and_overshoot_are_explained():
    def image(image_id, names):
        return annotation.ImageAnnotation(
            image_id=image_id, filename=f"{image_id}.jpg", image_path=None, source="x",
            objects=[annotation.ObjectAnnotation(name, (0, 0, 5, 5), index=k)
                     for k, name in enumerate(names)])
    images = [image(1, ["dense"] * 3 + ["rare"]), image(2, ["dense"] * 4),
              image(3, ["hard"]), image(4, ["rare"])]
    images[2].objects[0].difficult = True
    kset = fewshot.sample_kshot(images, ["dense", "rare", "hard"], 2, 0)
    assert kset.counts() == {"dense": 3, "rare": 2, "hard": 0}
    assert kset.problems() == [
        "class 'dense': 3 instances for K=2 (every image holding it has at least 3; one "
        "image taken so the class is present)",
        "class 'hard': 0 of 2 instances (no usable, non-difficult instance in the "
        "annotations)"]
    kset = fewshot.sample_kshot(images, ["rare"], 3, 0)
    assert kset.problems() == ["class 'rare': only 2 of 3 instances taken: the "
                               "annotations hold no more"]
    kset = fewshot.sample_kshot(images, ["dense"], 5, 0)
    assert kset.problems() == ["class 'dense': only 3 of 5 instances taken (7 in 2 "
                               "images, but no image left holds 2 or fewer)"]
    for shots, seed in ((0, 0), (2, -1), (True, 0), (2.5, 0)):
        with pytest.raises(fewshot.FewShotError, match="must be a"):
            fewshot.sample_kshot(images, ["rare"], shots, seed)


def test_kshot_records_one_per_class_and_image():
    images = _annotations(4, num_images=20)
    kset = fewshot.sample_kshot(images, ["a", "b"], 3, 0)
    records = fewshot.kshot_records(kset)
    assert [r.image_id for r in records] == list(range(1, len(records) + 1))
    pairs = [(name, image.image_id) for name in ("a", "b")
             for image, _ in kset.draws[name].images]
    assert len(records) == len(pairs)
    by_id = {image.image_id: image for image in images}
    for record, (name, source_id) in zip(records, pairs):
        assert {obj.name for obj in record.objects} == {name}
        assert record.filename == by_id[source_id].filename
    # the sources are not modified
    assert sum(len(image.objects) for image in images) == sum(
        len(image.objects) for image in _annotations(4, num_images=20))


def test_kshot_records_can_keep_the_other_objects_as_ignore_regions():
    images = _annotations(4, num_images=20)
    kset = fewshot.sample_kshot(images, ["a", "b"], 3, 0)
    plain = fewshot.kshot_records(kset)
    kept = fewshot.kshot_records(kset, others_as_ignore=True)
    sources = [image for name in ("a", "b") for image, _ in kset.draws[name].images]
    assert len(kept) == len(plain) == len(sources)
    for record, shots_only, source in zip(kept, plain, sources):
        # the shots first, unchanged; then every other object of the image, ignored
        assert record.objects[:len(shots_only.objects)] == shots_only.objects
        others = record.objects[len(shots_only.objects):]
        assert len(record.objects) == len(source.objects)
        assert all(obj.ignore and obj.difficult for obj in others)
        assert not any(obj.ignore for obj in shots_only.objects)
        assert sorted((o.name, o.box) for o in record.objects) == sorted(
            (o.name, o.box) for o in source.objects)
    assert not any(obj.ignore for image in images for obj in image.objects)


def test_remove_classes_for_base_training():
    images = _annotations(5, num_images=30)
    images.append(annotation.ImageAnnotation(image_id=99, filename="empty.jpg",
                                             image_path=None, source="empty.xml"))
    kept, stats = fewshot.remove_classes(images, ["c"])
    only_c = [image.image_id for image in images
              if image.objects and all(obj.name == "c" for obj in image.objects)]
    assert stats["images_only_novel"] == len(only_c)
    assert stats["boxes_removed"] == {"c": sum(obj.name == "c" for image in images
                                               for obj in image.objects)}
    assert [image.image_id for image in kept] == [
        image.image_id for image in images if image.image_id not in only_c]
    originals = {image.image_id: image for image in images}
    for image in kept:   # the other objects, identical and in order; difficult kept too
        assert image.objects == [obj for obj in originals[image.image_id].objects
                                 if obj.name != "c"]
    assert any(obj.name == "c" for image in images for obj in image.objects)  # untouched


# ---------------------------------------------------------------------------------------
# Class lists, id mapping, bAP / nAP
# ---------------------------------------------------------------------------------------

def test_class_order_and_novel_split(tmp_path):
    assert fewshot.class_order(["b", "a"]) == ["a", "b"]
    assert fewshot.class_order(["b", "a"], classes=["b", "c", "a"]) == ["b", "c", "a"]
    label_map.write_label_map(str(tmp_path / "lm.json"), label_map.LabelMap(["z", "a"]))
    assert fewshot.class_order(["a"], label_map=str(tmp_path / "lm.json")) == ["z", "a"]
    with pytest.raises(fewshot.FewShotError, match="not both"):
        fewshot.class_order(["a"], classes=["a"], label_map=str(tmp_path / "lm.json"))
    with pytest.raises(fewshot.FewShotError, match="duplicate class names: a"):
        fewshot.class_order([], classes=["a", "a"])
    assert base_novel.split_base_novel(["x", "n1", "y", "n2"], ["n2", "n1"]) == (
        ["x", "y"], ["n1", "n2"])
    with pytest.raises(base_novel.UnknownClassError) as error:
        base_novel.split_base_novel(["x", "y"], ["y", "zz"])
    assert str(error.value) == "--novel_classes: unknown class(es) 'zz'; known: x, y"


def test_id_mapping_by_name():
    base = label_map.LabelMap(["open", "mousebite", "copper"])
    full = label_map.LabelMap(["copper", "short", "open", "spur", "mousebite"])
    assert label_map.id_mapping(base, full) == {1: 3, 2: 5, 3: 1}
    assert label_map.id_mapping(["open", "copper"], full.class_names) == {1: 3, 2: 1}
    assert label_map.id_mapping(full, full) == {i: i for i in range(1, 6)}
    with pytest.raises(label_map.LabelMapError) as error:
        label_map.id_mapping(full, base)
    assert str(error.value) == ("class(es) 'short', 'spur' not in the target label map "
                                "(open, mousebite, copper)")


def test_base_novel_ap_means_and_table():
    classes = ["a", "b", "c", "d", "e"]
    results = {"voc/AP@0.5/a": 0.9, "voc/AP@0.5/b": 0.5, "voc/AP@0.5/c": 0.2,
               "voc/AP@0.5/d": NAN, "voc/AP@0.5/e": 0.4, "voc/mAP@0.5": 0.5}
    values = base_novel.base_novel_ap(results, classes, ["c", "d", "e"])
    assert values[base_novel.BASE_AP] == pytest.approx((0.9 + 0.5) / 2)
    assert values[base_novel.NOVEL_AP] == pytest.approx((0.2 + 0.4) / 2)   # d: no GT
    only_nan = base_novel.base_novel_ap(results, classes, ["d"])
    assert math.isnan(only_nan[base_novel.NOVEL_AP])
    assert only_nan[base_novel.BASE_AP] == pytest.approx((0.9 + 0.5 + 0.2 + 0.4) / 4)
    with pytest.raises(base_novel.UnknownClassError, match="known: a, b, c, d, e"):
        base_novel.base_novel_ap(results, classes, ["f"])

    table = format_table(results, classes, novel_classes=["c", "d", "e"])
    lines = table.splitlines()
    assert lines[0].endswith("  set")
    assert lines[2].endswith("0.9000  base") and lines[4].endswith("0.2000  novel")
    assert "bAP50 (2/2 base classes with ground truth): 0.7000" in lines
    assert "nAP50 (2/3 novel classes with ground truth): 0.3000" in lines
    assert "set" not in format_table(results, classes).splitlines()[0]


def test_mean_ap_is_the_evaluator_map():
    evaluator = DetectionEvaluator(["a", "b", "c"])
    evaluator.add_ground_truth(1, [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    evaluator.add_detections(1, [[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [1, 2])
    results = evaluator.evaluate()
    assert base_novel.mean_ap(results, ["a", "b", "c"]) == results["voc/mAP@0.5"] == 0.5
    assert base_novel.base_novel_ap(results, ["a", "b", "c"], ["b", "c"]) == {
        base_novel.BASE_AP: 1.0, base_novel.NOVEL_AP: 0.0}


# ---------------------------------------------------------------------------------------
# crop_instances
# ---------------------------------------------------------------------------------------

def test_crop_instances_crops_exactly_the_given_objects(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "im.png"), pixels)
    inside = annotation.ObjectAnnotation("a", (5.0, 6.0, 15.0, 26.0), index=0)
    outside = annotation.ObjectAnnotation("b", (30.0, -4.0, 48.0, 10.0), index=3)
    tiny = annotation.ObjectAnnotation("a", (1.0, 1.0, 3.0, 3.0), index=4)
    image = annotation.ImageAnnotation(1, "im.png", str(tmp_path / "im.png"), "im.xml",
                                       objects=[inside, outside, tiny])
    out = str(tmp_path / "refs")
    summary = reference_set.crop_instances({"a": [(image, inside), (image, tiny)],
                                            "b": [(image, outside)]}, out, margin=0.0,
                                           progress_every_seconds=1e9)
    assert summary["classes"] == {"a": 2, "b": 1}
    assert summary["files"] == ["a/im_0.png", "a/im_4.png", "b/im_3.png"]
    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    expected = {"a/im_0.png": rgb[5:15, 6:26], "a/im_4.png": rgb[1:3, 1:3],
                "b/im_3.png": rgb[30:40, 0:10]}   # clipped to the image, not skipped
    for relative, crop in expected.items():
        written = cv2.cvtColor(cv2.imread(os.path.join(out, relative)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(written, crop)
    with open(os.path.join(out, reference_set.MANIFEST)) as handle:
        assert json.load(handle)["per_class"] == {"a": 2, "b": 1}


# ---------------------------------------------------------------------------------------
# The tool, through its command line, on the generated sample data
# ---------------------------------------------------------------------------------------

def _tool(sample_data, *args, split="train"):
    voc = sample_data["voc_dir"]
    return subprocess.run(
        [sys.executable, TOOL, "--format", "voc",
         "--image_dir", os.path.join(voc, "JPEGImages"),
         "--annotations", os.path.join(voc, "Annotations"),
         "--split_file", os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _records(data_dir, split):
    records = []
    for path in sorted(os.listdir(data_dir)):
        if tfrecord_format.is_shard_of(path, split):
            for raw in tf.io.tf_record_iterator(os.path.join(data_dir, path)):
                records.append(tfrecord_format.decode_example(raw))
    return records


def _sample_annotations(sample_data, split="train"):
    voc = sample_data["voc_dir"]
    images, _ = convert.read_annotations(
        "voc", os.path.join(voc, "JPEGImages"), os.path.join(voc, "Annotations"),
        os.path.join(voc, "ImageSets", "Main", f"{split}.txt"))
    return {image.filename: image for image in images}


def _tree_bytes(directory):
    found = {}
    for base, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(base, name), "rb") as handle:
                found[os.path.relpath(os.path.join(base, name), directory)] = handle.read()
    return found


def test_kshot_tool_end_to_end(sample_data, tmp_path):
    out = str(tmp_path / "k2")
    val = os.path.join(sample_data["voc_dir"], "ImageSets", "Main", "val.txt")
    done = _tool(sample_data, "--novel_classes", "crystal", "--shots", "2", "--seed", "0",
                 "--val_split_file", val, "--output_dir", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2-shot set, seed 0" in done.stdout
    assert sorted(os.listdir(out)) == ["data", "kshot.json", "references"]
    labels = label_map.read_label_map(os.path.join(out, "data"))
    assert labels.class_names == ["cell", "crystal"]          # all classes, sorted
    assert set(labels.splits) == {"train", "val"}
    with open(os.path.join(out, "kshot.json")) as handle:
        manifest = json.load(handle)
    assert (manifest["shots"], manifest["seed"]) == (2, 0)
    assert manifest["novel_classes"] == ["crystal"] and manifest["base_classes"] == ["cell"]

    annotations = _sample_annotations(sample_data)
    records = {r["image_id"]: r for r in _records(os.path.join(out, "data"), "train")}
    assert len(records) == manifest["records"]
    crops = []
    for name in ("cell", "crystal"):
        entry = manifest["per_class"][name]
        assert entry["instances"] == entry["written"] == entry["references"] == 2
        assert sum(len(image["boxes"]) for image in entry["images"]) == 2
        for image in entry["images"]:
            record = records[image["record_id"]]
            source = annotations[image["filename"]]
            assert record["filename"].decode() == image["filename"]
            # the record holds this class's boxes of the source image, and only them
            expected = [obj.box for obj in source.objects if obj.name == name]
            np.testing.assert_array_equal(record["boxes"], np.float32(expected))
            assert image["boxes"] == [list(box) for box in expected]
            assert record["labels"].tolist() == [labels.id_of(name)] * len(expected)
            stem = image["filename"][:-4]
            crops += [f"{name}/{stem}_{index}.png" for index in image["objects"]]
    assert sorted(_tree_bytes(os.path.join(out, "references"))) == sorted(
        crops + ["references.json"])
    val_records = _records(os.path.join(out, "data"), "val")
    assert len(val_records) == labels.splits["val"]["num_images"] > 0

    # the same command gives the same bytes
    before = _tree_bytes(out)
    again = _tool(sample_data, "--novel_classes", "crystal", "--shots", "2", "--seed", "0",
                  "--val_split_file", val, "--output_dir", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _tree_bytes(out) == before

    # --others_as_ignore: the same shots, and every other object as an ignore region
    ignoring = str(tmp_path / "k2_ignore")
    done = _tool(sample_data, "--novel_classes", "crystal", "--shots", "2", "--seed", "0",
                 "--others_as_ignore", "--output_dir", ignoring)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(os.path.join(ignoring, "kshot.json")) as handle:
        assert json.load(handle)["per_class"] == manifest["per_class"]
    ignored = 0
    for record in _records(os.path.join(ignoring, "data"), "train"):
        source = annotations[record["filename"].decode()]
        assert len(record["boxes"]) == len(source.objects)
        shots = records[record["image_id"]]
        np.testing.assert_array_equal(record["boxes"][:len(shots["boxes"])], shots["boxes"])
        assert record["ignore"].tolist() == [0] * len(shots["boxes"]) + [1] * (
            len(source.objects) - len(shots["boxes"]))
        ignored += len(source.objects) - len(shots["boxes"])
    assert ignored > 0 and f"{ignored} ignore regions" in done.stdout

    # a class order given by an existing label map; more shots than the data hold
    other = str(tmp_path / "k50")
    os.makedirs(os.path.join(other, "data"))
    label_map.write_label_map(os.path.join(other, "data", "label_map.json"),
                              label_map.LabelMap(["crystal", "cell"]))
    many = _tool(sample_data, "--shots", "50", "--label_map",
                 os.path.join(other, "data"), "--output_dir", other)
    assert many.returncode == 0, many.stderr[-2000:]
    assert label_map.read_label_map(os.path.join(other, "data")).class_names == [
        "crystal", "cell"]
    total = {name: sum(obj.name == name for image in annotations.values()
                       for obj in image.objects) for name in ("cell", "crystal")}
    for name in ("cell", "crystal"):
        assert (f"class {name!r}: only {total[name]} of 50 instances taken: the "
                f"annotations hold no more") in many.stderr


def test_base_tool_end_to_end(sample_data, tmp_path):
    out = str(tmp_path / "base")
    done = _tool(sample_data, "--novel_classes", "crystal", "--base_only",
                 "--output_dir", out)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = label_map.read_label_map(os.path.join(out, "data"))
    assert labels.class_names == ["cell"]
    annotations = _sample_annotations(sample_data)
    only_crystal = [f for f, image in annotations.items()
                    if image.objects and all(o.name == "crystal" for o in image.objects)]
    with open(os.path.join(out, "base.json")) as handle:
        manifest = json.load(handle)
    assert manifest["images_only_novel"] == len(only_crystal)
    assert manifest["boxes_removed"] == {"crystal": sum(
        o.name == "crystal" for image in annotations.values() for o in image.objects)}
    assert f"{len(only_crystal)} images skipped (only novel objects)" in done.stdout
    records = _records(os.path.join(out, "data"), "train")
    assert sorted(r["filename"].decode() for r in records) == sorted(
        f for f, image in annotations.items()
        if any(o.name == "cell" for o in image.objects))
    for record in records:
        source = annotations[record["filename"].decode()]
        np.testing.assert_array_equal(
            record["boxes"], np.float32([o.box for o in source.objects if o.name == "cell"]))
        assert set(record["labels"].tolist()) == {1}
    assert not os.path.exists(os.path.join(out, "references"))


@pytest.mark.parametrize("args, code, message", [
    (["--novel_classes", "crystl", "--shots", "2"], 1,
     "error: --novel_classes: unknown class(es) 'crystl'; known: cell, crystal"),
    (["--shots", "0"], 1, "error: --shots must be a positive integer, got 0"),
    (["--shots", "2", "--seed", "-3"], 1,
     "error: --seed must be a non-negative integer, got -3"),
    ([], 2, "error: --shots is required (or --base_only for base-training data)"),
    (["--base_only"], 2, "error: --novel_classes is required with --base_only"),
    (["--base_only", "--novel_classes", "crystal", "--shots", "2"], 2,
     "error: --shots does not apply to --base_only (base data keeps every image)"),
    (["--base_only", "--novel_classes", "cell,crystal"], 1,
     "error: --novel_classes lists every class (cell, crystal); no base class is left"),
    (["--shots", "2", "--classes", "cell", "--label_map", "x"], 1,
     "error: give --classes or --label_map, not both"),
    (["--shots", "2", "--val_split_file", "/no/val.txt"], 1,
     "error: --val_split_file /no/val.txt: no such file"),
    (["--shots", "2", "--label_map", "/no/data"], 1,
     "error: /no/data: no label map (convert a dataset first)"),
])
def test_tool_errors_are_one_line(sample_data, tmp_path, args, code, message):
    out = str(tmp_path / "out")
    done = _tool(sample_data, *args, "--output_dir", out)
    assert done.returncode == code
    assert done.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in done.stderr
    assert not os.path.exists(out)                      # nothing written


def test_tool_refuses_a_data_dir_with_other_classes(sample_data, tmp_path):
    out = str(tmp_path / "out")
    base = _tool(sample_data, "--novel_classes", "crystal", "--base_only",
                 "--output_dir", out)
    assert base.returncode == 0, base.stderr[-2000:]
    before = _tree_bytes(out)
    kshot = _tool(sample_data, "--shots", "1", "--output_dir", out)
    assert kshot.returncode == 1
    path = os.path.join(out, "data", "label_map.json")
    assert kshot.stderr.strip().splitlines()[-1] == (
        f"error: {path} lists classes ['cell'], this split needs ['cell', 'crystal']; "
        f"use another --output_dir")
    assert _tree_bytes(out) == before


def test_eval_rejects_unknown_novel_classes_in_one_line(sample_data, tmp_path):
    # Checked before any checkpoint is looked for: the run directory does not exist.
    done = subprocess.run(
        [sys.executable, EVAL, "--cfg", TINY, "--data_dir", sample_data["data_dir"],
         "--reference_dir", sample_data["reference_dir"],
         "--model_dir", str(tmp_path / "none"), "--novel_classes", "crystal,plasma"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --novel_classes: unknown class(es) 'plasma'; known: cell, crystal")
