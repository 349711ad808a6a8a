"""What a trained detector gets wrong on a split: misses and false positives, by kind.

    python bench/error_table.py --cfg cfgs/bccd_cpu.py --split val \
        --draw 3 --draw_dir docs/img/bccd --out output/bccd_cpu/errors_val.json

Runs the checkpoint's serving graph (libs/serving/export.Detector: the exported model's path)
on every image of a converted split and matches its detections (score >= --min_score,
default 0.5, the display threshold) to the ground truth at IoU >= 0.5, class by class,
greedily by score exactly as VOC AP does (libs/evaluation/error_analysis.py, which tools/eval.py's
HTML report shares): "found" is VOC's true positives at that threshold; difficult
objects are not counted ("objects" and "missed" leave them out, column "difficult"
counts them) and a detection on a difficult object of its class is ignored (column
"ignored"), neither found nor a false positive. Then it sorts what is left:
  missed objects        by size (shorter side in original pixels: small < 32 <= medium
                        < 96 <= large) and whether they touch another object (IoU > 0
                        with another ground-truth box: touching / overlapping cells);
                        and whether the model saw them as another class (a detection of
                        another class at IoU >= 0.5: a confusion) or not at all;
  false positives       confusion (IoU >= 0.5 with a non-difficult object of another
                        class), duplicate (its best-matching object, IoU >= 0.5,
                        already found), poor localisation (0.1 <= IoU < 0.5 with an
                        object of its class), or background;
and draws --draw images with the most errors: ground truth in green (difficult objects
dashed), misses in red, false positives in orange (each labelled with its kind),
correct detections in blue, ignored ones dashed grey (small PNGs for docs/).
Prints a table per class and writes everything to --out.
"""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import write_json  # noqa: E402
from data.io.dataset import open_run  # noqa: E402
from libs.evaluation.error_analysis import analyse_image, draw_errors  # noqa: E402
from libs.train import runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--data_dir")
    parser.add_argument("--reference_dir")
    parser.add_argument("--model_dir")
    parser.add_argument("--split", default="val")
    parser.add_argument("--min_score", type=float, default=0.5)
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--draw_dir")
    parser.add_argument("--draw_side", type=int, default=320)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    import cv2

    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io import input_fn
    from libs.base import images as images_lib
    from libs.configs import load_config_from_flags
    from libs.serving import export

    cfg = load_config_from_flags(args.cfg, args.set)
    run = open_run(cfg, args.data_dir, args.reference_dir, args.model_dir,
                               inference=True)
    checkpoint = runs.resolve_checkpoint(run.model_dir)
    names = list(run.class_names)
    per_class = {n: collections.Counter() for n in names}
    confusions = collections.Counter()
    images = []
    with export.Detector.from_checkpoint(run, checkpoint) as detector:
        for record in input_fn.read_records(run.data_dir, args.split):
            found = detector.detect([record["image"]])[0]
            keep = found["scores"] >= args.min_score
            result = analyse_image(record["boxes"], record["labels"],
                                   found["boxes"][keep], found["class_ids"][keep],
                                   found["scores"][keep], record["difficult"])
            for label, difficult in zip(record["labels"], result["difficult"]):
                per_class[names[label - 1]]["difficult" if difficult
                                            else "objects"] += 1
            for d in result["hits"]:
                per_class[names[result["labels"][d] - 1]]["found"] += 1
            for d, kind in result["false_positives"]:
                per_class[names[result["labels"][d] - 1]][f"fp_{kind}"] += 1
            for d in result["ignored"]:
                per_class[names[result["labels"][d] - 1]]["ignored"] += 1
            for miss in result["misses"]:
                name = names[record["labels"][miss["index"]] - 1]
                counter = per_class[name]
                counter["missed"] += 1
                counter[f"missed_{miss['size']}"] += 1
                counter["missed_touching"] += miss["touching"]
                counter["missed_as_other_class"] += miss["seen_as"] is not None
                if miss["seen_as"] is not None:
                    confusions[f"{name} seen as {names[miss['seen_as'] - 1]}"] += 1
            images.append((record, result))
    summary = {"checkpoint": checkpoint, "split": args.split, "min_score": args.min_score,
               "per_class": {n: dict(c) for n, c in per_class.items()},
               "missed_confusions": dict(confusions.most_common())}
    print(f"{checkpoint}, {args.split}, detections with score >= {args.min_score}")
    columns = ("objects", "found", "missed", "missed_small", "missed_medium",
               "missed_large", "missed_touching", "missed_as_other_class", "fp_background",
               "fp_localisation", "fp_duplicate", "fp_confusion", "difficult", "ignored")
    print("class".ljust(12) + " ".join(c.replace("missed_", "m_").rjust(10) for c in columns))
    for name, counter in per_class.items():
        print(name.ljust(12) + " ".join(str(counter.get(c, 0)).rjust(10) for c in columns))
    if confusions:
        print("missed objects seen as another class: " + ", ".join(
            f"{pair} {count}" for pair, count in confusions.most_common()))
    if args.draw and args.draw_dir:
        os.makedirs(args.draw_dir, exist_ok=True)
        worst = sorted(images, key=lambda item: -(len(item[1]["misses"]) +
                                                 len(item[1]["false_positives"])))
        summary["drawn"] = []
        for record, result in worst[:args.draw]:
            rgb, _ = images_lib.decode_image_bytes(record["image"])
            canvas = draw_errors(rgb, record["boxes"], record["labels"], result, names,
                                 side=args.draw_side)
            stem = os.path.splitext(record["filename"].decode())[0]
            path = os.path.join(args.draw_dir, f"{stem}.png")
            cv2.imwrite(path, canvas)
            summary["drawn"].append(path)
            print(f"drew {path}: {len(result['misses'])} missed, "
                  f"{len(result['false_positives'])} false positives")
    write_json(args.out, summary)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
