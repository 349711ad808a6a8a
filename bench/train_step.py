"""Seconds per training step and peak memory of a config, through the real Estimator.

    python bench/train_step.py --cfg cfgs/res101_fewshot.py --data_dir D \
        --reference_dir R --steps 6 --warmup 2 [--set NUM_CLASS=4]

Trains `--steps` steps into a temporary run directory (or --model_dir), times every
step with a SessionRunHook, and prints the median seconds/step after `--warmup` steps,
the proposals and sampled ROIs that flowed through the timed steps (first tower; a
benchmark that drops proposals under-counts the second stage), and the process's peak
RSS.

With --breakdown (default on) one more step runs traced (tf.RunOptions FULL_TRACE, not
in the median) and its op time is summed per block of the model, forward and backward
together: query backbone + FPN, reference branch, RPN, Fast R-CNN head, optimizer
(clipping + momentum), other (input, L2, summaries). Op times overlap on several cores,
so the shares are of summed op time, not of wall time. The traced step also gives the
FLOPs of its convolutions and matrix products (forward and both backward passes, from
the shapes the step really ran), so the step's achieved GFLOP/s is printed beside a
2048 x 2048 float32 matmul's, measured in the same process (--matmul): what the
hardware can do against what the step gets. CPU seconds per step (user + system, all
threads) are printed beside the wall time: on a loaded machine they move less.
"""
import collections
import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from data.io.dataset import open_run  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("cfg", None, "Config file.")
flags.DEFINE_string("data_dir", None, "TFRecords (default: the config's DATA_DIR).")
flags.DEFINE_string("reference_dir", None, "Reference set (default: REFERENCE_DIR).")
flags.DEFINE_string("model_dir", None, "Run directory (default: a temporary one).")
flags.DEFINE_integer("steps", 6, "Steps to run in all.")
flags.DEFINE_integer("warmup", 2, "First steps left out of the median.")
flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE.")
flags.DEFINE_bool("json", False, "Print one JSON line.")
flags.DEFINE_bool("breakdown", True, "Trace one extra step and print op time per block.")
flags.DEFINE_integer("top_ops", 0, "With --breakdown, also print the N ops and op types "
                     "that took the most time in the traced step.")
flags.DEFINE_bool("matmul", True, "Measure a 2048 x 2048 float32 matmul's GFLOP/s in "
                  "this process, for scale.")

# op type -> which input holds the kernel ([kh, kw, (kd,) cin, cout] or a matrix) and
# which tensor has the spatial size of the forward output.
_CONV_FORWARD = ("Conv2D", "Conv3D")
_CONV_BACKWARD = ("Conv2DBackpropInput", "Conv2DBackpropFilter", "Conv3DBackpropInputV2",
                  "Conv3DBackpropFilterV2")

BLOCKS = ("query backbone+FPN", "reference branch", "RPN", "Fast R-CNN head", "optimizer",
          "other")


def block_of(node_name, net_name):
    """Which block of the model an op of the training graph belongs to (by its name;
    gradient ops carry their forward op's scope after "gradients/")."""
    name = node_name
    if "reference_branch" in name or "background_prototype" in name:
        return "reference branch"
    if (name.startswith("Momentum") or "/Momentum" in name or "clip_by_norm" in name
            or "ApplyMomentum" in name):
        return "optimizer"
    if "rpn_" in name:
        return "RPN"
    if "fast_rcnn" in name:
        return "Fast R-CNN head"
    if net_name in name or "build_pyramid" in name:
        return "query backbone+FPN"
    return "other"


def breakdown(step_stats, net_name):
    """{block: op seconds} of one traced step."""
    seconds = collections.Counter({block: 0.0 for block in BLOCKS})
    for device in step_stats.dev_stats:
        for node in device.node_stats:
            micros = node.op_end_rel_micros - node.op_start_rel_micros
            seconds[block_of(node.node_name, net_name)] += micros / 1e6
    return dict(seconds)


def top_ops(step_stats, count):
    """([(op seconds, node name, op type)], [(op seconds, op type, calls)]) of a traced step."""
    by_node, by_type, calls = collections.Counter(), collections.Counter(), collections.Counter()
    kinds = {}
    for device in step_stats.dev_stats:
        for node in device.node_stats:
            seconds = (node.op_end_rel_micros - node.op_start_rel_micros) / 1e6
            kind = node.timeline_label.split("=")[-1].split("(")[0].strip() or "?"
            name = node.node_name.split(":")[0]
            by_node[name] += seconds
            kinds[name] = kind
            by_type[kind] += seconds
            calls[kind] += 1
    nodes = [(s, n, kinds[n]) for n, s in by_node.most_common(count)]
    types = [(s, k, calls[k]) for k, s in by_type.most_common(count)]
    return nodes, types


def _shapes_of_step(step_stats):
    """{(node name, output slot): shape} of every tensor the traced step produced."""
    shapes = {}
    for device in step_stats.dev_stats:
        for node in device.node_stats:
            for output in node.output:
                shapes[(node.node_name, output.slot)] = [
                    d.size for d in output.tensor_description.shape.dim]
    return shapes


def op_flops(op, shapes):
    """Multiply-adds x 2 of a convolution / matrix product op of the graph, with the
    shapes the traced step ran (0 for other ops). A backward op costs what its forward
    op does: grad-input and grad-filter each."""
    def shape(tensor):
        found = shapes.get((tensor.op.name, tensor.value_index))
        return found if found is not None else tensor.shape.as_list()

    try:
        if op.type in _CONV_FORWARD:
            kernel, out = op.inputs[1].shape.as_list(), shape(op.outputs[0])
        elif op.type in _CONV_BACKWARD:
            kernel = (op.outputs[0].shape.as_list() if "Filter" in op.type
                      else op.inputs[1].shape.as_list())
            if "Filter" in op.type and None in kernel:
                kernel = shape(op.outputs[0])
            out = shape(op.inputs[2])             # the gradient of the forward output
        elif op.type == "MatMul":
            a, b = shape(op.inputs[0]), shape(op.inputs[1])
            m, k = (a[1], a[0]) if op.get_attr("transpose_a") else (a[0], a[1])
            n = b[0] if op.get_attr("transpose_b") else b[1]
            return 2 * m * k * n
        else:
            return 0
        return 2 * int(np.prod(out)) * int(np.prod(kernel[:-1]))
    except (TypeError, ValueError, IndexError):
        return 0


def step_flops(graph, step_stats, net_name):
    """{block: FLOPs} of the traced step (ops the step ran; fused ops keep their name)."""
    shapes = _shapes_of_step(step_stats)
    ran = {node.node_name for device in step_stats.dev_stats for node in device.node_stats}
    flops = collections.Counter({block: 0 for block in BLOCKS})
    for op in graph.get_operations():
        if op.type in _CONV_FORWARD + _CONV_BACKWARD + ("MatMul",):
            # oneDNN fuses conv + bias + ReLU into a node named after the last fused op
            names = {op.name} | {c.name for c in op.outputs[0].consumers()}
            if ran & names:
                flops[block_of(op.name, net_name)] += op_flops(op, shapes)
    return dict(flops)


def matmul_gflops(tf, size=2048, repeats=10):
    """GFLOP/s of a float32 size x size matmul in this process (best of `repeats`)."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.tf_compat import seeded_graph
    graph = seeded_graph(0)
    with graph.as_default():
        a = tf.Variable(tf.random.uniform([size, size]))
        b = tf.Variable(tf.random.uniform([size, size]))
        product = tf.reduce_sum(tf.matmul(a, b))
        with tf.Session(graph=graph) as session:
            session.run(tf.global_variables_initializer())
            session.run(product)
            best = min(_timed(session.run, product) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv):
    del argv
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.tf_compat import tf
    from libs.configs import load_config_from_flags
    from libs.train import training

    class StepTimer(tf.train.SessionRunHook):
        def __init__(self, trace_step=None):
            self.times, self.counts, self.roi_counts, self.cpu_times = [], [], [], []
            self.trace_step = trace_step      # index of the call to trace (not timed)
            self.calls = 0
            self.step_stats = None
            self.graph = None

        def begin(self):
            self.graph = tf.get_default_graph()

        def before_run(self, run_context):
            self._start = time.perf_counter()
            self._cpu_start = _cpu_seconds()
            # the first tower's proposals (model_fn names them "rpn_proposal_boxes")
            graph = tf.get_default_graph()
            proposals = graph.get_tensor_by_name("rpn_proposal_boxes:0")
            roi_labels = graph.get_tensor_by_name("fast_rcnn/roi_labels:0")
            options = None
            if self.calls == self.trace_step:
                options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
            return tf.train.SessionRunArgs({"proposals": proposals, "rois": roi_labels},
                                           options=options)

        def after_run(self, run_context, run_values):
            elapsed = time.perf_counter() - self._start
            boxes = run_values.results["proposals"]
            if self.calls == self.trace_step:
                self.step_stats = run_values.run_metadata.step_stats
            else:
                self.times.append(elapsed)
                self.cpu_times.append(_cpu_seconds() - self._cpu_start)
                self.counts.append(int((abs(boxes).sum(axis=-1) > 0).sum()))
                self.roi_counts.append(int((run_values.results["rois"] >= 0).sum()))
            self.calls += 1

    model_dir = FLAGS.model_dir or tempfile.mkdtemp(prefix="bench_train_step_")
    run = open_run(load_config_from_flags(FLAGS.cfg, FLAGS.set), FLAGS.data_dir,
                   FLAGS.reference_dir, model_dir)
    cfg = run.cfg                   # with the dataset's values (libs/train/runs.py)
    timer = StepTimer(trace_step=FLAGS.steps if FLAGS.breakdown else None)
    training.train(run, max_steps=FLAGS.steps + (1 if FLAGS.breakdown else 0),
                   hooks=[timer])
    timed = timer.times[FLAGS.warmup:]
    cpu_timed = timer.cpu_times[FLAGS.warmup:]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    result = {"config": cfg.NAME, "side": cfg.TARGET_SIDE, "towers": cfg.NUM_GPUS,
              "images_per_step": cfg.BATCH_SIZE, "net": cfg.NET_NAME,
              "median_s_per_step": statistics.median(timed) if timed else None,
              "median_cpu_s_per_step": statistics.median(cpu_timed) if cpu_timed else None,
              "step_times_s": [round(t, 3) for t in timer.times],
              "proposals_per_step": timer.counts, "rois_per_step": timer.roi_counts,
              "peak_rss_gib": round(peak_gib, 2)}
    if timer.step_stats is not None:
        result["op_seconds_per_block"] = {
            k: round(v, 3) for k, v in breakdown(timer.step_stats, cfg.NET_NAME).items()}
        flops = step_flops(timer.graph, timer.step_stats, cfg.NET_NAME)
        result["gflop_per_block"] = {k: round(v / 1e9, 3) for k, v in flops.items()}
        result["gflop_per_step"] = round(sum(flops.values()) / 1e9, 3)
        if result["median_s_per_step"]:
            result["achieved_gflops"] = round(
                result["gflop_per_step"] / result["median_s_per_step"], 1)
    if FLAGS.matmul:
        result["matmul_gflops"] = round(matmul_gflops(tf), 1)
    if FLAGS.json:
        print(json.dumps(result))
    else:
        print(f"{cfg.NAME}: side {cfg.TARGET_SIDE}, {cfg.NUM_GPUS} tower(s) x "
              f"{cfg.PER_GPU_IMAGE} image(s), {cfg.NET_NAME}: median "
              f"{result['median_s_per_step']:.3f} s/step ("
              f"{result['median_cpu_s_per_step']:.3f} CPU-s) over {len(timed)} steps; "
              f"proposals per timed step {min(timer.counts[FLAGS.warmup:] or [0])}-"
              f"{max(timer.counts[FLAGS.warmup:] or [0])}, ROIs "
              f"{min(timer.roi_counts[FLAGS.warmup:] or [0])}-"
              f"{max(timer.roi_counts[FLAGS.warmup:] or [0])}; peak RSS {peak_gib:.2f} GiB")
        if "gflop_per_step" in result:
            print(f"  {result['gflop_per_step']:.1f} GFLOP/step (convolutions and matrix "
                  f"products, forward + backward): {result.get('achieved_gflops', 0):.1f} "
                  f"GFLOP/s achieved" + (f"; a 2048^2 matmul here: "
                                         f"{result['matmul_gflops']:.1f} GFLOP/s"
                                         if "matmul_gflops" in result else ""))
        blocks = result.get("op_seconds_per_block")
        if blocks:
            total = sum(blocks.values()) or 1.0
            print(f"  one traced step per block (op time sum {total:.2f} s):")
            for block in BLOCKS:
                print(f"    {block:<20} {blocks[block]:8.3f} s  "
                      f"{100 * blocks[block] / total:5.1f}%  "
                      f"{result['gflop_per_block'][block]:7.2f} GFLOP")
        if FLAGS.top_ops and timer.step_stats is not None:
            nodes, types = top_ops(timer.step_stats, FLAGS.top_ops)
            print("  top op types:")
            for seconds, kind, count in types:
                print(f"    {seconds:8.3f} s  {kind} x{count}")
            print("  top ops:")
            for seconds, name, kind in nodes:
                print(f"    {seconds:8.3f} s  {name} ({kind})")


if __name__ == "__main__":
    flags.mark_flag_as_required("cfg")
    app.run(main)
