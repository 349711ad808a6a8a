"""The evaluation as text: the per-class table and summary lines tools/eval.py prints."""
import numpy as np

from libs.evaluation.base_novel import (
    BASE_AP,
    NOVEL_AP,
    base_novel_ap,
    split_base_novel,
)


def _format_value(value):
    return "n/a" if value is None or np.isnan(value) else f"{value:.4f}"


def format_table(results, class_names, coco_summary=None, novel_classes=None):
    """Per-class table (class, #GT, #detections, AP@0.5) and the summary lines.

    ``results`` is a dict from ``DetectionEvaluator.evaluate``; ``coco_summary`` (e.g.
    ``evaluator.coco_summary_text``) is appended verbatim when given. "n/a" marks a class
    without non-difficult ground truth (its AP is undefined and not in the mean).
    With ``novel_classes``, novel rows are marked and bAP50 / nAP50 lines follow mAP.
    """
    base, novel = (None, None)
    if novel_classes:
        base, novel = split_base_novel(class_names, novel_classes)
    width = max([len("class")] + [len(str(name)) for name in class_names])
    header = f"{'class':<{width}}  {'#GT':>7}  {'#det':>7}  {'AP@0.5':>8}"
    if novel is not None:
        header += "  set"
    lines = [header, "-" * len(header)]
    for name in class_names:
        num_gt = results.get(f"voc/num_gt/{name}", float("nan"))
        num_det = results.get(f"voc/num_detections/{name}", float("nan"))
        ap = results.get(f"voc/AP@0.5/{name}", float("nan"))
        row = (f"{name:<{width}}  {_count(num_gt):>7}  {_count(num_det):>7}  "
               f"{_format_value(ap):>8}")
        if novel is not None:
            row += "  novel" if name in novel else "  base"
        lines.append(row)
    lines.append("-" * len(header))
    lines.append(f"VOC mAP@0.5 ({_with_ap(results, class_names)}/{len(class_names)} "
                 f"classes with ground truth): "
                 f"{_format_value(results.get('voc/mAP@0.5', float('nan')))}")
    if novel is not None:
        values = base_novel_ap(results, class_names, novel)
        for label, key, names in (("bAP50", BASE_AP, base), ("nAP50", NOVEL_AP, novel)):
            lines.append(f"{label} ({_with_ap(results, names)}/{len(names)} "
                         f"{'base' if key == BASE_AP else 'novel'} classes with ground "
                         f"truth): {_format_value(values[key])}")
    lines.append("COCO mAP@[.5:.95]: {}   AP50: {}   AP75: {}   AR@100: {}".format(
        *(_format_value(results.get(key, float("nan")))
          for key in ("coco/mAP", "coco/AP50", "coco/AP75", "coco/AR@100"))))
    if "num_images" in results:
        lines.append(f"images: {_count(results['num_images'])}")
    if coco_summary:
        lines.append("")
        lines.append("pycocotools summary:")
        lines.append(coco_summary.rstrip("\n"))
    return "\n".join(lines)


def _with_ap(results, class_names):
    return sum(1 for name in class_names
               if not np.isnan(results.get(f"voc/AP@0.5/{name}", float("nan"))))


def _count(value):
    return "n/a" if value is None or np.isnan(value) else str(int(value))
