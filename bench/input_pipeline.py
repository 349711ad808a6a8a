"""Throughput of the TRAIN input pipeline: decode, resize/pad, flip, GT, RPN targets.

    python bench/input_pipeline.py --cfg cfgs/tiny_cpu.py
    python bench/input_pipeline.py --cfg cfgs/res101_fewshot.py --data_dir /tmp/bccd_tfr
    python bench/input_pipeline.py --cfg cfgs/tiny_cpu.py --set TARGET_SIDE=1024 --json

Builds exactly the dataset tools/train.py feeds the Estimator
(data.io.input_fn.make_input_fn in TRAIN mode, the config's TARGET_SIDE, batch size and
flip), pulls batches in a session after a warm-up, and reports images/s as the median
of several timed windows. The batches are consumed inside the graph (a few scalar
reductions of the labels are fetched, not the image), as the model would consume them,
so the figure does not include copying images into Python (--fetch_all does).

Without --data_dir the repo's sample dataset (data/sample/generate.py) is generated and
converted into a temporary directory, which is removed afterwards.

One line of figures goes to stdout (a JSON object with --json); errors are one line
on stderr with exit code 1.
"""
import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Images/s of the TRAIN input pipeline (median of timed windows).")
    parser.add_argument("--cfg", required=True, help="config file, e.g. cfgs/tiny_cpu.py")
    parser.add_argument("--data_dir", default=None,
                        help="converted TFRecords (default: generate and convert the "
                             "sample dataset into a temporary directory)")
    parser.add_argument("--split", default=None,
                        help="split to read (default: the config's TRAIN_SPLIT)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per timed window (default: time-based windows of "
                             "--seconds)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each timed window when --images is not given")
    parser.add_argument("--windows", type=int, default=5,
                        help="number of timed windows (the median is reported)")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds of warm-up before timing (at least 5 batches)")
    parser.add_argument("--sample_images", type=int, default=24,
                        help="images of the generated sample dataset (no --data_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE",
                        help="config override, repeatable, e.g. --set TARGET_SIDE=1024")
    parser.add_argument("--skip_rpn_targets", action="store_true",
                        help="replace the RPN-target step by constant zeros (only to "
                             "measure that step's share; not what training runs)")
    parser.add_argument("--fetch_all", action="store_true",
                        help="also copy every batch (images included) into numpy")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.images is not None and args.images < 1:
        parser.error("--images must be positive")
    if args.seconds <= 0 or args.windows < 1 or args.warmup < 0:
        parser.error("--seconds must be positive, --windows >= 1, --warmup >= 0")
    if args.sample_images < 1:
        parser.error("--sample_images must be positive")
    return args


def machine():
    """{nproc, cpu_model, load_average_1min} of this machine."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"nproc": os.cpu_count(), "cpu_model": model, "load_average_1min": load}


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_sample_data(root, num_images):
    """Generates + converts the sample dataset; returns the TFRecord directory."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io import convert
    from data.sample.generate import generate_voc_dataset

    voc = os.path.join(root, "voc")
    generate_voc_dataset(voc, num_train=num_images, num_val=0, seed=0)
    data_dir = os.path.join(root, "data")
    convert.convert_dataset(
        "voc", os.path.join(voc, "JPEGImages"), os.path.join(voc, "Annotations"),
        data_dir, split_file=os.path.join(voc, "ImageSets", "Main", "train.txt"),
        split="train", progress_every_seconds=1e9)
    return data_dir


@contextlib.contextmanager
def _rpn_targets_skipped(input_lib, skip):
    """While active (and `skip`), the pipeline's RPN-target step gives constant zeros
    of the same shapes; the real module is put back afterwards."""
    if not skip:
        yield
        return
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.tf_compat import tf

    def no_targets(anchors, gt_boxes, positive_iou, negative_iou, minibatch_size,
                   *unused_args, **unused_kwargs):
        del gt_boxes, positive_iou, negative_iou, unused_args, unused_kwargs
        return (tf.zeros([anchors.shape[0]], tf.int32),
                tf.zeros([minibatch_size, 4], tf.float32))

    real = input_lib.rpn_targets
    input_lib.rpn_targets = type("NoRpnTargets", (), {
        "build_rpn_targets": staticmethod(no_targets)})
    try:
        yield
    finally:
        input_lib.rpn_targets = real


def count_records(files):
    """Records in TFRecord files, from the framing alone (length, crc, data, crc)."""
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            while True:
                header = handle.read(12)
                if len(header) < 12:
                    break
                length = struct.unpack("<Q", header[:8])[0]
                handle.seek(length + 4, os.SEEK_CUR)
                total += 1
    return total


def measure(cfg, data_dir, split, args):
    """Runs the pipeline; returns the dict of figures."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io import input_fn as input_lib
    from libs.base.tf_compat import seeded_graph, tf
    from libs.box_utils.anchors import config_anchors

    files = input_lib.tfrecord_files(data_dir, split)
    batch_size = cfg.PER_GPU_IMAGE
    with seeded_graph().as_default():
        with _rpn_targets_skipped(input_lib, args.skip_rpn_targets):
            dataset = input_lib.make_input_fn(cfg, input_lib.TRAIN, data_dir=data_dir,
                                              split=split)()
        features, labels = tf.data.make_one_shot_iterator(dataset).get_next()
        # Cheap per-batch statistics: they depend on the whole element, so running
        # them pulls a full batch through the pipeline without copying the image out.
        stats = tf.stack([
            tf.reduce_sum(tf.cast(labels["gt_labels"] > 0, tf.float32)),
            tf.reduce_sum(tf.cast(tf.equal(labels["rpn_labels"], 1), tf.float32)),
            tf.reduce_sum(tf.cast(labels["rpn_labels"] >= 0, tf.float32)),
        ])
        with tf.control_dependencies([features["image"]]):
            stats = tf.identity(stats)
        fetch = [stats, features, labels] if args.fetch_all else stats
        with tf.Session() as sess:
            start = time.perf_counter()
            warm_batches = 0
            while warm_batches < 5 or time.perf_counter() - start < args.warmup:
                sess.run(fetch)
                warm_batches += 1
            warmup_seconds = time.perf_counter() - start

            figures_machine = machine()  # load average before the timed windows
            rates, totals, batches = [], [0.0, 0.0, 0.0], 0
            cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
            for _ in range(args.windows):
                count = 0
                begin = time.perf_counter()
                while True:
                    result = sess.run(fetch)
                    values = result[0] if args.fetch_all else result
                    totals = [t + float(v) for t, v in zip(totals, values)]
                    count += batch_size
                    batches += 1
                    elapsed = time.perf_counter() - begin
                    if (args.images is not None and count >= args.images) or \
                            (args.images is None and elapsed >= args.seconds):
                        break
                rates.append(count / elapsed)
            cpu_seconds = _cpu_seconds() - cpu_start
            wall_seconds = time.perf_counter() - wall_start

    images = batches * batch_size
    median = statistics.median(rates)
    figures = {
        "config": cfg.NAME,
        "target_side": cfg.TARGET_SIDE,
        "batch_size": batch_size,
        "flip": bool(cfg.FLIP_HORIZONTAL),
        "data_dir": os.path.abspath(data_dir),
        "split": split,
        "records": count_records(files),
        "anchors": int(config_anchors(cfg).shape[0]),
        "images_per_second": round(median, 2),
        "ms_per_image": round(1000.0 / median, 3),
        "window_rates": [round(r, 2) for r in rates],
        "min_rate": round(min(rates), 2),
        "max_rate": round(max(rates), 2),
        "window": (f"{args.images} images" if args.images is not None
                   else f"{args.seconds:g} s"),
        "warmup_seconds": round(warmup_seconds, 2),
        "warmup_batches": warm_batches,
        "timed_images": images,
        "gt_per_image": round(totals[0] / images, 2),
        "rpn_positives_per_image": (round(totals[1] / images, 2)
                                    if not args.skip_rpn_targets else None),
        "rpn_sampled_per_image": (round(totals[2] / images, 2)
                                  if not args.skip_rpn_targets else None),
        # CPU time of this process (all its threads) per image: unlike images/s it
        # hardly changes when other processes compete for the CPUs.
        "cpu_seconds_per_image": round(cpu_seconds / images, 5),
        "cpus_used": round(cpu_seconds / wall_seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rpn_targets": not args.skip_rpn_targets,
        "fetch_all": bool(args.fetch_all),
        "tensorflow": tf.__version__ if hasattr(tf, "__version__") else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    figures.update(figures_machine)
    return figures


def format_line(f):
    skipped = "" if f["rpn_targets"] else " WITHOUT RPN targets"
    return (f"input pipeline TRAIN{skipped} {f['config']} side {f['target_side']} batch "
            f"{f['batch_size']} flip {'on' if f['flip'] else 'off'} | {f['records']} "
            f"records in {f['data_dir']} ({f['split']}) | {f['images_per_second']:.1f} "
            f"images/s = {f['ms_per_image']:.2f} ms/image (median of "
            f"{len(f['window_rates'])} windows of {f['window']}; min "
            f"{f['min_rate']:.1f}, max {f['max_rate']:.1f}) | per image: "
            f"{f['gt_per_image']:.1f} GT, " + (
                f"{f['rpn_positives_per_image']:.1f} RPN positives, "
                f"{f['rpn_sampled_per_image']:.1f} sampled of {f['anchors']} anchors"
                if f["rpn_targets"] else f"RPN targets skipped ({f['anchors']} anchors)")
            + f" | {f['cpu_seconds_per_image'] * 1000:.1f} CPU-ms/image, process "
            f"used {f['cpus_used']:.2f} of {f['nproc']} CPUs ({f['cpu_model']}; load "
            f"average {f['load_average_1min']} before timing) | peak RSS "
            f"{f['peak_rss_mib']:.0f} MiB")


def main(argv=None):
    args = parse_args(argv)
    # Imported after argument parsing: a bad flag fails before TensorFlow loads.
    from data.io.input_fn import DataError
    from libs.configs import ConfigError, load_config, parse_overrides

    temp_dir = None
    try:
        cfg = load_config(args.cfg, parse_overrides(args.overrides))
        data_dir = args.data_dir
        if data_dir is None:
            temp_dir = tempfile.mkdtemp(prefix="bench_input_")
            data_dir = make_sample_data(temp_dir, args.sample_images)
        split = args.split or cfg.TRAIN_SPLIT
        figures = measure(cfg, data_dir, split, args)
        if args.data_dir is None:
            figures["data_dir"] = f"<generated sample, {args.sample_images} images>"
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    print(json.dumps(figures, sort_keys=True) if args.json else format_line(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
