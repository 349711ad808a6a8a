"""What a detector gets wrong on an image: misses and false positives, by kind.

    result = analyse_image(gt_boxes, gt_labels, boxes, labels, scores, gt_difficult)
    canvas = draw_errors(rgb, gt_boxes, gt_labels, result, class_names)

Detections (already thresholded at the display score) are matched to the ground truth
exactly as VOC AP matches them (libs/evaluation/detection_evaluator.py,
`_match_greedy`), class by class, greedily by score: each detection goes to the box of
its class with the highest IoU, difficult boxes included; at IoU >= 0.5 with that box
it is
  a hit                 when the box is not difficult and not found yet (VOC's TP),
  ignored               when the box is difficult (neither hit nor false positive, as
                        VOC ignores it; drawn grey and dashed),
and a false positive otherwise. So the hits of a class are VOC's true positives at the
same score threshold, and its false positives VOC's false positives. Difficult objects
are never missed and are not counted in num_gt (VOC's recall leaves them out).
What is left is sorted:
  missed objects        (not difficult) by size (shorter side in pixels: small < 32 <=
                        medium < 96 <= large), whether they touch another object (IoU > 0
                        with another ground-truth box), and whether the model saw them as
                        another class (a detection of another class at IoU >= 0.5: a
                        confusion);
  false positives       confusion (IoU >= 0.5 with a non-difficult object of another
                        class: a difficult object is left out of the counts, so a
                        detection on one is judged as if it were not there), duplicate
                        (its best box of its class, IoU >= 0.5, already found),
                        localisation (0.1 <= IoU < 0.5 with an object of its class) or
                        background.
Shared by tools/eval.py's HTML report (libs/evaluation/eval_report.py) and
bench/error_table.py.
"""
import numpy as np

from libs.evaluation.detection_evaluator import VOC_IOU_THRESHOLD, iou_matrix

SMALL, LARGE = 32, 96
FALSE_POSITIVE_KINDS = ("background", "localisation", "duplicate", "confusion")
# BGR; each kind of box also has its own line style (draw_errors): difficult ground
# truth thin dashed green, ignored detections (on a difficult object) dashed grey.
COLOURS = {"gt": (60, 180, 75), "hit": (230, 120, 30), "miss": (40, 40, 230),
           "fp": (0, 140, 255), "ignored": (120, 120, 120)}


def size_bucket(box):
    side = min(box[2] - box[0], box[3] - box[1])
    return "small" if side < SMALL else "large" if side >= LARGE else "medium"


def analyse_image(gt_boxes, gt_labels, boxes, labels, scores, gt_difficult=None):
    """Matches one image's detections to its ground truth, as VOC AP does.

    gt_difficult: [N] flags of the ground truth (None: none is difficult).
    Returns {"boxes", "labels", "scores": the detections by descending score (stable),
    "hits": their indices matched to an object ("hit_objects": which object each),
    "ignored": indices of detections on a difficult object of their class
    ("ignored_objects": which object each), "false_positives": [(index, kind)],
    "misses": [{"index", "size", "touching", "seen_as"}] (never a difficult object),
    "difficult": the ground truth's flags [N] bool, "num_gt": #non-difficult objects}.
    """
    order = np.argsort(-np.asarray(scores, np.float64).reshape(-1), kind="stable")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[order]
    labels = np.asarray(labels).reshape(-1)[order]
    scores = np.asarray(scores, np.float64).reshape(-1)[order]
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    if gt_difficult is None:
        difficult = np.zeros(len(gt_labels), bool)
    else:
        difficult = np.asarray(gt_difficult).astype(bool).reshape(-1)
    if not len(gt_boxes) == len(gt_labels) == len(difficult):
        raise ValueError(f"{len(gt_boxes)} ground-truth boxes, {len(gt_labels)} labels, "
                         f"{len(difficult)} difficult flags")
    ious = iou_matrix(boxes, gt_boxes)
    gt_ious = iou_matrix(gt_boxes, gt_boxes)
    np.fill_diagonal(gt_ious, 0.0)
    found = np.zeros(len(gt_boxes), bool)
    hits, hit_objects, ignored, ignored_objects, false_positives = [], [], [], [], []
    for d in range(len(boxes)):
        same = gt_labels == labels[d]
        if same.any():
            # VOC: the box of the class with the highest IoU (the first on a tie, as
            # np.argmax over the class's boxes in detection_evaluator._match_greedy),
            # difficult boxes included
            g = int(np.flatnonzero(same)[np.argmax(ious[d][same])])
            if ious[d, g] >= VOC_IOU_THRESHOLD:
                if difficult[g]:
                    ignored.append(d)
                    ignored_objects.append(g)
                    continue
                if not found[g]:
                    found[g] = True
                    hits.append(d)
                    hit_objects.append(g)
                    continue
        # a false positive of its class, as VOC counts it; what kind
        if (ious[d][~same & ~difficult] >= VOC_IOU_THRESHOLD).any():
            kind = "confusion"
        elif (ious[d][same] >= VOC_IOU_THRESHOLD).any():
            kind = "duplicate"
        elif (ious[d][same] >= 0.1).any():
            kind = "localisation"
        else:
            kind = "background"
        false_positives.append((d, kind))
    misses = []
    for g in np.flatnonzero(~found & ~difficult):
        other = (ious[:, g] >= VOC_IOU_THRESHOLD) & (labels != gt_labels[g])
        # the best-scoring detection of another class on it (detections are by score)
        seen_as = int(labels[np.argmax(other)]) if other.any() else None
        misses.append({"index": int(g), "size": size_bucket(gt_boxes[g]),
                       "touching": bool(len(gt_boxes) > 1 and gt_ious[g].max() > 0),
                       "seen_as": seen_as})
    return {"boxes": boxes, "labels": labels, "scores": scores, "hits": hits,
            "hit_objects": hit_objects, "ignored": ignored,
            "ignored_objects": ignored_objects, "false_positives": false_positives,
            "misses": misses, "difficult": difficult, "num_gt": int(np.sum(~difficult))}


def num_errors(result):
    return len(result["misses"]) + len(result["false_positives"])


def confusion_counts(gt_labels, result, num_classes):
    """[C + 2, C + 2] counts of one image: rows the truth (classes 1..C, then
    "background" for detections on no object of their class), columns the prediction
    (classes 1..C, then "missed"). Row 0 / column 0 stay empty (no class 0).

    An object found by its class counts on the diagonal; one seen only as another class
    under that class's column; one not seen at all under "missed". A false positive
    that is not a confusion (background, localisation, duplicate) counts in the
    "background" row under its class; a confusion is the missed object's own entry.
    Difficult objects and the detections ignored on them count nowhere, as in VOC AP:
    the diagonal of a class is its VOC true positives, its row its non-difficult objects.
    """
    counts = np.zeros([num_classes + 2, num_classes + 2], np.int64)
    background, missed = num_classes + 1, num_classes + 1
    gt_labels = np.asarray(gt_labels).reshape(-1)
    for g in result["hit_objects"]:
        counts[gt_labels[g], gt_labels[g]] += 1
    for miss in result["misses"]:
        column = missed if miss["seen_as"] is None else miss["seen_as"]
        counts[gt_labels[miss["index"]], column] += 1
    for d, kind in result["false_positives"]:
        if kind != "confusion":
            counts[background, result["labels"][d]] += 1
    return counts


def draw_errors(rgb, gt_boxes, gt_labels, result, class_names, side=None):
    """A BGR canvas of the image: ground truth thin green (a difficult object thinner,
    dashed, with "difficult <class>"), correct detections blue, missed objects thick
    red with "missed <class>", false positives thick orange with "<kind>: <class>
    <score>", detections ignored on a difficult object dashed grey with "ignored:
    <class> <score>" - each kind of box its own colour and line. side: the canvas's
    longer side (the image scaled up or down first, so labels stay legible)."""
    import cv2
    scale = 1.0 if side is None else side / max(rgb.shape[:2])
    canvas = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if scale != 1.0:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale,
                            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    thickness = max(1, round(max(canvas.shape[:2]) / 300))
    font = max(0.35, max(canvas.shape[:2]) / 1000)
    dash = max(3, 3 * thickness)

    def dashed(corners, colour, width):
        x1, y1, x2, y2 = corners
        for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)),
                                   ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
            length = max(abs(bx - ax), abs(by - ay))
            for start in range(0, length + 1, 2 * dash):
                end = min(start + dash, length)
                t0, t1 = start / max(length, 1), end / max(length, 1)
                cv2.line(canvas, (round(ax + (bx - ax) * t0), round(ay + (by - ay) * t0)),
                         (round(ax + (bx - ax) * t1), round(ay + (by - ay) * t1)),
                         colour, width)

    def box(b, colour, width, text=None, dashes=False):
        y1, x1, y2, x2 = (int(round(v * scale)) for v in b)
        if dashes:
            dashed((x1, y1, x2, y2), colour, width)
        else:
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, width)
        if text:
            (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            top = max(y1 - h - 4, 0)
            cv2.rectangle(canvas, (x1, top), (x1 + w + 2, top + h + 4), colour, -1)
            cv2.putText(canvas, text, (x1 + 1, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX,
                        font, (255, 255, 255), 1, cv2.LINE_AA)

    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    difficult = result.get("difficult")
    if difficult is None:
        difficult = np.zeros(len(gt_labels), bool)
    for b, label, is_difficult in zip(gt_boxes, gt_labels, difficult):
        if is_difficult:
            box(b, COLOURS["gt"], max(1, thickness - 1),
                f"difficult {class_names[int(label) - 1]}", dashes=True)
        else:
            box(b, COLOURS["gt"], thickness)
    for d in result["hits"]:
        box(result["boxes"][d], COLOURS["hit"], thickness)
    for d in result.get("ignored", ()):
        name = class_names[int(result["labels"][d]) - 1]
        box(result["boxes"][d], COLOURS["ignored"], thickness,
            f"ignored: {name} {result['scores'][d]:.2f}", dashes=True)
    for miss in result["misses"]:
        name = class_names[gt_labels[miss["index"]] - 1]
        box(gt_boxes[miss["index"]], COLOURS["miss"], thickness + 1, f"missed {name}")
    for d, kind in result["false_positives"]:
        name = class_names[int(result["labels"][d]) - 1]
        box(result["boxes"][d], COLOURS["fp"], thickness + 1,
            f"{kind}: {name} {result['scores'][d]:.2f}")
    return canvas
