"""The paper's claim, checked: comparison classifier vs FC baseline on few training images.

    python bench/fewshot.py --voc ../shared/datasets/bccd --sizes 5,10,30 --seeds 0,1 \
        --steps 1000 --out output/fewshot

For each subset size n and seed: n images drawn from the train split (seeded; redrawn
until every class appears), converted to TFRecords with the full class list, and a
reference set cropped from those n images only (the few-shot setting: the references
are the few labelled examples; NUM_SUPPORTS = min(5, objects of the rarest class)).
Then cfgs/bccd_cpu.py is trained twice with identical settings but CLASSIFIER
(comparison, fc), each for --steps steps with the LR dropping at 75% and 90%, through
tools/train.py, and evaluated on the full val split with tools/eval.py. Prints one
JSON line per run and a table of val mAP@0.5 at the end (also written to
<out>/results.json).
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, run_tool, write_json  # noqa: E402

CLASSIFIERS = ("comparison", "fc")


def draw_subset(train_ids, objects_by_id, classes, size, seed):
    """`size` train ids (sorted), redrawn until every class has an object in them."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        chosen = sorted(rng.choice(train_ids, size=size, replace=False).tolist())
        present = {name for image_id in chosen for name in objects_by_id[image_id]}
        if set(classes) <= present:
            return chosen
    raise RuntimeError(f"no subset of {size} images holds every class {classes}")


def prepare(voc, out_dir, ids, classes):
    """TFRecords (subset train + full val) and references of one subset."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io import convert, reference_set
    image_dir = os.path.join(voc, "JPEGImages")
    annotations = os.path.join(voc, "Annotations")
    split_file = os.path.join(out_dir, "train_subset.txt")
    os.makedirs(out_dir, exist_ok=True)
    with open(split_file, "w") as handle:
        handle.write("\n".join(ids) + "\n")
    data_dir = os.path.join(out_dir, "data")
    convert.convert_dataset("voc", image_dir, annotations, data_dir, split_file=split_file,
                            split="train", classes=classes, progress_every_seconds=1e9)
    convert.convert_dataset("voc", image_dir, annotations, data_dir,
                            split_file=os.path.join(voc, "ImageSets", "Main", "val.txt"),
                            split="val", classes=classes, progress_every_seconds=1e9)
    images, _ = convert.read_annotations("voc", image_dir, annotations,
                                         split_file=split_file)
    reference_dir = os.path.join(out_dir, "references")
    summary = reference_set.crop_references(images, reference_dir, per_class=5,
                                            classes=classes)
    supports = min(5, min(summary["classes"].values()))
    return data_dir, reference_dir, supports


def train_and_evaluate(cfg, data_dir, reference_dir, model_dir, size, steps, supports,
                       classifier, seed):
    epochs = math.ceil(steps / size)
    sets = [f"--set=CLASSIFIER='{classifier}'", f"--set=SEED={seed}",
            f"--set=EPOCH={epochs}",
            f"--set=EPOCH_BOUNDARY=[{0.75 * epochs:.2f}, {0.9 * epochs:.2f}]",
            f"--set=NUM_SUPPORTS={supports}", "--set=SAVE_CHECKPOINTS_STEPS=100000"]
    common = ["--cfg", cfg, "--data_dir", data_dir, "--reference_dir", reference_dir,
              "--model_dir", model_dir, *sets]
    run_tool("train.py", *common, "--max_steps", str(steps))
    run_tool("eval.py", *common)
    reports = [n for n in os.listdir(model_dir) if n.endswith(".eval_val.json")]
    with open(os.path.join(model_dir, sorted(reports)[-1])) as handle:
        return json.load(handle)["results"]


def _write_results(path, args, rows):
    """Every run so far (atomic: never a half-written file, a rerun goes on from it)."""
    write_json(path, {"steps": args.steps, "config": args.cfg, "runs": rows})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", default=os.path.join(REPO, "..", "shared", "datasets",
                                                      "bccd"))
    parser.add_argument("--cfg", default=os.path.join(REPO, "cfgs", "bccd_cpu.py"))
    parser.add_argument("--sizes", default="5,10,30")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(REPO, "output", "fewshot"))
    args = parser.parse_args()

    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io import convert
    train_file = os.path.join(args.voc, "ImageSets", "Main", "train.txt")
    images, classes = convert.read_annotations(
        "voc", os.path.join(args.voc, "JPEGImages"), os.path.join(args.voc, "Annotations"),
        split_file=train_file)
    objects_by_id = {os.path.splitext(os.path.basename(i.filename))[0]:
                     {o.name for o in i.objects} for i in images}
    train_ids = sorted(objects_by_id)
    results_file = os.path.join(args.out, "results.json")
    done = {}
    if os.path.exists(results_file):          # a rerun after an interruption goes on
        with open(results_file) as handle:
            previous = json.load(handle)
        if previous["steps"] == args.steps and previous["config"] == args.cfg:
            done = {(r["images"], r["seed"]): r for r in previous["runs"]}
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            if (size, seed) in done:
                rows.append(done[(size, seed)])
                _write_results(results_file, args, rows)
                continue
            ids = draw_subset(train_ids, objects_by_id, classes, size, seed)
            run_dir = os.path.join(args.out, f"n{size}_seed{seed}")
            data_dir, reference_dir, supports = prepare(args.voc, run_dir, ids, classes)
            row = {"images": size, "seed": seed, "supports": supports, "ids": ids}
            for classifier in CLASSIFIERS:
                results = train_and_evaluate(
                    args.cfg, data_dir, reference_dir, os.path.join(run_dir, classifier),
                    size, args.steps, supports, classifier, seed)
                row[classifier] = {k: results[k] for k in results
                                   if k.startswith(("voc/", "coco/"))}
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write_results(results_file, args, rows)
    print("\nimages | seed | supports | val mAP@0.5 comparison | fc")
    for row in rows:
        print(f"{row['images']:6d} | {row['seed']:4d} | {row['supports']:8d} | "
              f"{row['comparison']['voc/mAP@0.5']:.3f} | {row['fc']['voc/mAP@0.5']:.3f}")


if __name__ == "__main__":
    main()
