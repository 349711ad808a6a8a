"""Mining a new class's unlabelled objects (libs/mining): the verifier's rule on hand-made
feature banks, and the frozen feature space against an independent computation and on
the generated sample's classes."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from data.io import convert, reference_set
from data.io.mining import review_page
from data.sample.generate import generate_voc_dataset
from libs.base.tf_compat import seeded_graph, tf
from libs.configs import load_config
from libs.mining import verify
from libs.mining.embedding import CropEmbedder
from libs.model import backbones, preprocessing
from tests.conftest import REPO_ROOT, snapshot_tree

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


def test_background_crops_avoid_objects_candidates_and_confident_detections_only():
    from data.io.mining import candidates as mining

    cfg = _cfg(MINE_ACCEPT_SCORE=0.5)
    detections = {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                  "scores": [0.9, 0.5, 0.49], "class_names": ["cell", "spore", "cell"]}
    labelled, ignored = [(60, 60, 70, 70)], [(80, 80, 90, 90)]
    chosen = [("spore", 0.2, (100, 100, 110, 110))]
    avoid = mining.background_must_avoid(detections, labelled, ignored, chosen, cfg)
    # The two detections at or above 0.5; the one at 0.49 is free ground.
    assert sorted(avoid) == [(0, 0, 10, 10), (20, 20, 30, 30), (60, 60, 70, 70),
                             (80, 80, 90, 90), (100, 100, 110, 110)]
    rng = np.random.default_rng(0)
    boxes = mining.background_boxes(rng, 20, [(8, 8)], avoid, 120, 120)
    assert len(boxes) == 20
    for box in boxes:
        assert 0 <= box[0] and box[2] <= 120 and 0 <= box[1] and box[3] <= 120
        assert not mining._touches(box, avoid)


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
    from data.io.mining.candidates import Candidate
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


def test_a_tile_shows_the_box_with_its_size_again_around_it():
    assert review_page.tile_window((10, 20, 30, 50), 100, 200) == (0, 0, 50, 80)
    assert review_page.tile_window((40, 60, 50, 80), 100, 200) == (30, 40, 60, 100)
    assert review_page.tile_window((90, 190, 100, 200), 100, 200) == (80, 180, 100, 200)
    # A zero-size box on the corner still shows one pixel.
    assert review_page.tile_window((100, 200, 100, 200), 100, 200) == (99, 199, 100, 200)


def test_a_tile_draws_the_box_where_it_is_in_the_decision_colour():
    rgb = np.full((100, 200, 3), 128, np.uint8)
    candidate = _candidate(0, "a.png", "spore", 0.9, (40, 60, 50, 80), verify.DOUBTFUL)
    tile = review_page.draw_tile(rgb, candidate, side=120)
    # Window (30, 40, 60, 100): 30 x 60 scaled by 2 -> 60 x 120, centred (30 px above).
    # The box is rows 30 + 2 * (10, 20) = 50..70 and columns 2 * (20, 40) = 40..80.
    colour = np.array(review_page.COLOURS[verify.DOUBTFUL], np.uint8)
    drawn = np.all(tile == colour, axis=-1)
    rows, cols = np.nonzero(drawn)
    assert abs(rows.min() - 50) <= 1 and abs(rows.max() - 70) <= 1
    assert abs(cols.min() - 40) <= 1 and abs(cols.max() - 80) <= 1
    assert not drawn[55:66, 45:76].any()               # the inside is the image
    assert (tile[:29] == 200).all() and (tile[91:] == 200).all()   # the padding
    assert (tile[40, 10] == 128).all()


def test_the_review_page_shows_each_decision_best_first_up_to_the_cap(labelled, tmp_path):
    from data.io.mining.candidates import MiningResult
    _, images, candidates = labelled
    accepted = [_candidate(0, images[0].filename, "spore", 0.9 - 0.1 * k,
                           (10 + k, 20, 30 + k, 50), verify.ACCEPTED) for k in range(5)]
    ranked = accepted + candidates[1:]
    chosen = review_page.chosen_tiles(ranked, ["spore"], per_group=2)
    assert [rank for rank, _ in chosen["spore"][verify.ACCEPTED]] == [1, 2]
    assert [rank for rank, _ in chosen["spore"][verify.DOUBTFUL]] == [6]
    assert [rank for rank, _ in chosen["spore"][verify.REJECTED]] == [7]
    counts = {"spore": {"candidates": 7, verify.ACCEPTED: 5, verify.DOUBTFUL: 1,
                        verify.REJECTED: 1}}
    result = MiningResult(ranked, counts, {}, {}, None)
    crop = np.zeros((20, 10, 3), np.uint8)
    folder = str(tmp_path / "review")
    page = review_page.write_review_page(folder, result, images, {"spore": [crop] * 3})
    files = sorted(os.listdir(folder))
    assert sum(f.startswith("c0_accepted_") for f in files) == 5
    assert sum(f.startswith("c0_reference_") for f in files) == 3
    text = open(page).read()
    assert "7 candidates: 5 accepted, 1 doubtful, 1 rejected" in text
    assert f"#7 {images[1].filename}: score 0.30" in text
    for name in files:
        if name.endswith(".png") and name != "c0_overview.png":
            assert cv2.imread(os.path.join(folder, name)).shape == (
                review_page.TILE_SIDE, review_page.TILE_SIDE, 3)
    # The overview: a row each for references, accepted, doubtful, rejected; the first
    # accepted tile is the first accepted tile, scaled.
    overview = cv2.imread(os.path.join(folder, "c0_overview.png"))
    side, gap = review_page.OVERVIEW_SIDE, 4
    assert overview.shape[0] == 4 * (side + gap) + gap
    first = cv2.resize(cv2.imread(os.path.join(folder, "c0_accepted_00.png")),
                       (side, side), interpolation=cv2.INTER_AREA)
    top, left = gap + side + gap, overview.shape[1] - review_page.OVERVIEW_COLUMNS * (
        side + gap)
    assert np.array_equal(overview[top:top + side, left:left + side], first)
    assert (overview[top:top + side, left + 5 * (side + gap):] == 255).all()  # 5 accepted
    # Written again: replaced whole, no temporary folder left beside it.
    review_page.write_review_page(folder, result, images, {"spore": [crop]})
    assert sum(f.startswith("c0_reference_") for f in os.listdir(folder)) == 1
    assert os.listdir(str(tmp_path)).count("review") == 1
    assert not [f for f in os.listdir(str(tmp_path)) if f.startswith(".review")]


def test_mined_voc_labels_convert_to_labels_and_ignore_regions(labelled, tmp_path):
    from data.io.mining import labels as mined_labels
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
    with pytest.raises(convert.annotation.ConversionError, match="voc, coco, yolo"):
        mined_labels.annotations_target("labelme", str(tmp_path / "other"))


def _yolo_tree(tmp_path):
    """Two images (one in a subfolder) with YOLO labels: cell (0) and crystal (1)."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    (images / "sub").mkdir(parents=True)
    (labels / "sub").mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), np.full((100, 200, 3), 90, np.uint8))
    cv2.imwrite(str(images / "sub" / "b.png"), np.full((80, 80, 3), 90, np.uint8))
    (labels / "data.yaml").write_text("names: [cell, crystal]\n")
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2")          # no newline at the end
    (labels / "a.ignore.txt").write_text("1 0.1 0.1 0.1 0.1\n")
    (labels / "sub" / "b.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    return str(images), str(labels)


def test_yolo_ignore_files_are_ignore_regions_beside_the_labels(tmp_path):
    image_dir, labels_dir = _yolo_tree(tmp_path)
    images, names = convert.read_annotations("yolo", image_dir, labels_dir)
    assert names == ["cell", "crystal"] and [i.filename for i in images] == ["a.png",
                                                                           "sub/b.png"]
    a = [(o.name, o.ignore) + tuple(round(v, 3) for v in o.box) for o in images[0].objects]
    assert a == [("cell", False, 40.0, 80.0, 60.0, 120.0),
                 ("crystal", True, 5.0, 10.0, 15.0, 30.0)]
    assert [o.ignore for o in images[1].objects] == [False]


def test_mined_yolo_labels_append_lines_and_ignore_files(tmp_path):
    from data.io.mining import labels as mined_labels
    image_dir, labels_dir = _yolo_tree(tmp_path)
    images, _ = convert.read_annotations("yolo", image_dir, labels_dir)
    before = snapshot_tree(labels_dir)
    candidates = [
        _candidate(0, "a.png", "spore", 0.9, (10, 20, 30, 50), verify.ACCEPTED),
        _candidate(1, "sub/b.png", "spore", 0.5, (8, 8, 40, 24), verify.DOUBTFUL, (80, 80)),
        _candidate(1, "sub/b.png", "spore", 0.2, (50, 50, 60, 60), verify.REJECTED, (80, 80)),
    ]
    target = mined_labels.annotations_target("yolo", str(tmp_path / "mined"),
                                             annotations=labels_dir)
    written = mined_labels.write_annotations("yolo", labels_dir, images, candidates, target)
    assert written == {verify.ACCEPTED: 1, verify.DOUBTFUL: 1}
    assert snapshot_tree(labels_dir) == before
    again, names = convert.read_annotations("yolo", image_dir, target)
    assert names == ["cell", "crystal", "spore"]          # the new class: the next id
    assert open(os.path.join(target, "a.txt")).read().splitlines()[-1].startswith("2 ")

    def objects(image):
        return [(o.name, o.ignore) + tuple(round(v, 3) for v in o.box) for o in image.objects]
    assert objects(again[0]) == objects(images[0])[:1] + [
        ("spore", False, 10.0, 20.0, 30.0, 50.0)] + objects(images[0])[1:]
    assert objects(again[1]) == objects(images[1]) + [("spore", True, 8.0, 8.0, 40.0, 24.0)]
    with pytest.raises(convert.annotation.ConversionError, match="exists"):
        mined_labels.annotations_target("yolo", str(tmp_path / "mined"))
    # Pose labels: refused before any mining.
    with open(os.path.join(labels_dir, "data.yaml"), "a") as handle:
        handle.write("kpt_shape: [2, 3]\n")
    with pytest.raises(convert.annotation.ConversionError, match="keypoints"):
        mined_labels.annotations_target("yolo", str(tmp_path / "other"),
                                        annotations=labels_dir)


def test_mined_coco_labels_add_a_category_and_crowds(labelled, tmp_path):
    import json

    from data.io.mining import labels as mined_labels
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
    from data.io.mining import labels as mined_labels
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
    # The drawn page: one tile per candidate up to the cap, each decision's first ones.
    page = open(os.path.join(out, "review", "index.html")).read()
    for decision in (verify.ACCEPTED, verify.DOUBTFUL, verify.REJECTED):
        count = sum(r["decision"] == decision for r in rows)
        tiles = [f for f in os.listdir(os.path.join(out, "review"))
                 if f.startswith(f"c0_{decision}_")]
        assert len(tiles) == min(count, review_page.TILES_PER_GROUP)
        first = next(r for r in rows if r["decision"] == decision)
        assert f"#{first['rank']} {first['file']}" in page
    # Again without --overwrite: one line, nothing replaced; an unknown class: one line.
    again = _run_tool(*args)
    assert again.returncode == 1 and "exists" in again.stderr.strip().splitlines()[-1]
    unknown = _run_tool(*[a if a != "spore" else "spores" for a in args])
    assert unknown.returncode == 1
    assert "--new_classes spores" in unknown.stderr.strip().splitlines()[-1]


def test_mining_is_scored_against_the_hidden_objects(tmp_path):
    from bench.hidden_objects import score_mining

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
    # The same from the command line, a class per line (another class's rows apart).
    (tmp_path / "candidates.json").write_text(json.dumps(
        {"candidates": [dict(r, **{"class": "spore"}) for r in rows]
         + [dict(rows[0], **{"class": "cell"})]}))
    (tmp_path / "hidden.json").write_text(json.dumps({"spore": hidden, "cell": {}}))
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "hidden_objects.py"),
         "--candidates", str(tmp_path / "candidates.json"),
         "--hidden", str(tmp_path / "hidden.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "cell: accepted 0/1 true; recall of the 0 hidden: any candidate 0.00, written "
        "0.00, accepted 0.00",
        "spore: accepted 2/3 true, doubtful 1/2 true, rejected 1/1 true; recall of the 3 "
        "hidden: any candidate 1.00, written 0.67, accepted 0.33"]


def test_the_simulated_reviewer_accepts_true_boxes_and_rejects_the_rest(tmp_path):
    from xml.etree import ElementTree

    from bench.hidden_objects import simulate_review

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
                             {"spore": hidden}, 3)
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


def test_hiding_classes_keeps_the_labelled_shots_and_only_the_listed_images(tmp_path):
    # bench/base_novel.py's mining input: the novel classes hidden on the train images,
    # except the K shots a user labelled; other images (val) are not written at all.
    from xml.etree import ElementTree

    from bench.hidden_objects import box_of, hide_classes

    source = tmp_path / "Annotations"
    source.mkdir()

    def xml(objects):
        return "<annotation>" + "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for name, (y1, x1, y2, x2) in objects) + "</annotation>"

    (source / "a.xml").write_text(xml([("rbc", (0, 0, 9, 9)), ("plt", (10, 10, 20, 20)),
                                       ("plt", (30, 30, 40, 40)), ("wbc", (1, 1, 5, 5))]))
    (source / "b.xml").write_text(xml([("plt", (2, 2, 8, 8)), ("rbc", (3, 3, 7, 7))]))
    (source / "val.xml").write_text(xml([("plt", (2, 2, 8, 8))]))
    out = tmp_path / "hidden"
    # the shot's box as kshot.json records it (floats) matches the XML's integers
    hidden = hide_classes(str(source), str(out), ["plt", "wbc"],
                          keep={"plt": {"a": [[30.0, 30.0, 40.0, 40.0]]}},
                          stems={"a", "b"})
    assert hidden == {"plt": {"a": [[10, 10, 20, 20]], "b": [[2, 2, 8, 8]]},
                      "wbc": {"a": [[1, 1, 5, 5]]}}
    assert sorted(os.listdir(out)) == ["a.xml", "b.xml"]

    def objects(path):
        return [(o.find("name").text, box_of(o))
                for o in ElementTree.parse(path).getroot().iter("object")]

    assert objects(out / "a.xml") == [("rbc", [0, 0, 9, 9]), ("plt", [30, 30, 40, 40])]
    assert objects(out / "b.xml") == [("rbc", [3, 3, 7, 7])]
    assert len(objects(source / "a.xml")) == 4          # the source is untouched


def test_the_labelled_ceiling_restores_every_hidden_object(tmp_path):
    from bench.hidden_objects import box_of, label_hidden
    from bench.new_class_sample import strip_class
    from xml.etree import ElementTree

    voc = str(tmp_path / "voc")
    generate_voc_dataset(voc, num_train=3, num_val=0, seed=2,
                         classes=("cell", "crystal", "spore"))

    def objects(folder):
        return {name: sorted((o.find("name").text, tuple(box_of(o))) for o in
                             ElementTree.parse(os.path.join(folder, name)).getroot()
                             .iter("object"))
                for name in sorted(os.listdir(folder))}

    before = objects(os.path.join(voc, "Annotations"))
    hidden = strip_class(voc, "spore")
    assert sum(map(len, hidden.values())) > 0
    assert all(n != "spore" for rows in objects(os.path.join(voc, "Annotations")).values()
               for n, _ in rows)
    label_hidden(voc, str(tmp_path / "labelled"), {"spore": hidden})
    assert objects(str(tmp_path / "labelled" / "annotations")) == before


def _review_round(tmp_path, labelled):
    """A mining round's candidates.json over the `labelled` images and a Label Studio
    export of its review: image 0 reviewed (a box moved, a base-class box and a rotated
    one that cannot be used, an earlier annotation superseded, a cancelled one after it),
    image 1 only pre-annotated (not reviewed), and a task of an unknown image."""
    import json
    voc, images, _ = labelled
    height, width = images[0].annotated_size
    mined = tmp_path / "mined"
    mined.mkdir()

    def row(file, decision, box, score=0.8):
        return {"file": file, "class": "spore", "decision": decision, "score": score,
                "vote": 0.6, "confidence": 0.7, "neighbours": ["spore"],
                "box": dict(zip(("ymin", "xmin", "ymax", "xmax"), box))}
    rows = [row(images[0].filename, verify.ACCEPTED, (10, 20, 30, 50)),
            row(images[0].filename, verify.DOUBTFUL, (40, 5, 60, 25)),
            row(images[1].filename, verify.ACCEPTED, (12, 14, 22, 30)),
            row(images[1].filename, verify.DOUBTFUL, (50, 50, 70, 70)),
            row(images[1].filename, verify.REJECTED, (1, 1, 9, 9))]
    (mined / "candidates.json").write_text(json.dumps(
        {"per_class": {"spore": {}}, "candidates": rows}))

    def rect(label, x, y, w, h, rotation=0):
        return {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
                "value": {"x": 100.0 * x / width, "y": 100.0 * y / height,
                          "width": 100.0 * w / width, "height": 100.0 * h / height,
                          "rotation": rotation, "rectanglelabels": [label]}}
    tasks = [
        {"id": 1, "data": {"image": "/data/local-files/?d=JPEGImages%2F"
                           + images[0].filename},
         "annotations": [
             {"result": [rect("spore", 0, 0, 5, 5)], "updated_at": "2026-01-01T10:00"},
             {"result": [rect("spore", 22, 12, 30, 20), rect("cell", 1, 1, 4, 4),
                         rect("spore", 60, 30, 10, 10, rotation=30)],
              "updated_at": "2026-01-02T10:00"},
             {"result": [], "was_cancelled": True, "updated_at": "2026-01-03T10:00"}]},
        {"id": 2, "data": {"image": images[1].filename}, "annotations": [],
         "predictions": [{"result": [rect("spore", 14, 12, 16, 10)]}]},
        {"id": 3, "data": {"image": "elsewhere/unknown.jpg"}, "annotations": []}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    return voc, images, str(mined), str(export)


def test_a_review_replaces_the_round_on_reviewed_images_only(labelled, tmp_path):
    from data.io.mining import review_import
    voc, images, mined, export = _review_round(tmp_path, labelled)
    out = str(tmp_path / "reviewed")
    counts = review_import.apply_review(
        "voc", os.path.join(voc, "JPEGImages"), os.path.join(voc, "Annotations"), mined,
        export, out, image_url_prefix="/data/local-files/?d=JPEGImages/")
    assert counts == {"reviewed_images": 1, "reviewed_boxes": 1, "mined_boxes": 2}
    again, _ = convert.read_annotations("voc", os.path.join(voc, "JPEGImages"),
                                        os.path.join(out, "annotations"))

    def spores(image):
        return [(tuple(round(v, 1) for v in o.box), o.ignore)
                for o in image.objects if o.name == "spore"]
    # Reviewed: the reviewer's one usable box (moved), as a label; the round's are gone.
    assert spores(again[0]) == [((12.0, 22.0, 32.0, 52.0), False)]
    # Not reviewed (pre-annotations are not a review): the round's label and ignore region.
    assert spores(again[1]) == [((12.0, 14.0, 22.0, 30.0), False),
                                ((50.0, 50.0, 70.0, 70.0), True)]
    for before, after in zip(images, again):
        assert [(o.name, o.box) for o in after.objects if o.name != "spore"] == \
            [(o.name, o.box) for o in before.objects]


def test_a_review_matches_images_by_their_path_without_the_prefix(labelled, tmp_path):
    from data.io.mining import review_import
    voc, images, mined, export = _review_round(tmp_path, labelled)
    names = [image.filename for image in images]
    report = convert.annotation.Report()
    # No prefix given: the trailing part of the URL that names an image is found.
    reviewed = review_import.read_review(export, names, ["spore"], "", report)
    assert set(reviewed) == {names[0]}
    # Skipped, one line each: the unknown image, the base-class box, the rotated box.
    assert report.counts["review_skipped"] == 3
    with pytest.raises(review_import.ReviewError, match="none|no task"):
        review_import.read_review(export, ["other.jpg"], ["spore"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": []}')
    with pytest.raises(review_import.ReviewError, match="list of tasks"):
        review_import.read_review(str(bad), names, ["spore"])
    bad.write_text("[{")
    with pytest.raises(review_import.ReviewError, match="not JSON"):
        review_import.read_review(str(bad), names, ["spore"])


def test_mine_labels_reviewed_writes_without_a_model(labelled, tmp_path):
    voc, images, mined, export = _review_round(tmp_path, labelled)
    out = str(tmp_path / "reviewed")
    args = ["--reviewed", export, "--mined_dir", mined, "--format", "voc",
            "--image_dir", os.path.join(voc, "JPEGImages"),
            "--annotations", os.path.join(voc, "Annotations"), "--output_dir", out]
    done = _run_tool(*args)
    assert done.returncode == 0, done.stderr
    assert "1 reviewed images: 1 boxes" in done.stdout
    assert len(os.listdir(os.path.join(out, "annotations"))) == len(images)
    missing = _run_tool(*args[:2], *args[4:])
    assert missing.returncode == 2 and "--mined_dir" in missing.stderr
    again = _run_tool(*args)
    assert again.returncode == 1 and "exists" in again.stderr.strip().splitlines()[-1]
