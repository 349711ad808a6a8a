"""What a trained detector gets wrong on a split: misses and false positives, by kind.

    python bench/error_analysis.py --cfg cfgs/bccd_cpu.py --split val \
        --draw 3 --draw_dir docs/img/bccd --out output/bccd_cpu/errors_val.json

Runs the checkpoint's serving graph (libs/export.Detector: the exported model's path)
on every image of a converted split and matches its detections (score >= --min_score,
default 0.5, the display threshold) to the ground truth at IoU >= 0.5, class by class,
greedily by score as VOC does. Then it sorts what is left:
  missed objects        by size (shorter side in original pixels: small < 32 <= medium
                        < 96 <= large) and whether they touch another object (IoU > 0
                        with another ground-truth box: touching / overlapping cells);
                        and whether the model saw them as another class (a detection of
                        another class at IoU >= 0.5: a confusion) or not at all;
  false positives       confusion (IoU >= 0.5 with an object of another class),
                        duplicate (IoU >= 0.5 with an object already found), poor
                        localisation (0.1 <= IoU < 0.5 with an object of its class),
                        or background;
and draws --draw images with the most errors: ground truth in green, misses in red,
false positives in orange, correct detections in blue (small PNGs for docs/).
Prints a table per class and writes everything to --out.
"""
import argparse
import collections
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import write_json  # noqa: E402

SMALL, LARGE = 32, 96
COLOURS = {"gt": (60, 180, 75), "miss": (40, 40, 230), "fp": (0, 140, 255),
           "hit": (230, 120, 30)}                                      # BGR


def iou_matrix(a, b):
    """IoU of boxes a [N, 4] against b [M, 4] ([y1, x1, y2, x2])."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    top = np.maximum(a[:, None, 0], b[None, :, 0])
    left = np.maximum(a[:, None, 1], b[None, :, 1])
    bottom = np.minimum(a[:, None, 2], b[None, :, 2])
    right = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def size_bucket(box):
    side = min(box[2] - box[0], box[3] - box[1])
    return "small" if side < SMALL else "large" if side >= LARGE else "medium"


def analyse_image(gt_boxes, gt_labels, boxes, labels, scores):
    """Matches one image's detections to its ground truth; returns its error records."""
    order = np.argsort(-np.asarray(scores))
    boxes, labels = np.asarray(boxes).reshape(-1, 4)[order], np.asarray(labels)[order]
    gt_boxes, gt_labels = np.asarray(gt_boxes).reshape(-1, 4), np.asarray(gt_labels)
    ious = iou_matrix(boxes, gt_boxes)
    gt_ious = iou_matrix(gt_boxes, gt_boxes)
    np.fill_diagonal(gt_ious, 0.0)
    found = np.zeros(len(gt_boxes), bool)
    hits, false_positives = [], []
    for d in range(len(boxes)):
        same = gt_labels == labels[d]
        candidates = np.where(same & ~found & (ious[d] >= 0.5))[0] if len(gt_boxes) else []
        if len(candidates):
            g = candidates[np.argmax(ious[d][candidates])]
            found[g] = True
            hits.append(d)
            continue
        if len(gt_boxes) and (ious[d][~same] >= 0.5).any():
            kind = "confusion"
        elif len(gt_boxes) and (ious[d][same] >= 0.5).any():
            kind = "duplicate"
        elif len(gt_boxes) and (ious[d][same] >= 0.1).any():
            kind = "localisation"
        else:
            kind = "background"
        false_positives.append((d, kind))
    misses = []
    for g in np.where(~found)[0]:
        other = (ious[:, g] >= 0.5) & (labels != gt_labels[g]) if len(boxes) else []
        # the best-scoring detection of another class on it (detections are by score)
        seen_as = int(labels[np.argmax(other)]) if np.any(other) else None
        misses.append({"index": int(g), "size": size_bucket(gt_boxes[g]),
                       "touching": bool(len(gt_boxes) > 1 and gt_ious[g].max() > 0),
                       "seen_as": seen_as})
    return {"boxes": boxes, "labels": labels, "hits": hits,
            "false_positives": false_positives, "misses": misses, "num_gt": len(gt_boxes)}


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

    from data.io import convert, input_fn, tfrecord_format
    from libs import cli, export, training
    from libs.tf_compat import tf

    cfg = cli.load_config_from_flags(args.cfg, args.set)
    run = training.prepare_run(cfg, args.data_dir, args.reference_dir, args.model_dir,
                               inference=True)
    checkpoint = training.resolve_checkpoint(run.model_dir)
    names = list(run.class_names)
    per_class = {n: collections.Counter() for n in names}
    confusions = collections.Counter()
    images = []
    with export.Detector.from_checkpoint(run, checkpoint) as detector:
        for path in input_fn.tfrecord_files(run.data_dir, args.split):
            for serialized in tf.python_io.tf_record_iterator(path):
                record = tfrecord_format.decode_example(serialized)
                found = detector.detect([record["image"]])[0]
                keep = found["scores"] >= args.min_score
                result = analyse_image(record["boxes"], record["labels"],
                                       found["boxes"][keep], found["class_ids"][keep],
                                       found["scores"][keep])
                for label in record["labels"]:
                    per_class[names[label - 1]]["objects"] += 1
                for d in result["hits"]:
                    per_class[names[result["labels"][d] - 1]]["found"] += 1
                for d, kind in result["false_positives"]:
                    per_class[names[result["labels"][d] - 1]][f"fp_{kind}"] += 1
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
               "fp_localisation", "fp_duplicate", "fp_confusion")
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
            rgb, _ = convert.decode_image_bytes(record["image"])
            canvas = draw_errors(cv2, rgb, record, result)
            scale = args.draw_side / max(canvas.shape[:2])
            canvas = cv2.resize(canvas, None, fx=scale, fy=scale,
                                interpolation=cv2.INTER_AREA)
            stem = os.path.splitext(record["filename"].decode())[0]
            path = os.path.join(args.draw_dir, f"{stem}.png")
            cv2.imwrite(path, canvas)
            summary["drawn"].append(path)
            print(f"drew {path}: {len(result['misses'])} missed, "
                  f"{len(result['false_positives'])} false positives")
    write_json(args.out, summary)
    print(f"written {args.out}")


def draw_errors(cv2, rgb, record, result):
    canvas = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    thickness = max(1, round(max(canvas.shape[:2]) / 300))

    def box(b, colour, width=thickness):
        y1, x1, y2, x2 = (int(round(v)) for v in b)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, width)

    for b in record["boxes"]:
        box(b, COLOURS["gt"])
    for d in result["hits"]:
        box(result["boxes"][d], COLOURS["hit"])
    for miss in result["misses"]:
        box(record["boxes"][miss["index"]], COLOURS["miss"], thickness + 1)
    for d, _ in result["false_positives"]:
        box(result["boxes"][d], COLOURS["fp"], thickness + 1)
    return canvas


if __name__ == "__main__":
    main()
