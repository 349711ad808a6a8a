"""Seconds per training step and peak memory of a config, through the real Estimator.

    python bench/train_step.py --cfg cfgs/res101_fewshot.py --data_dir D \
        --reference_dir R --steps 6 --warmup 2 [--set NUM_CLASS=4]

Trains `--steps` steps into a temporary run directory (or --model_dir), times every
step with a SessionRunHook, and prints the median seconds/step after `--warmup` steps,
the proposals and ROIs that flowed through the timed steps (a benchmark that drops
proposals under-counts the second stage), and the process's peak RSS.
"""
import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("cfg", None, "Config file.")
flags.DEFINE_string("data_dir", None, "TFRecords (default: the config's DATA_DIR).")
flags.DEFINE_string("reference_dir", None, "Reference set (default: REFERENCE_DIR).")
flags.DEFINE_string("model_dir", None, "Run directory (default: a temporary one).")
flags.DEFINE_integer("steps", 6, "Steps to run in all.")
flags.DEFINE_integer("warmup", 2, "First steps left out of the median.")
flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE.")
flags.DEFINE_bool("json", False, "Print one JSON line.")


def main(argv):
    del argv
    from libs import cli, training
    from libs.tf_compat import tf

    class StepTimer(tf.train.SessionRunHook):
        def __init__(self):
            self.times, self.counts = [], []

        def before_run(self, run_context):
            self._start = time.perf_counter()
            # the first tower's proposals (model_fn names them "rpn_proposal_boxes")
            proposals = tf.get_default_graph().get_tensor_by_name("rpn_proposal_boxes:0")
            return tf.train.SessionRunArgs({"proposals": proposals})

        def after_run(self, run_context, run_values):
            self.times.append(time.perf_counter() - self._start)
            boxes = run_values.results["proposals"]
            self.counts.append(int((abs(boxes).sum(axis=-1) > 0).sum()))

    cfg = cli.load_config_from_flags(FLAGS.cfg, FLAGS.set)
    model_dir = FLAGS.model_dir or tempfile.mkdtemp(prefix="bench_train_step_")
    run = training.prepare_run(cfg, FLAGS.data_dir, FLAGS.reference_dir, model_dir)
    timer = StepTimer()
    training.train(run, max_steps=FLAGS.steps, hooks=[timer])
    timed = timer.times[FLAGS.warmup:]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    result = {"config": cfg.NAME, "side": cfg.TARGET_SIDE, "towers": cfg.NUM_GPUS,
              "images_per_step": cfg.BATCH_SIZE, "net": cfg.NET_NAME,
              "median_s_per_step": statistics.median(timed) if timed else None,
              "step_times_s": [round(t, 3) for t in timer.times],
              "proposals_per_step": timer.counts, "peak_rss_gib": round(peak_gib, 2)}
    if FLAGS.json:
        print(json.dumps(result))
    else:
        print(f"{cfg.NAME}: side {cfg.TARGET_SIDE}, {cfg.NUM_GPUS} tower(s) x "
              f"{cfg.PER_GPU_IMAGE} image(s), {cfg.NET_NAME}: median "
              f"{result['median_s_per_step']:.2f} s/step over {len(timed)} steps "
              f"(all: {result['step_times_s']}), proposals per step "
              f"{timer.counts}, peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    flags.mark_flag_as_required("cfg")
    app.run(main)
