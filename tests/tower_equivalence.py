"""Helper process for test_training: do 2 towers x 1 image update like 1 tower x 2?

Run as a script (the CPU must be split into logical devices before TensorFlow starts,
which a pytest process that already ran TF cannot do):

    python tests/tower_equivalence.py DATA_DIR REFERENCE_DIR OUT_DIR CLASSIFIER

1. trains the tiny config 20 steps with batch norm training (realistic weights and
   moving statistics, so features are well scaled);
2. from that checkpoint, with batch norm frozen (the notebook's setting; per-tower
   batch statistics would differ by construction) and a clip bound too large to act
   (clipping is per tower, before the towers' gradients are summed), takes ONE step
   with 1 tower x 2 images and ONE step with 2 towers x 1 image;
3. prints a JSON line comparing every variable's update.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.io.dataset import open_run  # noqa: E402
from libs.train import devices, runs, training  # noqa: E402

devices.ensure_cpu_devices(2)

import numpy as np  # noqa: E402

from data.io.input_fn import TRAIN, make_input_fn  # noqa: E402
from libs.base.tf_compat import tf  # noqa: E402
from libs.configs import load_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(classifier, **overrides):
    fields = dict(CLASSIFIER=classifier, FLIP_HORIZONTAL=False, SAVE_CHECKPOINTS_STEPS=1000,
                  SAVE_SUMMARY_STEPS=1, LOG_EVERY_N_STEPS=1000)
    fields.update(overrides)
    return load_config(os.path.join(REPO, "cfgs", "tiny_cpu.py"), fields)


def train(cfg, run, model_dir, steps, warm_start=None):
    # the run's params with this layout's config (same data, same references)
    estimator = training.make_estimator(runs.model_params(run, net_config=cfg), model_dir,
                                        warm_start_from=warm_start)
    estimator.train(make_input_fn(cfg, TRAIN, data_dir=run.data_dir), max_steps=steps,
                    hooks=training.training_hooks(estimator, cfg))
    return estimator


def main(data_dir, reference_dir, out_dir, classifier):
    pretrain = config(classifier, GPU_GROUPS=["/cpu:0"], PER_GPU_IMAGE=2)
    run = open_run(pretrain, data_dir, reference_dir, out_dir)
    train(run.cfg, run, os.path.join(out_dir, "pretrain"), 20)
    start = tf.train.latest_checkpoint(os.path.join(out_dir, "pretrain"))
    # Weights and batch-norm statistics, not the optimizer's slots or the step.
    warm = tf.estimator.WarmStartSettings(
        start, vars_to_warm_start=[".*(weights|biases|gamma|beta|moving_mean|"
                                   "moving_variance)$"])
    frozen = dict(TRAIN_BATCH_NORM=False, HEAD_TRAIN_BATCH_NORM=False,
                  CLIP_GRADIENT_NORM=1e9)
    layouts = {"1x2": config(classifier, GPU_GROUPS=["/cpu:0"], PER_GPU_IMAGE=2, **frozen),
               "2x1": config(classifier, GPU_GROUPS=["/cpu:0", "/cpu:1"], PER_GPU_IMAGE=1,
                             **frozen)}
    after = {}
    for name, cfg in layouts.items():
        estimator = train(cfg, run, os.path.join(out_dir, name), 1, warm)
        after[name] = {v: estimator.get_variable_value(v)
                       for v in estimator.get_variable_names()
                       if "Momentum" not in v and v != "global_step"}
    worst, worst_name, moved, compared = 0.0, None, 0, 0
    for name, one_tower in after["1x2"].items():
        if name.endswith("compare_conv3d/BatchNorm/beta") and not layouts["1x2"].COMPARISON_RELU:
            # Without the ReLU this beta adds the same constant to every class logit,
            # which the softmax ignores: its gradient is exactly zero and its "update"
            # float32 noise (~1e-9), so a relative comparison would compare noise.
            continue
        initial = tf.train.load_variable(start, name)
        update = np.abs(one_tower - initial).max()
        diff = np.abs(one_tower - after["2x1"][name]).max()
        moved += int(update > 0)
        compared += 1
        # relative to the update of this variable, with a float32 floor
        if diff / (update + 1e-6) > worst:
            worst, worst_name = diff / (update + 1e-6), name
    summary_dir = os.path.join(out_dir, "2x1")
    tags = []
    for path in tf.io.gfile.glob(os.path.join(summary_dir, "events.out.tfevents.*")):
        for event in tf.train.summary_iterator(path):
            tags.extend(value.tag for value in event.summary.value)
    print(json.dumps({"compared": compared, "moved": moved, "worst_relative": worst,
                      "worst_variable": worst_name,
                      "tags_2x1": tags}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
