"""Trains the Comparison Detector with tf.estimator.

    python tools/train.py --cfg cfgs/res101_fewshot.py
    python tools/train.py --cfg cfgs/tiny_cpu.py --max_steps 200
    python tools/train.py --cfg cfgs/tiny_cpu.py --eval      # + mAP of each checkpoint
    python tools/train.py --cfg cfgs/bccd_cpu.py --max_minutes 55  # fit a time budget
    tensorboard --logdir output/

Data, references and the run directory default to the config's DATA_DIR, REFERENCE_DIR
and MODEL_DIR. A rerun of the same command resumes from the run directory's latest
checkpoint. Towers follow GPU_GROUPS (CPU devices when there is no GPU).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402

from libs.base import cli  # noqa: E402
from libs.configs import load_config_from_flags  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("cfg", None, "Config file, e.g. cfgs/res101_fewshot.py.")
    flags.DEFINE_string("data_dir", None, "TFRecords + label_map.json (default: DATA_DIR).")
    flags.DEFINE_string("reference_dir", None,
                        "One folder of reference images per class (default: REFERENCE_DIR).")
    flags.DEFINE_string("model_dir", None, "Run directory (default: MODEL_DIR).")
    flags.DEFINE_integer("max_steps", None, "Stop at this global step "
                         "(default: EPOCH epochs of the training split).")
    flags.DEFINE_float("max_minutes", None, "Time budget of the whole command, start-up "
                       "included: after a short warm-up that measures the speed, the "
                       "config's schedule (steps and LR boundaries together) is shortened "
                       "to fit if it does not, and kept in <model_dir>/schedule.json for "
                       "reruns.")
    flags.DEFINE_bool("eval", False, "Evaluate every new checkpoint on EVAL_SPLIT while "
                      "training (mAP curves in TensorBoard under eval_<split>/).")
    flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE (Python literal), "
                              "repeatable, e.g. --set LR=0.01.")


def main(argv):
    started_at = time.monotonic()       # the budget counts imports and graph builds too
    error = cli.usage_error(argv, FLAGS.cfg)
    if error is not None:
        return error
    return cli.guarded(lambda: _train(started_at))


def _train(started_at):
    # Here, not at the top: these import TensorFlow (seconds), which must come after
    # the flags are parsed and --verbose has set the console (libs/base/console.py).
    from data.io.dataset import open_run
    from libs.train import runs, time_budget, training
    budget = (time_budget.TimeBudget(FLAGS.max_minutes, started_at=started_at)
              if FLAGS.max_minutes is not None else None)
    cfg = load_config_from_flags(FLAGS.cfg, FLAGS.set)
    run = open_run(cfg, FLAGS.data_dir, FLAGS.reference_dir, FLAGS.model_dir)
    if FLAGS.eval:
        if budget is not None:
            raise runs.TrainingError("--max_minutes works without --eval only")
        results = training.train_and_evaluate(run, max_steps=FLAGS.max_steps)
        step = results["global_step"]
        logging.info("last evaluation at step %d: VOC mAP@0.5 %.4f, COCO mAP %.4f", step,
                     results.get("voc/mAP@0.5", float("nan")),
                     results.get("coco/mAP", float("nan")))
    else:
        step = training.train(run, max_steps=FLAGS.max_steps, budget=budget)
    logging.info("training stopped at step %d; checkpoints and TensorBoard events in %s",
                 step, run.model_dir)


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
