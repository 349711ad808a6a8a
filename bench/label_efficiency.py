"""The label-efficiency curve: mAP against the number of labelled training images.

    python bench/label_efficiency.py --dataset bccd --peer_python ../peer-venv/bin/python
    python bench/label_efficiency.py --dataset deeppcb --peer_python ../peer-venv/bin/python
    python bench/label_efficiency.py --dataset bccd --table     # print what is done
    # the training-length pilot (docs/small_data.md): one subset at several lengths
    python bench/label_efficiency.py --dataset bccd --ns 25 --seeds 0 \
        --steps 500,1500,3000 --methods comparison,fc

For each N in --ns (default 10, 25, 50, 100, all) and seed (3 seeds for N <= 50, one
above), N images of the train split (a seeded permutation, redrawn until its first
min(--ns) images hold every class, so the subsets of one seed are nested: the 10 are
among the 25), every object of those images kept, converted with the dataset's full
class list; the reference set is cropped from those N images only (up to 5 per class;
NUM_SUPPORTS is the rarest class's count when below 5). Then per method, trained for
the same number of steps (training_steps: one rule for all three) and scored on the
full val split by our evaluator:

  comparison  the dataset's shipped config (tools/train.py, tools/eval.py);
  fc          the same config with CLASSIFIER='fc';
  peer        torchvision's Faster R-CNN on the same ImageNet weights, trained in the
              peer's own venv (bench/peer_detector.py, --peer_python), its detections
              scored by libs.evaluation's DetectionEvaluator on the same val records.

Every run is kept in <out>/results.json (a rerun skips what is done, so the curve can be
built over several sessions), with its steps and the minutes its training took. Prints
the table (mean +- std over seeds); --plot draws mAP@0.5 against N.
"""
import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, read_json, run_tool, write_json  # noqa: E402

DATASETS = os.path.join(REPO, "..", "shared", "datasets")
PRESETS = {
    "bccd": {"voc": os.path.join(DATASETS, "bccd"), "cfg": "cfgs/bccd_cpu.py"},
    "deeppcb": {"voc": os.path.join(DATASETS, "deeppcb"), "cfg": "cfgs/deeppcb_cpu.py"},
    # The generated sample (make demo's): a quick run of the whole protocol (tests).
    "sample": {"voc": os.path.join(REPO, "output", "sample", "voc"),
               "cfg": "cfgs/tiny_fewshot.py"},
}
METHODS = ("comparison", "fc", "peer")
SETS = {"comparison": [], "fc": ["CLASSIFIER='fc'"], "peer": []}
REFERENCES_PER_CLASS = 5
SEEDS_UP_TO = 50              # N <= this: every seed of --seeds; above: the first only
EVERY_CLASS_IN_FIRST = 10     # a seed's first 10 images hold every class (smaller N: theirs)
# The config values the peer mirrors (bench/peer_detector.py reads them).
PEER_FIELDS = (
    "BACKBONE_FROZEN_STAGES", "FPN_CHANNELS", "ANCHOR_RATIOS", "BASE_ANCHOR_SIZE_LIST",
    "TARGET_SIDE", "RPN_TOP_K_NMS", "RPN_CHANNELS", "RPN_PROPOSALS_TRAIN",
    "RPN_PROPOSALS_INFERENCE", "RPN_NMS_IOU_THRESHOLD", "RPN_POSITIVE_IOU",
    "RPN_NEGATIVE_IOU", "RPN_MINIBATCH_SIZE", "RPN_POSITIVE_RATIO", "HEAD_CHANNELS",
    "FAST_RCNN_POSITIVE_IOU", "FAST_RCNN_MINIBATCH_SIZE", "FAST_RCNN_POSITIVE_RATIO",
    "EVAL_SCORE_THRESHOLD", "DETECTION_NMS_THRESHOLD", "DETECTION_MAX_INSTANCES",
    "FLIP_HORIZONTAL", "FLIP_VERTICAL", "MIN_GT_SIZE", "LR_VALUES", "BOUNDARY",
    "WEIGHT_DECAY", "MOMENTUM", "CLIP_GRADIENT_NORM", "MAX_STEPS")


def training_steps(cfg, num_images):
    """The one rule for every method, the config's own: its epochs over the N images,
    but at least its MIN_STEPS (the epochs of a small dataset are few steps: the
    pilot in docs/small_data.md measured what that costs)."""
    return int(cfg.replace(NUM_TRAIN_IMAGES=num_images).MAX_STEPS)


def draw_permutation(train_ids, objects_by_id, classes, smallest, seed):
    """A seeded order of the train ids whose first `smallest` hold every class."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        order = rng.permutation(sorted(train_ids)).tolist()
        present = {name for image_id in order[:smallest] for name in objects_by_id[image_id]}
        if set(classes) <= present:
            return order
    raise RuntimeError(f"no draw of {smallest} images holds every class {classes}")


def prepare_subset(voc, out_dir, ids, classes):
    """TFRecords (the subset's train + the full val) and references of one subset:
    (data_dir, reference_dir, supports per class). Kept when already there."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io import convert, reference_set
    data_dir = os.path.join(out_dir, "data")
    reference_dir = os.path.join(out_dir, "references")
    manifest = os.path.join(out_dir, "subset.json")
    done = read_json(manifest)
    if done and done["ids"] == ids:
        return data_dir, reference_dir, done["supports"]
    image_dir, annotations = os.path.join(voc, "JPEGImages"), os.path.join(voc, "Annotations")
    split_file = os.path.join(out_dir, "train.txt")
    os.makedirs(out_dir, exist_ok=True)
    with open(split_file, "w") as handle:
        handle.write("\n".join(ids) + "\n")
    quiet = {"progress_every_seconds": 1e9}
    convert.convert_dataset("voc", image_dir, annotations, data_dir, split_file=split_file,
                            split="train", classes=classes, **quiet)
    convert.convert_dataset("voc", image_dir, annotations, data_dir, split="val",
                            split_file=os.path.join(voc, "ImageSets", "Main", "val.txt"),
                            classes=classes, **quiet)
    images, _ = convert.read_annotations("voc", image_dir, annotations, split_file=split_file)
    summary = reference_set.crop_references(images, reference_dir,
                                            per_class=REFERENCES_PER_CLASS, classes=classes,
                                            **quiet)
    supports = min(REFERENCES_PER_CLASS, min(summary["classes"].values()))
    write_json(manifest, {"ids": ids, "supports": supports,
                          "objects": summary["classes"]})
    return data_dir, reference_dir, supports


def ours_flags(args, method, variant_sets, data_dir, reference_dir, model_dir, steps,
               supports, seed):
    """tools/train.py's and eval.py's flags; steps None: the config's own schedule
    (a --minutes run fits it to the budget)."""
    sets = [*SETS[method], *variant_sets, f"SEED={seed}",
            *([f"SCHEDULE_STEPS={steps}"] if steps is not None else []),
            f"NUM_SUPPORTS={supports}", "SAVE_CHECKPOINTS_STEPS=100000",
            "SAVE_SUMMARY_STEPS=500"]
    return ["--cfg", args.cfg, "--data_dir", data_dir, "--reference_dir", reference_dir,
            "--model_dir", model_dir, *[f"--set={s}" for s in sets]]


def evaluate_ours(flags, model_dir):
    report = os.path.join(model_dir, "eval_val.json")
    run_tool("eval.py", *flags, "--report", report, "--nohtml")
    return read_json(report)["results"]


def run_ours(args, method, data_dir, reference_dir, model_dir, steps, supports, seed,
             budget=None):
    """Trains and evaluates one of our runs: (results, minutes, steps trained).
    budget: minutes (tools/train.py --max_minutes) instead of `steps`."""
    flags = ours_flags(args, method, args.set, data_dir, reference_dir, model_dir,
                       None if budget else steps, supports, seed)
    # A directory left by an interrupted run (maybe of another config) would be resumed.
    shutil.rmtree(model_dir, ignore_errors=True)
    started = time.monotonic()
    run_tool("train.py", *flags, *(["--max_minutes", f"{budget:g}"] if budget else []))
    minutes = (time.monotonic() - started) / 60
    if budget:
        # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
        import tensorflow as tf
        last = tf.train.latest_checkpoint(model_dir)
        steps = int(last.rsplit("-", 1)[1])
    return evaluate_ours(flags, model_dir), minutes, steps


def rescore(args, results):
    """Scores our finished runs again with the current code and config (a change that
    only touches detection, e.g. DETECTION_CLASSES, needs no retraining); a run whose
    checkpoint or options are gone is reported and keeps its figures."""
    for key, row in sorted(results.items()):
        method = row["method"].split("+")[0]
        if method == "peer" or row.get("restored_from"):
            continue        # no checkpoint of ours: the peer's, or a restored row
        split_dir = os.path.join(args.out, "subsets", f"n{row['n']}_s{row['seed']}")
        model_dir = os.path.join(args.out, "runs", key.replace("/", "_"))
        flags = ours_flags(args, method, row["sets"], os.path.join(split_dir, "data"),
                           os.path.join(split_dir, "references"), model_dir,
                           row["steps"], row["supports"], row["seed"])
        try:
            scores = evaluate_ours(flags, model_dir)
        except RuntimeError as error:           # its last line says why
            print(f"{key}: not rescored: {str(error).strip().splitlines()[-1]}",
                  file=sys.stderr)
            continue
        before = row["results"]["voc/mAP@0.5"]
        row["results"] = {k: v for k, v in scores.items() if k.startswith(("voc/", "coco/"))}
        print(f"{key}: val mAP@0.5 {before:.3f} -> {row['results']['voc/mAP@0.5']:.3f}",
              flush=True)
        write_json(os.path.join(args.out, "results.json"), results)


def peer_settings(cfg, num_images, steps):
    """The config's values for the peer, with the schedule of `steps` steps."""
    fitted = cfg.replace(NUM_TRAIN_IMAGES=num_images, SCHEDULE_STEPS=steps)
    return {field: getattr(fitted, field) for field in PEER_FIELDS}


def val_ground_truth(data_dir):
    """{file name: (boxes [N, 4], labels [N], difficult [N])} of the val records."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io.input_fn import read_records
    return {record["filename"].decode(): (record["boxes"], record["labels"],
                                          record["difficult"])
            for record in read_records(data_dir, "val")}


def score_detections(data_dir, class_names, detections):
    """Our evaluator's results for detections {file name: {boxes, scores, labels}} of
    the val split of `data_dir` (an image without an entry has no detection)."""
    from libs.evaluation.detection_evaluator import DetectionEvaluator
    evaluator = DetectionEvaluator(class_names)
    for name, (boxes, labels, difficult) in sorted(val_ground_truth(data_dir).items()):
        evaluator.add_ground_truth(name, boxes, labels, difficult)
        found = detections.get(name, {"boxes": [], "scores": [], "labels": []})
        evaluator.add_detections(name, np.array(found["boxes"], np.float32).reshape(-1, 4),
                                 np.array(found["scores"], np.float32),
                                 np.array(found["labels"], np.int64))
    return evaluator.evaluate()


def run_peer(args, cfg, split_dir, data_dir, model_dir, classes, num_images, steps, seed,
             budget=None):
    """Trains the peer and scores its detections: (results, minutes, steps trained).
    budget: minutes (bench/peer_budget.py: ours' rule) instead of `steps`."""
    os.makedirs(model_dir, exist_ok=True)
    settings = os.path.join(model_dir, "settings.json")
    write_json(settings, peer_settings(cfg, num_images, None if budget else steps))
    length = (["--max_minutes", f"{budget:g}", "--cfg", args.cfg] if budget
              else ["--steps", str(steps)])
    command = [args.peer_python, os.path.join(REPO, "bench", "peer_detector.py"),
               "--voc", args.voc, "--train_list", os.path.join(split_dir, "train.txt"),
               "--eval_list", os.path.join(args.voc, "ImageSets", "Main", "val.txt"),
               "--classes", ",".join(classes), "--settings", settings,
               *length, "--seed", str(seed), "--out", model_dir]
    started = time.monotonic()
    log = os.path.join(model_dir, "peer.log")
    with open(log, "w", encoding="utf-8") as handle:    # its progress lines
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                check=False)
    if result.returncode != 0:
        with open(log, encoding="utf-8") as handle:
            raise RuntimeError(f"the peer failed ({log}):\n{handle.read()[-3000:]}")
    minutes = (time.monotonic() - started) / 60
    trained = read_json(os.path.join(model_dir, "trained.json"))
    detections = read_json(os.path.join(model_dir, "detections.json"))
    # Start-up and training, as for ours (whose evaluation is another command).
    minutes -= trained["detect_seconds"] / 60
    return score_detections(data_dir, classes, detections), minutes, trained["steps"]


def subsets(args, train_ids, objects_by_id, classes):
    """[(N label, N, seed, ids)] in the order they run: by seed, then N."""
    numbers = [len(train_ids) if n == "all" else int(n) for n in args.ns]
    # Fixed, not the smallest N asked for: `--ns 50` alone must draw the same images as
    # the full curve (its runs are resumed and compared with the others).
    smallest = min([EVERY_CLASS_IN_FIRST, *numbers])
    order = {}
    for seed in args.seeds:
        order[seed] = draw_permutation(train_ids, objects_by_id, classes, smallest, seed)
    planned = []
    for seed in args.seeds:
        for label, n in zip(args.ns, numbers):
            if (n > SEEDS_UP_TO or label == "all") and seed != args.seeds[0]:
                continue        # one run: larger subsets vary less, "all" not at all
            ids = sorted(train_ids) if label == "all" else sorted(order[seed][:n])
            planned.append((label, n, seed if label != "all" else 0, ids))
    return planned


def run_key(method, label, seed, steps, budget=None):
    """A run's name in results.json; a --minutes run is named by its budget."""
    return f"{method}/n{label}/s{seed}/" + (f"min{budget:g}" if budget else f"steps{steps}")


def run_length(row):
    """What a run's training length is grouped by: its steps, or '30 min'."""
    return f"{row['budget_minutes']:g} min" if row.get("budget_minutes") else row["steps"]


def summarise(results, metric="voc/mAP@0.5"):
    """{(method, N label, steps): (mean, std, count, coco mean, minutes mean)}."""
    groups = {}
    for row in results.values():
        groups.setdefault((row["method"], row["n"], run_length(row)), []).append(row)
    table = {}
    for key, rows in groups.items():
        values = [r["results"][metric] for r in rows]
        coco = [r["results"]["coco/mAP"] for r in rows]
        table[key] = (statistics.mean(values),
                      statistics.stdev(values) if len(values) > 1 else 0.0, len(values),
                      statistics.mean(coco), statistics.mean(r["minutes"] for r in rows))
    return table


def method_order(name):
    """comparison, fc, peer, then variants (comparison+fill, ...) by name."""
    base = name.split("+")[0]
    return (METHODS.index(base) if base in METHODS else len(METHODS), "+" in name, name)


def n_order(label):
    return math.inf if label == "all" else int(label)


def format_table(results):
    table = summarise(results)
    lines = [("| N | method | steps | val mAP@0.5 (mean +- std, seeds) | COCO mAP | "
              "train minutes |"), "|---|---|---|---|---|---|"]
    for (method, label, steps), (mean, std, count, coco, minutes) in sorted(
            table.items(), key=lambda item: (n_order(item[0][1]), str(item[0][2]),
                                             method_order(item[0][0]))):
        steps = f"{steps:,}" if isinstance(steps, int) else steps
        lines.append(f"| {label} | {method} | {steps} | {mean:.3f} +- {std:.3f} ({count}) "
                     f"| {coco:.3f} | {minutes:.1f} |")
    return "\n".join(lines)


def curve_rows(results):
    """The runs the curve is drawn from: the three methods as shipped at the rule's
    steps (not the pilot's other lengths, nor the --tag variants); at N = all, also
    runs at equal minutes (issue 31's item 4, which the curve reuses for its last
    point: a full-data run at the rule's steps costs an hour or more per method)."""
    return {key: row for key, row in results.items() if row["method"] in METHODS
            and (row.get("rule") or (row["n"] == "all" and row.get("budget_minutes")))}


def plot(results, path, title):
    """mAP@0.5 (mean, std as error bars) against N, one line per method."""
    # Here, not at the top: matplotlib's import is slow and only this needs it.
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    curve = curve_rows(results)
    table = summarise(curve)
    full = max((int(r["num_images"]) for r in results.values()), default=0)
    budgets = sorted({r["budget_minutes"] for r in curve.values() if r.get("budget_minutes")})
    figure, axis = pyplot.subplots(figsize=(6, 4))
    for method in sorted({m for m, _, _ in table}, key=method_order):
        points = sorted(((full if label == "all" else int(label)), mean, std)
                        for (m, label, _), (mean, std, *_rest) in table.items()
                        if m == method)
        if points:
            xs, ys, errors = zip(*points)
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=method)
    axis.set_xscale("log")
    ticks = sorted({full if label == "all" else int(label) for _, label, _ in table})
    numbered = {int(label) for _, label, _ in table if label != "all"}
    axis.set_xticks(ticks)
    axis.set_xticklabels([f"all ({t})" if t == full and full not in numbered else str(t)
                          for t in ticks])
    axis.minorticks_off()
    axis.set_xlabel("labelled training images (N)" + (
        f"; all: equal minutes ({', '.join(f'{b:g}' for b in budgets)} min)"
        if budgets else ""))
    axis.set_ylabel("val mAP@0.5")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--ns", default="10,25,50,100,all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", default=None,
                        help="comma-separated training lengths instead of the rule "
                             "(the pilot); default training_steps(N)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="train each run for this many minutes instead (ours: "
                             "tools/train.py --max_minutes; the peer: the same budget "
                             "code, bench/peer_budget.py): equal minutes, not steps")
    parser.add_argument("--set", action="append", default=[],
                        help="FIELD=VALUE for our methods (a variant, with --tag)")
    parser.add_argument("--tag", default=None,
                        help="names a variant: its runs are <method>+<tag> in the table")
    parser.add_argument("--peer_python", default=None,
                        help="the peer venv's python (torch, torchvision, "
                             "efficientnet-lite-pytorch); without it the peer is skipped")
    parser.add_argument("--out", default=None,
                        help="default output/label_efficiency/<dataset>")
    parser.add_argument("--table", action="store_true", help="print the table, run nothing")
    parser.add_argument("--plot", default=None, help="PNG of mAP@0.5 against N")
    parser.add_argument("--include", action="append", default=[],
                        help="another run folder (its results.json) whose runs join the "
                             "table and plot, e.g. the full-data runs at equal minutes")
    parser.add_argument("--rescore", action="store_true",
                        help="evaluate our finished runs again with the current config "
                             "(a detection-only change), train nothing")
    args = parser.parse_args()
    preset = PRESETS[args.dataset]
    args.voc, args.cfg = preset["voc"], os.path.join(REPO, preset["cfg"])
    args.out = args.out or os.path.join(REPO, "output", "label_efficiency", args.dataset)
    args.ns = args.ns.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    if args.minutes and args.steps:
        parser.error("give --steps or --minutes, not both")
    if args.set and not args.tag:
        parser.error("--set makes a variant: name it with --tag")
    if args.tag and "peer" in methods:
        methods.remove("peer")          # a variant of ours; the peer's runs are shared
    if "peer" in methods and not args.peer_python and not args.table:
        print("no --peer_python: the peer is skipped", file=sys.stderr)
        methods.remove("peer")
    # Read before any run: a wrong folder is said at once, not after hours of training.
    included = {}
    for folder in args.include:
        rows = read_json(os.path.join(folder, "results.json"))
        if rows is None:
            parser.error(f"--include {folder}: no results.json there")
        included.update(rows)
    results_file = os.path.join(args.out, "results.json")
    results = read_json(results_file, {})

    if args.rescore:
        rescore(args, results)
    elif not args.table:
        # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
        from data.io import convert
        from libs.configs import load_config_from_flags
        from libs.weights import pretrained
        cfg = load_config_from_flags(args.cfg, [])
        # The ImageNet weights the configs start from, imported once (as make bccd does).
        backbone = os.path.join(REPO, cfg.BACKBONE_CHECKPOINT)
        if not os.path.exists(os.path.join(backbone, "checkpoint")):
            pretrained.import_backbone(cfg.NET_NAME, backbone)
        images, classes = convert.read_annotations(
            "voc", os.path.join(args.voc, "JPEGImages"),
            os.path.join(args.voc, "Annotations"),
            split_file=os.path.join(args.voc, "ImageSets", "Main", "train.txt"))
        objects_by_id = {os.path.splitext(os.path.basename(i.filename))[0]:
                         {o.name for o in i.objects} for i in images}
        planned = subsets(args, sorted(objects_by_id), objects_by_id, classes)
        for label, n, seed, ids in planned:
            lengths = ([int(s) for s in args.steps.split(",")] if args.steps
                       else [None] if args.minutes else [training_steps(cfg, n)])
            split_dir = os.path.join(args.out, "subsets", f"n{label}_s{seed}")
            named = [(m, f"{m}+{args.tag}" if args.tag else m) for m in methods]
            todo = [(m, name, s) for s in lengths for m, name in named
                    if run_key(name, label, seed, s, args.minutes) not in results]
            if not todo:
                continue
            data_dir, reference_dir, supports = prepare_subset(args.voc, split_dir, ids,
                                                               classes)
            for method, name, steps in todo:
                key = run_key(name, label, seed, steps, args.minutes)
                model_dir = os.path.join(args.out, "runs", key.replace("/", "_"))
                length = f"{args.minutes:g} minutes" if args.minutes else f"{steps} steps"
                print(f"{key}: {n} images, {length} ...", file=sys.stderr, flush=True)
                if method == "peer":
                    scores, minutes, steps = run_peer(args, cfg, split_dir, data_dir,
                                                      model_dir, classes, n, steps, seed,
                                                      args.minutes)
                else:
                    scores, minutes, steps = run_ours(args, method, data_dir, reference_dir,
                                                      model_dir, steps, supports, seed,
                                                      args.minutes)
                results[key] = {
                    "method": name, "n": label, "num_images": n, "seed": seed,
                    "steps": steps, "minutes": minutes, "supports": supports,
                    "budget_minutes": args.minutes,
                    "sets": args.set if method != "peer" else [],
                    "rule": not args.minutes and steps == training_steps(cfg, n),
                    "results": {k: v for k, v in scores.items()
                                if k.startswith(("voc/", "coco/"))}}
                print(f"{key}: val mAP@0.5 {scores['voc/mAP@0.5']:.3f}, COCO mAP "
                      f"{scores['coco/mAP']:.3f}, {minutes:.1f} min", flush=True)
                write_json(results_file, results)
    shown = {**included, **results}
    print(format_table(shown))
    if args.plot:
        plot(shown, args.plot, f"{args.dataset}: val mAP@0.5 against labelled images")


if __name__ == "__main__":
    main()
