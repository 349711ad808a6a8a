"""Config loader: reference values, derived values, and one clear error per bad config."""
import copy
import math
import os
import subprocess
import sys
import textwrap

import pytest

from libs.configs import ConfigError, Defaults, LoadedConfig, load_config
from libs.configs.config_loader import known_fields
from tests.conftest import REPO_ROOT

RES101 = os.path.join(REPO_ROOT, "cfgs", "res101_fewshot.py")
TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")


def test_reference_values_of_design_section_5():
    cfg = load_config(RES101)
    assert cfg.NET_NAME == "resnet_v1_101"
    assert cfg.TARGET_SIDE == 1024
    assert cfg.PIXEL_MEANS == [115.2, 118.8, 123.0]
    assert cfg.NUM_SUPPORTS == 3
    assert cfg.BASE_ANCHOR_SIZE_LIST == [32, 64, 128, 256, 512]
    assert cfg.ANCHOR_RATIOS == [0.5, 1.0, 2.0]
    assert (cfg.RPN_POSITIVE_IOU, cfg.RPN_NEGATIVE_IOU, cfg.RPN_MINIBATCH_SIZE,
            cfg.RPN_POSITIVE_RATIO) == (0.7, 0.3, 256, 0.5)
    assert (cfg.RPN_TOP_K_NMS, cfg.RPN_PROPOSALS_TRAIN, cfg.RPN_PROPOSALS_INFERENCE) == \
        (6000, 2000, 1000)
    assert cfg.RPN_BBOX_STD_DEV == [0.1, 0.1, 0.25, 0.27]
    assert cfg.BBOX_STD_DEV == [0.13, 0.13, 0.27, 0.26]
    assert cfg.ROI_SIZE == 7
    assert (cfg.FAST_RCNN_POSITIVE_IOU, cfg.FAST_RCNN_MINIBATCH_SIZE,
            cfg.FAST_RCNN_POSITIVE_RATIO) == (0.5, 200, 0.33)
    assert (cfg.DETECTION_NMS_THRESHOLD, cfg.DETECTION_MAX_INSTANCES) == (0.3, 200)
    assert (cfg.LR, cfg.MOMENTUM, cfg.WEIGHT_DECAY) == (0.001, 0.9, 1e-4)
    assert (cfg.EPOCH, cfg.EPOCH_BOUNDARY, cfg.CLIP_GRADIENT_NORM) == (60, [35, 50], 5.0)
    assert cfg.NUM_GPUS == 2
    # the notebook's quirks are the defaults
    assert cfg.TRAIN_BATCH_NORM is False and cfg.HEAD_TRAIN_BATCH_NORM is False
    assert cfg.CLASSIFIER == "comparison" and cfg.FRCNN_CLS_LOSS_WEIGHT == 5.0


def test_derived_values_computed_in_one_place():
    cfg = load_config(RES101, {"NUM_TRAIN_IMAGES": 101, "PER_GPU_IMAGE": 2})
    assert cfg.BATCH_SIZE == 4
    assert cfg.STEPS_PER_EPOCH == math.ceil(101 / 4) == 26
    assert cfg.MAX_STEPS == 60 * 26
    assert cfg.BOUNDARY == [35 * 26, 50 * 26]
    assert cfg.LR_VALUES == pytest.approx([1e-3, 1e-4, 1e-5])
    assert cfg.BACKBONE_SHAPES == [[256, 256], [128, 128], [64, 64], [32, 32], [16, 16]]
    assert cfg.PYRAMID_LEVELS == ["P2", "P3", "P4", "P5", "P6"]
    assert cfg.NUM_ANCHORS_PER_LOCATION == 3
    # steps are unknown until the data is
    assert load_config(RES101).BOUNDARY is None
    # a changed field is a new config with its derived values; the old one is as it was
    fewer = cfg.replace(NUM_TRAIN_IMAGES=8)
    assert fewer.STEPS_PER_EPOCH == 2 and fewer.BOUNDARY == [70, 100]
    assert cfg.NUM_TRAIN_IMAGES == 101 and cfg.BOUNDARY == [35 * 26, 50 * 26]


def test_min_steps_lengthens_a_small_datasets_schedule_and_keeps_its_fractions():
    """20 epochs, LR drops at 15 and 18, at least 2,000 steps: 25 images would train 500
    steps; they train 2,000 with the drops at 15/20 and 18/20 of them. A dataset whose
    epochs are more steps than that keeps its own schedule exactly."""
    own = os.path.join(REPO_ROOT, "cfgs", "own_data.py")
    small = load_config(own, {"NUM_TRAIN_IMAGES": 25, "MIN_STEPS": 2000})
    assert (small.EPOCH, small.EPOCH_BOUNDARY) == (20, [15, 18])
    assert (small.EPOCH_STEPS, small.MAX_STEPS, small.BOUNDARY) == (2000, 2000,
                                                                   [1500, 1800])
    large = small.replace(NUM_TRAIN_IMAGES=205)
    assert (large.MAX_STEPS, large.BOUNDARY) == (4100, [15 * 205, 18 * 205])
    # a budget's or a bench's SCHEDULE_STEPS still sets the length
    assert small.replace(SCHEDULE_STEPS=1000).BOUNDARY == [750, 900]
    assert load_config(own, {"NUM_TRAIN_IMAGES": 25, "MIN_STEPS": None}).MAX_STEPS == 500
    for bad in (0, -5, 2.5, "2000"):
        with pytest.raises(ConfigError, match="MIN_STEPS: must be a positive integer"):
            load_config(own, {"MIN_STEPS": bad})


def test_a_loaded_config_is_read_only_and_replace_makes_a_checked_copy():
    cfg = load_config(TINY, {"NUM_TRAIN_IMAGES": 8})
    loaded = copy.deepcopy(vars(cfg))
    assert isinstance(cfg, LoadedConfig)
    with pytest.raises(AttributeError, match=r"read-only: cfg.replace\(LR=...\)"):
        cfg.LR = 0.5
    with pytest.raises(AttributeError, match="read-only"):
        del cfg.LR
    shorter = cfg.replace(SCHEDULE_STEPS=80, LR=0.02)
    assert (shorter.MAX_STEPS, shorter.BOUNDARY) == (80, [60, 72])
    assert shorter.LR_VALUES == pytest.approx([0.02, 0.002, 0.0002])
    assert shorter.CONFIG_PATH == cfg.CONFIG_PATH and shorter.NAME == "tiny_cpu"
    # the same checks as at load time, the same one-line messages
    with pytest.raises(ConfigError, match=r"^config: BATCH_SIZE is derived"):
        cfg.replace(BATCH_SIZE=4)
    with pytest.raises(ConfigError, match=r"^tiny_cpu: unknown field NUM_CLASSES \(did you "
                                          r"mean NUM_CLASS\?\)"):
        cfg.replace(NUM_CLASSES=4, source="tiny_cpu")
    with pytest.raises(ConfigError, match="NUM_CLASS: must be an integer >= 2"):
        cfg.replace(NUM_CLASS=1)
    assert vars(cfg) == loaded                       # nothing above changed it
    # the Estimator deep-copies its params, net_config included
    assert copy.deepcopy(cfg) == cfg and isinstance(copy.deepcopy(cfg), LoadedConfig)


def test_the_fields_and_their_defaults_live_in_the_library():
    """libs/configs/defaults.py lists every field; the notebook's config only names
    itself, and the library never imports a config of cfgs/."""
    assert known_fields() == {k for k in vars(Defaults) if k.isupper()}
    from cfgs.res101_fewshot import Config as Res101FewShot
    assert Res101FewShot.__bases__ == (Defaults,)
    assert {k for k in vars(Res101FewShot) if k.isupper()} == {"NAME", "MODEL_DIR"}
    script = ("import sys, libs.configs.config_loader, libs.train.runs, "
              "libs.serving.export; print(sorted(m for m in sys.modules "
              "if m.split('.')[0] == 'cfgs'))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_a_config_from_the_defaults_is_the_notebooks_and_must_name_itself(tmp_path):
    path = _write_cfg(tmp_path, """
        from libs.configs.defaults import Defaults
        class Config(Defaults):
            NAME = "mine"
            MODEL_DIR = "output/mine"
        """, name="mine.py")
    mine, notebook = vars(load_config(path)), vars(load_config(RES101))
    differ = {k for k in set(mine) | set(notebook) if mine.get(k) != notebook.get(k)}
    assert differ == {"NAME", "MODEL_DIR", "CONFIG_PATH"}
    for field in ("NAME", "MODEL_DIR"):
        with pytest.raises(ConfigError, match=f"{field}: missing"):
            load_config(path, {field: None})
    unnamed = _write_cfg(tmp_path, """
        from libs.configs.defaults import Defaults
        class Config(Defaults):
            pass
        """, name="unnamed.py")
    with pytest.raises(ConfigError, match="unnamed.py: NAME: missing"):
        load_config(unnamed)


def test_tiny_config_inherits_and_overrides():
    cfg = load_config(TINY)
    assert cfg.NET_NAME == "tiny_resnet_gn" and cfg.TARGET_SIDE == 128
    assert cfg.BBOX_STD_DEV == [0.13, 0.13, 0.27, 0.26]   # inherited
    assert cfg.NUM_GPUS == 1 and cfg.BACKBONE_SHAPES[-1] == [2, 2]


def _write_cfg(tmp_path, body, name="bad.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _derived_cfg(tmp_path, **fields):
    lines = "\n".join(f"    {k} = {v!r}" for k, v in fields.items())
    return _write_cfg(tmp_path, f"""
        from cfgs.tiny_cpu import Config as Base
        class Config(Base):
        {lines}
        """.replace("\n        ", "\n"))


@pytest.mark.parametrize("fields, message", [
    ({"BASE_ANCHOR_SIZE_LIST": [8, 16, 32]}, "BASE_ANCHOR_SIZE_LIST: has 3 sizes but"),
    ({"EPOCH_BOUNDARY": [30, 20]}, "EPOCH_BOUNDARY: must be strictly increasing"),
    ({"EPOCH_BOUNDARY": [10, 50]}, "EPOCH_BOUNDARY: must lie inside (0, EPOCH=40)"),
    ({"GPU_GROUPS": []}, "GPU_GROUPS: is empty"),
    ({"NUM_CLASS": 1}, "NUM_CLASS: must be an integer >= 2"),
    ({"CLASSIFIER": "svm"}, "CLASSIFIER: must be one of"),
    ({"TARGET_SIDE": 100}, "TARGET_SIDE: must be a multiple of 64"),
    ({"RPN_BBOX_STD_DEV": [0.1, 0.1]}, "RPN_BBOX_STD_DEV: needs four values"),
])
def test_inconsistent_values_name_the_field(tmp_path, fields, message):
    path = _derived_cfg(tmp_path, **fields)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert message in text
    assert path in text and "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "nope.py"))


def test_module_without_config_class(tmp_path):
    path = _write_cfg(tmp_path, "NUM_CLASS = 3\n")
    with pytest.raises(ConfigError, match="defines no class `Config`"):
        load_config(path)


def test_module_that_does_not_import(tmp_path):
    path = _write_cfg(tmp_path, "class Config:\n    NUM_CLASS = = 3\n")
    with pytest.raises(ConfigError, match="cannot be imported: SyntaxError"):
        load_config(path)


def test_missing_required_field(tmp_path):
    path = _write_cfg(tmp_path, "class Config:\n    NUM_CLASS = 3\n")
    with pytest.raises(ConfigError, match="NAME: missing"):
        load_config(path)


def test_typo_in_config_file_is_refused_with_a_suggestion(tmp_path):
    path = _derived_cfg(tmp_path, NUM_CLASSES=4)
    with pytest.raises(ConfigError,
                       match=r"unknown field NUM_CLASSES \(did you mean NUM_CLASS\?\)"):
        load_config(path)
    path = _derived_cfg(tmp_path, MAX_STEPS=4)
    with pytest.raises(ConfigError, match="MAX_STEPS is derived"):
        load_config(path)


def test_override_typo_and_derived_override_refused():
    with pytest.raises(ConfigError, match="unknown field NUM_CLASSES"):
        load_config(TINY, {"NUM_CLASSES": 4})
    with pytest.raises(ConfigError, match="BATCH_SIZE is derived"):
        load_config(TINY, {"BATCH_SIZE": 4})


BCCD = os.path.join(REPO_ROOT, "cfgs", "bccd_cpu.py")
DEEPPCB = os.path.join(REPO_ROOT, "cfgs", "deeppcb_cpu.py")


@pytest.mark.parametrize("path", [BCCD, DEEPPCB])
def test_real_data_configs_start_pretrained_and_scratch_is_one_preset_away(path):
    cfg = load_config(path)
    assert cfg.NET_NAME == "efficientnet_lite0" and cfg.PRESET is None
    assert cfg.BACKBONE_CHECKPOINT == "output/pretrained/efficientnet_lite0"
    assert (cfg.PIXEL_MEANS, cfg.PIXEL_STD) == ([127.0] * 3, [128.0] * 3)
    assert cfg.TRAIN_BATCH_NORM is False          # the checkpoint's statistics
    scratch = load_config(path, {"PRESET": "scratch", "LR": 0.02})
    assert scratch.PRESET == "scratch" and scratch.NET_NAME == "small_resnet_gn"
    assert scratch.BACKBONE_CHECKPOINT is None and scratch.PIXEL_STD == [1.0] * 3
    assert scratch.TRAIN_BATCH_NORM is True and scratch.BACKBONE_FROZEN_STAGES == 0
    assert scratch.LR == 0.02                     # --set after the preset wins
    # everything the preset does not name is the config's
    assert scratch.BASE_ANCHOR_SIZE_LIST == cfg.BASE_ANCHOR_SIZE_LIST
    assert scratch.NAME == cfg.NAME and scratch.NUM_CLASS == cfg.NUM_CLASS


def test_fine_tuning_a_pretrained_config_starts_from_the_run_alone():
    """INIT_CHECKPOINT (a run: backbone included) replaces BACKBONE_CHECKPOINT (ImageNet)."""
    assert load_config(DEEPPCB).BACKBONE_CHECKPOINT == "output/pretrained/efficientnet_lite0"
    tuned = load_config(DEEPPCB, {"INIT_CHECKPOINT": "output/deeppcb_cpu"})
    assert tuned.BACKBONE_CHECKPOINT is None
    assert tuned.INIT_CHECKPOINT == "output/deeppcb_cpu"


def test_preset_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"PRESET: no preset 'nope' \(this config has: "
                                          r"scratch\)"):
        load_config(BCCD, {"PRESET": "nope"})
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        from cfgs.tiny_cpu import Config as Tiny
        class Config(Tiny):
            PRESETS = {"fast": {"LR_TYPO": 1.0}}
    """))
    with pytest.raises(ConfigError, match=r"PRESETS\['fast'\]: cannot set LR_TYPO"):
        load_config(str(bad), {"PRESET": "fast"})
    cfg = load_config(TINY)
    with pytest.raises(ConfigError, match="takes effect when the config is loaded"):
        cfg.replace(PRESET="scratch")


@pytest.mark.parametrize("fields, message", [
    ({"PIXEL_STD": [1.0, 0.0, 1.0]}, "PIXEL_STD: needs three positive"),
    ({"BACKBONE_FROZEN_STAGES": -1}, "BACKBONE_FROZEN_STAGES: must be an integer >= 0"),
])
def test_normalisation_and_freezing_fields_are_checked(fields, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, fields)


def test_normalize_pixels_matches_numpy():
    import numpy as np

    from libs.base.tf_compat import tf
    from libs.model.preprocessing import normalize_pixels
    images = np.random.RandomState(0).randint(0, 256, [2, 5, 4, 3]).astype(np.uint8)
    with tf.Graph().as_default(), tf.Session() as sess:
        scaled = sess.run(normalize_pixels(tf.constant(images), [127.0] * 3, [128.0] * 3))
        means_only = sess.run(normalize_pixels(tf.constant(images), [1.0, 2.0, 3.0]))
    np.testing.assert_allclose(scaled, (images - 127.0) / 128.0, rtol=1e-6)
    np.testing.assert_allclose(means_only, images - np.array([1.0, 2.0, 3.0]), rtol=1e-6)


def test_the_old_name_checkpoint_dir_still_sets_backbone_checkpoint(tmp_path):
    """BACKBONE_CHECKPOINT was CHECKPOINT_DIR: users' configs and --set keep working."""
    path = tmp_path / "old.py"
    path.write_text("from libs.configs.defaults import Defaults\n\n\n"
                    "class Config(Defaults):\n    NAME = 'old'\n    MODEL_DIR = 'out'\n"
                    "    CHECKPOINT_DIR = 'weights/model.ckpt'\n")
    assert load_config(str(path)).BACKBONE_CHECKPOINT == "weights/model.ckpt"
    cfg = load_config(str(path), {"CHECKPOINT_DIR": "other.ckpt"})
    assert cfg.BACKBONE_CHECKPOINT == "other.ckpt"
    assert not hasattr(cfg, "CHECKPOINT_DIR")
    with pytest.raises(ConfigError, match="CHECKPOINT_DIR is the old name of "
                                          "BACKBONE_CHECKPOINT; give one of them"):
        load_config(str(path), {"CHECKPOINT_DIR": "a.ckpt", "BACKBONE_CHECKPOINT": "b.ckpt"})
