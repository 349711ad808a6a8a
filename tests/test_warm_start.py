"""Fine-tuning from another run: class rows matched by name, frozen variables frozen."""
import os

import numpy as np
import pytest

from data.io.dataset import open_run
from libs.base.tf_compat import tf
from libs.configs import load_config
from libs.train import training, warm_start
from tests.conftest import REPO_ROOT, convert_sample_classes

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")


def test_remap_classes_moves_blocks_by_name_and_initialises_new_ones():
    rng = np.random.default_rng(0)
    # [H=2, (bg, a, b) x 4 deltas]: each block holds its row number
    source = np.repeat(np.arange(3, dtype=np.float32), 4)[None].repeat(2, axis=0)
    got = warm_start.remap_classes(source, axis=1, per_class=4, has_background=True,
                                   source_classes=["a", "b"],
                                   target_classes=["b", "new", "a"], rng=rng)
    assert got.shape == (2, 16)
    np.testing.assert_array_equal(got[:, 0:4], 0)     # background stays first
    np.testing.assert_array_equal(got[:, 4:8], 2)     # b: its rows, at its new place
    np.testing.assert_array_equal(got[:, 12:16], 1)    # a
    new = got[:, 8:12]
    assert np.abs(new).max() < 0.06 and new.std() > 0  # fresh N(0, 0.01) values
    zeros = warm_start.remap_classes(source[0], axis=0, per_class=4, has_background=True,
                                     source_classes=["a", "b"], target_classes=["new"],
                                     rng=rng, fill="zeros")
    np.testing.assert_array_equal(zeros, [0] * 8)
    # the stacked background conv: F input channels per class, no background block
    kernel = np.arange(2 * 3, dtype=np.float32).reshape(1, 1, 6, 1)   # F = 3, (a, b)
    moved = warm_start.remap_classes(kernel, axis=2, per_class=None, has_background=False,
                                     source_classes=["a", "b"], target_classes=["b", "a"],
                                     rng=rng)
    assert moved[0, 0, :, 0].tolist() == [3, 4, 5, 0, 1, 2]


def test_unknown_source_classes_cannot_be_matched(tmp_path):
    with pytest.raises(warm_start.WarmStartError, match="no such checkpoint"):
        warm_start.resolve_source(str(tmp_path / "nothing"))


def _train(cfg, data_dir, reference_dir, model_dir, steps):
    run = open_run(cfg, data_dir, reference_dir, model_dir)
    assert training.train(run, max_steps=steps) == steps
    return run


def test_fc_fine_tuning_keeps_base_rows_and_frozen_layers(sample_data, tmp_path):
    """TFA's recipe on the sample: an FC model of one class, fine-tuned with both; only
    the classifier and box regressor train, the rest equals the base model."""
    base_data = convert_sample_classes(sample_data, tmp_path / "base_data", ["crystal"])
    options = dict(CLASSIFIER="fc", SAVE_CHECKPOINTS_STEPS=1000, SAVE_SUMMARY_STEPS=1000,
                   BOX_REGRESSION="per_class")
    base_dir = str(tmp_path / "base")
    _train(load_config(TINY, dict(options, NUM_CLASS=2)), base_data,
           sample_data["reference_dir"], base_dir, 4)
    assert warm_start.read_class_names(base_dir) == ["crystal"]

    tuned_dir = str(tmp_path / "tuned")
    trainable = ["fc_classifier/", "box_regressor/"]
    cfg = load_config(TINY, dict(options, NUM_CLASS=3, INIT_CHECKPOINT=base_dir,
                                 TRAINABLE_VARIABLES=trainable))
    assert "fine-tuning from" in training.describe_start(cfg, tuned_dir)
    run = _train(cfg, sample_data["data_dir"], sample_data["reference_dir"], tuned_dir, 3)
    assert run.class_names == ["cell", "crystal"]

    base = tf.train.load_checkpoint(tf.train.latest_checkpoint(base_dir))
    start = tf.train.load_checkpoint(os.path.join(tuned_dir, "warm_start", "model.ckpt"))
    tuned = tf.train.load_checkpoint(tf.train.latest_checkpoint(tuned_dir))
    logits = "fast_rcnn/fc_classifier/class_logits/weights"
    deltas = "fast_rcnn/box_regressor/bbox_pred/weights"
    # warm start: background and crystal rows come from the base model, cell is new
    np.testing.assert_array_equal(start.get_tensor(logits)[:, [0, 2]],
                                  base.get_tensor(logits))
    np.testing.assert_array_equal(start.get_tensor(deltas)[:, 8:12],
                                  base.get_tensor(deltas)[:, 4:8])
    assert tuned.get_tensor(logits).shape == (128, 3)
    # trained: the classifier moved; frozen: every other weight is the base model's
    assert not np.allclose(tuned.get_tensor(logits), start.get_tensor(logits))
    frozen = [name for name in base.get_variable_to_shape_map()
              if name != "global_step" and "Momentum" not in name
              and not any(t in name for t in trainable)]
    assert any("box_branch" in name for name in frozen)
    for name in frozen:
        np.testing.assert_array_equal(tuned.get_tensor(name), base.get_tensor(name),
                                      err_msg=name)
