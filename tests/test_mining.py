"""Mining a new class's unlabelled objects (libs/mining): the verifier's rule on hand-made
feature banks, and the frozen feature space against an independent computation and on
the generated sample's classes."""
import os

import cv2
import numpy as np
import pytest

from data.io import convert, reference_set
from data.sample.generate import generate_voc_dataset
from libs.base.tf_compat import seeded_graph, tf
from libs.configs import load_config
from libs.mining import verify
from libs.mining.embedding import CropEmbedder
from libs.model import backbones, preprocessing
from tests.conftest import REPO_ROOT

OWN_DATA = os.path.join(REPO_ROOT, "cfgs", "own_data.py")


def _cfg(**overrides):
    return load_config(os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py"), overrides)


def _unit(*rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _bank():
    # Two references of "spore" along x, base "cell" along y, background along z.
    return verify.FeatureBank.build({
        "spore": _unit([1, 0.1, 0], [1, -0.1, 0]),
        "cell": _unit([0.1, 1, 0], [0, 1, 0.1], [-0.1, 1, 0]),
        verify.BACKGROUND: _unit([0, 0, 1], [0.1, 0, 1], [0, 0.1, 1], [0.2, 0.2, 1]),
    })


def test_verdicts_follow_the_nearest_neighbours_vote():
    cfg = _cfg(MINE_NEIGHBOURS=5, MINE_ACCEPT_VOTE=0.6, MINE_REJECT_VOTE=0.2,
               MINE_ACCEPT_SCORE=0.5)
    bank = _bank()
    # k = min(5, two references) = 2
    near_spore, near_cell, between = _unit([1, 0, 0], [0, 1, 0], [1, 0.05, 0.9])
    got = verify.verify(["spore"] * 4, [0.9, 0.9, 0.3, 0.9],
                        [near_spore, near_cell, near_spore, between], bank, cfg)
    assert [v.decision for v in got] == [verify.ACCEPTED, verify.REJECTED, verify.DOUBTFUL,
                                         verify.DOUBTFUL]
    assert [v.vote for v in got] == [1.0, 0.0, 1.0, 0.5]
    assert got[0].neighbours == ["spore", "spore"] and got[1].neighbours == ["cell", "cell"]
    # between: a background crop (cosine 0.79), then a spore reference (0.74)
    assert got[3].neighbours == [verify.BACKGROUND, "spore"]
    np.testing.assert_allclose([v.confidence for v in got],
                               np.sqrt([0.9, 0.0, 0.3, 0.45]), rtol=1e-6)


def test_nearest_labels_by_cosine_with_ties_to_the_earlier_entry():
    bank = verify.FeatureBank(np.array([[1, 0], [1, 0], [0, 1]], np.float32),
                              np.array(["b", "a", "c"], object))
    assert verify.nearest_labels([1, 0], bank, 2) == ["b", "a"]
    assert verify.nearest_labels([0.6, 0.8], bank, 3) == ["c", "b", "a"]


def test_a_class_without_references_or_an_empty_bank_is_an_error():
    with pytest.raises(ValueError, match="no reference of class 'short'"):
        verify.verify_one("short", 0.9, _unit([1, 0, 0])[0], _bank(), _cfg())
    with pytest.raises(ValueError, match="empty"):
        verify.FeatureBank.build({"a": np.zeros([0, 3])})


def _save_random_backbone(cfg, prefix):
    with seeded_graph(3).as_default():
        backbones.build_backbone(cfg.NET_NAME, tf.zeros([1, 64, 64, 3]))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            return tf.train.Saver().save(sess, prefix)


def test_embedding_pools_the_checkpoint_backbone_as_numpy_does(tmp_path):
    cfg = _cfg()
    checkpoint = _save_random_backbone(cfg, str(tmp_path / "backbone"))
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, size, dtype=np.uint8)
             for size in [(40, 30, 3), (64, 64, 3), (17, 90, 3)]]
    with CropEmbedder(cfg, checkpoint, side=64) as embed:
        got = embed(crops)
        alone = embed(crops[1:2])
        assert embed([]).shape == (0, got.shape[1])
    # Independently: the same weights restored by name, the maps pooled in numpy.
    resized = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_LINEAR)
                        for c in crops])
    with seeded_graph().as_default():
        levels = backbones.build_backbone(cfg.NET_NAME, preprocessing.normalize_pixels(
            tf.constant(resized), cfg.PIXEL_MEANS, cfg.PIXEL_STD))
        with tf.Session() as sess:
            tf.train.Saver().restore(sess, checkpoint)
            c4, c5 = sess.run([levels["C4"], levels["C5"]])

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    want = unit(np.concatenate([unit(c4.mean(axis=(1, 2))), unit(c5.mean(axis=(1, 2)))], 1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone[0], got[1], rtol=1e-4, atol=1e-5)


def test_imagenet_features_tell_the_sample_classes_apart(tmp_path, imported_lite0):
    # The verifier's premise on data the repo generates: in the ImageNet space, a crop's
    # nearest other crop is of its own class (leave one out), for the three shapes.
    voc = str(tmp_path / "voc")
    generate_voc_dataset(voc, num_train=12, num_val=0, seed=4,
                         classes=("cell", "crystal", "spore"))
    images, _ = convert.read_annotations("voc", os.path.join(voc, "JPEGImages"),
                                         os.path.join(voc, "Annotations"))
    crops, labels = [], []
    for image in images:
        rgb = cv2.cvtColor(cv2.imread(image.image_path), cv2.COLOR_BGR2RGB)
        for obj in image.objects:
            crops.append(reference_set.crop_with_margin(rgb, obj.box, 0.1))
            labels.append(obj.name)
    cfg = load_config(OWN_DATA)
    with CropEmbedder(cfg, imported_lite0[0], side=96) as embed:
        features = embed(crops)
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.asarray(labels)[similarity.argmax(axis=1)]
    accuracy = float((nearest == np.asarray(labels)).mean())
    assert len(set(labels)) == 3 and len(labels) >= 20
    assert accuracy >= 0.9, accuracy


def _candidate(index, filename, name, score, box, decision, size=(100, 200)):
    from data.io.mining import Candidate
    return Candidate(index, filename, name, score, box, size[0], size[1],
                     verify.Verdict(decision, 1.0, [name], score))


@pytest.fixture
def labelled(tmp_path):
    """Two labelled sample images (VOC) and two candidates per decision on them."""
    voc = str(tmp_path / "voc")
    generate_voc_dataset(voc, num_train=2, num_val=0, seed=1)
    images, _ = convert.read_annotations("voc", os.path.join(voc, "JPEGImages"),
                                         os.path.join(voc, "Annotations"))
    height, width = images[0].annotated_size
    candidates = [
        _candidate(0, images[0].filename, "spore", 0.9, (10, 20, 30, 50), verify.ACCEPTED,
                   (height, width)),
        _candidate(0, images[0].filename, "spore", 0.4, (40, 5, 60, 25), verify.DOUBTFUL,
                   (height, width)),
        _candidate(1, images[1].filename, "spore", 0.3, (1, 1, 9, 9), verify.REJECTED),
    ]
    return voc, images, candidates


def test_mined_voc_labels_convert_to_labels_and_ignore_regions(labelled, tmp_path):
    from data.io import mined_labels
    voc, images, candidates = labelled
    target = mined_labels.annotations_target("voc", str(tmp_path / "mined"))
    written = mined_labels.write_annotations("voc", os.path.join(voc, "Annotations"), images,
                                        candidates, target)
    assert written == {verify.ACCEPTED: 1, verify.DOUBTFUL: 1}
    again, names = convert.read_annotations("voc", os.path.join(voc, "JPEGImages"), target)
    assert "spore" in names and len(again) == len(images)
    before = [(o.name, o.box) for o in images[0].objects]
    after = [(o.name, o.box, o.ignore) for o in again[0].objects]
    assert [a[:2] for a in after[:len(before)]] == before          # the labels kept
    assert after[len(before):] == [("spore", (10, 20, 30, 50), False),
                                   ("spore", (40, 5, 60, 25), True)]
    assert [(o.name, o.box) for o in again[1].objects] == \
        [(o.name, o.box) for o in images[1].objects]                 # rejected: nothing
    # The input is untouched, and a second run needs --overwrite.
    assert len(convert.read_annotations("voc", os.path.join(voc, "JPEGImages"),
                                        os.path.join(voc, "Annotations"))[0][0].objects) \
        == len(before)
    with pytest.raises(convert.annotation.ConversionError, match="exists"):
        mined_labels.annotations_target("voc", str(tmp_path / "mined"))
    with pytest.raises(convert.annotation.ConversionError, match="VOC or COCO"):
        mined_labels.annotations_target("yolo", str(tmp_path / "other"))


def test_mined_coco_labels_add_a_category_and_crowds(labelled, tmp_path):
    import json

    from data.io import mined_labels
    voc, images, candidates = labelled
    coco = {"images": [{"id": image.image_id, "file_name": image.filename,
                        "height": image.annotated_size[0], "width": image.annotated_size[1]}
                       for image in images],
            "categories": [{"id": 3, "name": "cell"}, {"id": 7, "name": "crystal"}],
            "annotations": [{"id": 5, "image_id": images[0].image_id, "category_id": 3,
                             "bbox": [1, 2, 3, 4], "iscrowd": 0}]}
    source = tmp_path / "coco.json"
    source.write_text(json.dumps(coco))
    coco_images, _ = convert.read_annotations("coco", os.path.join(voc, "JPEGImages"),
                                              str(source))
    target = mined_labels.annotations_target("coco", str(tmp_path / "mined"))
    mined_labels.write_annotations("coco", str(source), coco_images, candidates, target)
    out = json.loads(open(target).read())
    assert out["categories"][-1] == {"id": 8, "name": "spore"}
    added = out["annotations"][1:]
    assert [(a["id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in added] == [
        (6, 8, [20.0, 10.0, 30.0, 20.0], 0), (7, 8, [5.0, 40.0, 20.0, 20.0], 1)]
    again, _ = convert.read_annotations("coco", os.path.join(voc, "JPEGImages"), target)
    spores = [o for o in again[0].objects if o.name == "spore"]
    assert [(o.box, o.ignore) for o in spores] == [((10, 20, 30, 50), False),
                                                   ((40, 5, 60, 25), True)]


def test_label_studio_tasks_hold_the_candidates_in_percent_top_left(labelled):
    from data.io import mined_labels
    _, images, candidates = labelled
    height, width = images[0].annotated_size
    (task,) = mined_labels.label_studio_tasks(candidates, "base@model.ckpt-9", "/data/?d=")
    assert task["data"]["image"] == "/data/?d=" + images[0].filename
    prediction = task["predictions"][0]
    assert prediction["model_version"] == "base@model.ckpt-9" and prediction["score"] == 0.9
    first, second = prediction["result"]
    assert first["type"] == "rectanglelabels" and first["to_name"] == "image"
    assert (first["original_width"], first["original_height"]) == (width, height)
    value = first["value"]
    np.testing.assert_allclose([value["x"], value["y"], value["width"], value["height"]],
                               [100 * 20 / width, 100 * 10 / height, 100 * 30 / width,
                                100 * 20 / height])
    assert value["rectanglelabels"] == ["spore"] and second["meta"]["text"] == ["doubtful"]


def _run_tool(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "mine_labels.py"),
                           *args], capture_output=True, text=True, cwd=REPO_ROOT)


def test_mine_labels_writes_what_the_verifier_decided(sample_data, imported_lite0, tmp_path):
    # The plumbing, end to end on a barely trained model (its detections are nearly
    # random, so every decision occurs): each verdict follows the rule, the annotations
    # are the input's plus the accepted and doubtful boxes, the input is untouched.
    import json

    from conftest import snapshot_tree

    from bench.new_class_sample import strip_class
    from data.io.dataset import open_run
    from libs.train import training

    sets = {"BACKBONE_CHECKPOINT": imported_lite0[0], "NUM_CLASS": 3}
    cfg = load_config(os.path.join(REPO_ROOT, "cfgs", "tiny_fewshot.py"), sets)
    model_dir = str(tmp_path / "model")
    training.train(open_run(cfg, sample_data["data_dir"], sample_data["reference_dir"],
                            model_dir), max_steps=2)
    voc = str(tmp_path / "voc")
    generate_voc_dataset(voc, num_train=6, num_val=0, seed=5,
                         classes=("cell", "crystal", "spore"))
    hidden = strip_class(voc, "spore")
    assert sum(len(boxes) for boxes in hidden.values()) > 0
    images, _ = convert.read_annotations("voc", os.path.join(voc, "JPEGImages"),
                                         os.path.join(voc, "Annotations"))
    references = str(tmp_path / "references")
    reference_set.crop_references(images, references, per_class=3)      # cell, crystal
    full = str(tmp_path / "full")
    generate_voc_dataset(full, num_train=6, num_val=0, seed=6, classes=("spore",))
    spores, _ = convert.read_annotations("voc", os.path.join(full, "JPEGImages"),
                                         os.path.join(full, "Annotations"))
    reference_set.crop_references(spores, str(tmp_path / "spores"), per_class=3)
    os.rename(str(tmp_path / "spores" / "spore"), os.path.join(references, "spore"))
    before = snapshot_tree(voc)
    out = str(tmp_path / "mined")
    args = ["--cfg", os.path.join(REPO_ROOT, "cfgs", "tiny_fewshot.py"),
            "--model_dir", model_dir, "--data_dir", sample_data["data_dir"],
            "--reference_dir", references, "--new_classes", "spore", "--format", "voc",
            "--image_dir", os.path.join(voc, "JPEGImages"),
            "--annotations", os.path.join(voc, "Annotations"), "--output_dir", out,
            *[f"--set={k}={v!r}" for k, v in sets.items()], "--set=MINE_MIN_SCORE=0.0",
            "--set=MINE_ACCEPT_SCORE=0.0", "--max_per_image", "8"]
    done = _run_tool(*args)
    assert done.returncode == 0, done.stderr
    assert "spore: " in done.stdout and "accepted" in done.stdout
    assert snapshot_tree(voc) == before
    ranked = json.load(open(os.path.join(out, "candidates.json")))
    rows = ranked["candidates"]
    assert rows and ranked["bank"]["spore"] == 3
    # (measured: 4 accepted, 3 doubtful, 41 rejected)
    assert {r["decision"] for r in rows} == {verify.ACCEPTED, verify.DOUBTFUL,
                                             verify.REJECTED}
    cfg = cfg.replace(MINE_MIN_SCORE=0.0, MINE_ACCEPT_SCORE=0.0)
    for row in rows:
        want = (verify.REJECTED if row["vote"] < cfg.MINE_REJECT_VOTE else
                verify.ACCEPTED if row["vote"] >= cfg.MINE_ACCEPT_VOTE else verify.DOUBTFUL)
        assert row["decision"] == want
    assert [r["confidence"] for r in rows] == sorted((r["confidence"] for r in rows),
                                                     reverse=True)
    per_image = {}
    for row in rows:
        per_image.setdefault(row["file"], []).append(row)
    assert max(len(found) for found in per_image.values()) <= 8
    mined, _ = convert.read_annotations("voc", os.path.join(voc, "JPEGImages"),
                                        os.path.join(out, "annotations"))
    for image, original in zip(mined, images):
        added = [(o.box, o.ignore) for o in image.objects if o.name == "spore"]
        want = sorted(((r["box"]["ymin"], r["box"]["xmin"], r["box"]["ymax"],
                        r["box"]["xmax"]), r["decision"] == verify.DOUBTFUL)
                      for r in per_image.get(image.filename, [])
                      if r["decision"] != verify.REJECTED)
        assert sorted(added) == want
        assert [(o.name, o.box) for o in image.objects if o.name != "spore"] == \
            [(o.name, o.box) for o in original.objects]
    tasks = json.load(open(os.path.join(out, "label_studio.json")))
    written = {r["file"] for r in rows if r["decision"] != verify.REJECTED}
    assert {t["data"]["image"] for t in tasks} == written
    # Again without --overwrite: one line, nothing replaced; an unknown class: one line.
    again = _run_tool(*args)
    assert again.returncode == 1 and "exists" in again.stderr.strip().splitlines()[-1]
    unknown = _run_tool(*[a if a != "spore" else "spores" for a in args])
    assert unknown.returncode == 1
    assert "--new_classes spores" in unknown.stderr.strip().splitlines()[-1]


def test_mining_is_scored_against_the_hidden_objects():
    from bench.new_class_sample import score_mining

    def row(file, decision, box):
        return {"file": file, "decision": decision,
                "box": dict(zip(("ymin", "xmin", "ymax", "xmax"), box))}

    hidden = {"a": [[0, 0, 10, 10], [20, 20, 30, 30]], "b": [[5, 5, 15, 15]]}
    rows = [row("a.jpg", "accepted", [0, 0, 10, 11]),       # object a0
            row("a.jpg", "accepted", [0, 0, 10, 9]),        # a0 again: not twice
            row("a.jpg", "doubtful", [20, 20, 30, 30]),     # a1
            row("a.jpg", "doubtful", [40, 40, 50, 50]),     # nothing
            row("sub/b.png", "rejected", [5, 5, 15, 15]),   # b0, rejected
            row("c.jpg", "accepted", [0, 0, 10, 10])]       # an image without hidden
    got = score_mining(rows, hidden)
    assert got["per_decision"] == {"accepted": (2, 3), "doubtful": (1, 2),
                                   "rejected": (1, 1)}
    assert got["hidden_objects"] == 3
    assert (got["recall_accepted"], got["recall_written"], got["recall_candidates"]) == \
        (1 / 3, 2 / 3, 1.0)


def test_the_simulated_reviewer_accepts_true_boxes_and_rejects_the_rest(tmp_path):
    from xml.etree import ElementTree

    from bench.new_class_sample import simulate_review

    def xml(objects):
        body = "".join(
            f"<object><name>{name}</name><difficult>0</difficult>"
            + ("<ignore>1</ignore>" if ignore else "")
            + f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
              f"<ymax>{y2}</ymax></bndbox></object>"
            for name, (y1, x1, y2, x2), ignore in objects)
        return f"<annotation><filename>a.jpg</filename>{body}</annotation>"

    mined = tmp_path / "mined" / "annotations"
    mined.mkdir(parents=True)
    # a cell label, an accepted spore (true), a doubtful spore (false), an accepted
    # spore never checked
    (mined / "a.xml").write_text(xml([("cell", (0, 0, 5, 5), False),
                                      ("spore", (10, 10, 20, 21), False),
                                      ("spore", (40, 40, 50, 50), True),
                                      ("spore", (60, 60, 70, 70), False)]))
    hidden = {"a": [[10, 10, 20, 20], [30, 30, 40, 40]]}

    def row(decision, box):
        return {"file": "a.jpg", "class": "spore", "decision": decision,
                "box": dict(zip(("ymin", "xmin", "ymax", "xmax"), box))}

    ranked = [row("accepted", [10, 10, 20, 21]), row("doubtful", [40, 40, 50, 50]),
              row("rejected", [30, 31, 40, 40]), row("accepted", [60, 60, 70, 70])]
    counts = simulate_review(str(tmp_path / "mined"), str(tmp_path / "r3"), ranked,
                             hidden, "spore", 3)
    assert counts == {"checked": 3, "accepted": 2, "rejected": 1}
    objects = [(o.find("name").text, [float(o.find("bndbox").find(k).text)
                                      for k in ("ymin", "xmin", "ymax", "xmax")],
                o.find("ignore") is not None)
               for o in ElementTree.parse(tmp_path / "r3" / "annotations" / "a.xml")
               .getroot().iter("object")]
    # the true ones with the true box (a rejected candidate found by the reviewer
    # too), the false doubtful one gone, the unchecked one as the miner wrote it
    assert sorted(objects) == sorted([("cell", [0, 0, 5, 5], False),
                                      ("spore", [10, 10, 20, 20], False),
                                      ("spore", [30, 30, 40, 40], False),
                                      ("spore", [60, 60, 70, 70], False)])
    # the miner's folder is untouched
    assert "<ignore>1</ignore>" in (mined / "a.xml").read_text()


def test_the_labelled_ceiling_restores_every_hidden_object(tmp_path):
    from bench.new_class_sample import _box_of, label_hidden, strip_class
    from xml.etree import ElementTree

    voc = str(tmp_path / "voc")
    generate_voc_dataset(voc, num_train=3, num_val=0, seed=2,
                         classes=("cell", "crystal", "spore"))

    def objects(folder):
        return {name: sorted((o.find("name").text, tuple(_box_of(o))) for o in
                             ElementTree.parse(os.path.join(folder, name)).getroot()
                             .iter("object"))
                for name in sorted(os.listdir(folder))}

    before = objects(os.path.join(voc, "Annotations"))
    hidden = strip_class(voc, "spore")
    assert sum(map(len, hidden.values())) > 0
    assert all(n != "spore" for rows in objects(os.path.join(voc, "Annotations")).values()
               for n, _ in rows)
    label_hidden(voc, str(tmp_path / "labelled"), hidden, "spore")
    assert objects(str(tmp_path / "labelled" / "annotations")) == before
