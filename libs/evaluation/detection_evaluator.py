"""DetectionEvaluator: Pascal-VOC AP@0.5 per class + mAP, and COCO metrics by pycocotools.

Conventions (the same everywhere in the project):
- boxes are ``[y1, x1, y2, x2]`` floats in ORIGINAL image pixels;
- class ids are ``1..C`` (``class_names[id - 1]``); 0 is background and never evaluated;
- a ground-truth box may be ``difficult`` (VOC ``difficult`` / COCO ``iscrowd``).

VOC rules (as the VOC devkit and the TF Object Detection API's Pascal evaluator):
- detections of a class are taken by descending score (stable: ties keep the order in
  which they were added); each one is compared with the ground truth of ITS class in
  its image and assigned to the box of highest IoU (difficult boxes included);
- IoU >= 0.5 with that box: a difficult box -> the detection is ignored (neither TP nor
  FP); a box not matched yet -> TP; an already matched box -> FP (duplicate).
  Otherwise FP. A detection of a wrong class is therefore a FP of its own class;
- difficult boxes are never false negatives: recall is over non-difficult boxes only;
- IoU uses continuous coordinates, area = (y2 - y1) * (x2 - x1), WITHOUT the devkit's
  "+1 pixel" (the same IoU as pycocotools), and the threshold is ``>=`` (the devkit
  uses ``>``; COCO ``>=``);
- AP is the all-point interpolated AP (VOC2010+: area under the monotone precision
  envelope); ``use_07_metric=True`` gives the VOC2007 11-point AP.

Undefined values are NaN, never a crash: the AP of a class without non-difficult ground
truth is NaN and left out of ``voc/mAP@0.5``, which is the mean over classes that have
ground truth (NaN when no class has any). COCO values pycocotools reports as -1
("no ground truth for this area/category") are NaN too. NaN is a float, so the
Estimator metrics stay floats (TensorBoard shows NaN as "undefined").

COCO figures come from pycocotools' own ``COCOeval(..., "bbox")`` with its defaults
(10 IoU thresholds .5:.95, at most 100 detections per image over all classes, area
ranges small/medium/large); difficult ground truth becomes ``iscrowd=1``, so COCO's
crowd rules apply to it (a detection inside a crowd region is ignored).
"""
import contextlib
import io
import logging

import numpy as np

from libs.evaluation.base_novel import mean_ap

VOC_IOU_THRESHOLD = 0.5

# Keys of the COCO stats, in the order of COCOeval.stats.
COCO_STAT_NAMES = (
    "coco/mAP", "coco/AP50", "coco/AP75",
    "coco/AP_small", "coco/AP_medium", "coco/AP_large",
    "coco/AR@1", "coco/AR@10", "coco/AR@100",
    "coco/AR@100_small", "coco/AR@100_medium", "coco/AR@100_large",
)

_log = logging.getLogger(__name__)


def metric_names(class_names):
    """The keys ``DetectionEvaluator.evaluate`` returns, in a fixed order.

    Known before any data is seen, so the Estimator bridge can build one value op each.
    """
    names = ["voc/mAP@0.5"]
    names += [f"voc/AP@0.5/{name}" for name in class_names]
    names += list(COCO_STAT_NAMES)
    names += [f"voc/num_gt/{name}" for name in class_names]
    names += [f"voc/num_detections/{name}" for name in class_names]
    names += ["num_images"]
    return names


def iou_matrix(boxes_a, boxes_b):
    """IoU of every box of ``boxes_a`` [N, 4] with every box of ``boxes_b`` [M, 4].

    Continuous coordinates, no +1. An empty union (two degenerate boxes) gives IoU 0.
    """
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    y1 = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    x1 = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    y2 = np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    x2 = np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    intersection = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area_a = _areas(boxes_a)
    area_b = _areas(boxes_b)
    union = area_a[:, None] + area_b[None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
    return iou


def _areas(boxes):
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1],
                                                                 0, None)


def average_precision(recall, precision, use_07_metric=False):
    """AP from the recall / precision after each detection (descending score).

    All-point (default): area under the precision envelope, where the envelope at
    recall r is the best precision at any recall >= r. 11-point (VOC2007): mean over
    r in {0, 0.1, ..., 1} of the best precision at recall >= r (0 if r is never reached).
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        points = []
        for threshold in np.linspace(0.0, 1.0, 11):
            reached = recall >= threshold - 1e-12  # 0.1 * 3 is not exactly 0.3
            points.append(precision[reached].max() if reached.any() else 0.0)
        return float(np.mean(points))
    # Sentinels: recall starts at 0, and precision after the last recall is 0.
    recall_ext = np.concatenate([[0.0], recall, [1.0]])
    precision_ext = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(precision_ext[::-1])[::-1]
    steps = np.nonzero(recall_ext[1:] != recall_ext[:-1])[0]
    return float(np.sum((recall_ext[steps + 1] - recall_ext[steps]) * envelope[steps + 1]))


def _normalise_image_id(image_id):
    """numpy scalars / bytes arrays (from tf.py_func) -> plain hashable Python values."""
    if isinstance(image_id, np.ndarray):
        image_id = image_id.item()
    elif isinstance(image_id, np.generic):
        image_id = image_id.item()
    return image_id


class DetectionEvaluator:
    """Accumulates ground truth and detections image by image; ``evaluate`` scores them.

    An image id may be any hashable (int, str, bytes). Images with ground truth and no
    detections count their boxes as misses; images with detections and no ground truth
    count them as false positives. Adding ground truth (or detections) twice for one
    image keeps the first and logs a warning: an input pipeline that repeats images
    (padding the last batch, a repeated dataset) must not count them twice.
    """

    def __init__(self, class_names, use_07_metric=False):
        self.class_names = list(class_names)
        if not self.class_names:
            raise ValueError("class_names is empty")
        self.num_classes = len(self.class_names)
        self.use_07_metric = use_07_metric
        self.coco_summary_text = ""
        self.reset()

    def reset(self):
        """Forgets every image (start of a new evaluation)."""
        self._ground_truth = {}   # image id -> (boxes [N, 4], labels [N], difficult [N])
        self._detections = {}     # image id -> (boxes [D, 4], scores [D], labels [D])
        self._image_order = {}    # image id -> first-seen index: stable COCO image ids
        self.num_duplicate_images = 0
        self.coco_summary_text = ""

    # ------------------------------------------------------------------ input

    def _check_labels(self, labels, what, image_id):
        if labels.size and (labels.min() < 1 or labels.max() > self.num_classes):
            raise ValueError(f"image {image_id!r}: {what} labels must be in "
                             f"1..{self.num_classes}, got {sorted(set(labels.tolist()))}")

    def _register(self, image_id):
        if image_id not in self._image_order:
            self._image_order[image_id] = len(self._image_order)

    def add_ground_truth(self, image_id, boxes, labels, difficult=None):
        image_id = _normalise_image_id(image_id)
        boxes = _as_boxes(boxes, image_id, "ground-truth")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if difficult is None:
            difficult = np.zeros(len(labels), dtype=bool)
        difficult = np.asarray(difficult).astype(bool).reshape(-1)
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(f"image {image_id!r}: {len(boxes)} boxes, {len(labels)} "
                             f"labels, {len(difficult)} difficult flags")
        self._check_labels(labels, "ground-truth", image_id)
        self._store_once(self._ground_truth, "ground truth", image_id,
                         (boxes, labels, difficult))

    def add_detections(self, image_id, boxes, scores, labels):
        image_id = _normalise_image_id(image_id)
        boxes = _as_boxes(boxes, image_id, "detection")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id!r}: {len(boxes)} boxes, {len(scores)} "
                             f"scores, {len(labels)} labels")
        self._check_labels(labels, "detection", image_id)
        self._store_once(self._detections, "detections", image_id,
                         (boxes, scores, labels))

    def _store_once(self, table, what, image_id, record):
        """Keeps the first record of an image: a pipeline that repeats an image must
        not count it twice. Later ones are ignored, logged and counted."""
        if image_id in table:
            _log.warning("%s of image %r added twice: the second is ignored", what,
                         image_id)
            self.num_duplicate_images += 1
            return
        self._register(image_id)
        table[image_id] = record

    @property
    def num_images(self):
        return len(self._image_order)

    # ------------------------------------------------------------------ VOC

    def class_outcomes(self, class_id):
        """(scores, is_tp) of the class's non-ignored detections, #non-difficult GT."""
        all_scores, all_tp = [], []
        num_gt = 0
        empty = (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
        for image_id in self._image_order:
            gt_boxes, gt_labels, gt_difficult = self._ground_truth.get(image_id, empty)
            of_class = gt_labels == class_id
            gt_boxes, gt_difficult = gt_boxes[of_class], gt_difficult[of_class]
            num_gt += int(np.sum(~gt_difficult))
            if image_id not in self._detections:
                continue
            det_boxes, det_scores, det_labels = self._detections[image_id]
            mine = det_labels == class_id
            if not mine.any():
                continue
            det_boxes, det_scores = det_boxes[mine], det_scores[mine]
            # Matching is greedy by score within the image; images are independent, so
            # matching image by image gives the same TP/FP as one global pass.
            order = np.argsort(-det_scores, kind="stable")
            det_boxes, det_scores = det_boxes[order], det_scores[order]
            outcome = _match_greedy(det_boxes, gt_boxes, gt_difficult)
            kept = outcome != _IGNORED
            all_scores.append(det_scores[kept])
            all_tp.append(outcome[kept] == _TP)
        if all_scores:
            scores, is_tp = np.concatenate(all_scores), np.concatenate(all_tp)
        else:
            scores, is_tp = np.zeros(0), np.zeros(0, bool)
        return scores, is_tp, num_gt

    def pr_curve(self, class_id):
        """The class's VOC precision-recall curve at IoU 0.5: (scores, precision,
        recall, #GT), one point per detection in descending score order; recall is
        None when the class has no (non-difficult) ground truth."""
        scores, is_tp, num_gt = self.class_outcomes(class_id)
        order = np.argsort(-scores, kind="stable")
        tp_cumulative = np.cumsum(is_tp[order])
        fp_cumulative = np.cumsum(~is_tp[order])
        precision = tp_cumulative / np.maximum(tp_cumulative + fp_cumulative, 1)
        recall = tp_cumulative / num_gt if num_gt else None
        return scores[order], precision, recall, num_gt

    def ground_truth_of(self, image_id):
        """(boxes [N, 4], labels [N], difficult [N]) of an image (empty if none)."""
        empty = (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
        return self._ground_truth.get(_normalise_image_id(image_id), empty)

    def detections_of(self, image_id):
        """(boxes [D, 4], scores [D], labels [D]) of an image (empty if none)."""
        empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
        return self._detections.get(_normalise_image_id(image_id), empty)

    @property
    def image_ids(self):
        """Every image seen, in the order first seen."""
        return list(self._image_order)

    def _voc_results(self):
        results = {}
        for class_id, name in enumerate(self.class_names, start=1):
            scores, precision, recall, num_gt = self.pr_curve(class_id)
            results[f"voc/num_gt/{name}"] = float(num_gt)
            results[f"voc/num_detections/{name}"] = float(len(scores))
            if recall is None:
                ap = float("nan")   # recall undefined: no object of this class to find
            else:
                ap = average_precision(recall, precision, self.use_07_metric)
            results[f"voc/AP@0.5/{name}"] = ap
        results["voc/mAP@0.5"] = mean_ap(results, self.class_names)
        return results

    # ------------------------------------------------------------------ COCO

    def coco_datasets(self):
        """(ground truth dict, detection list) in COCO format, as pycocotools reads them.

        Images: every image seen (with ground truth or detections), ids 1..N in the
        order first seen; loadRes requires each detection's image in the GT images.
        """
        images, annotations, results = [], [], []
        for image_id, index in self._image_order.items():
            coco_image_id = index + 1
            images.append({"id": coco_image_id, "file_name": str(image_id)})
            if image_id in self._ground_truth:
                boxes, labels, difficult = self._ground_truth[image_id]
                for box, label, is_difficult in zip(_to_xywh(boxes), labels, difficult):
                    annotations.append({
                        "id": len(annotations) + 1,   # pycocotools wants ids from 1
                        "image_id": coco_image_id, "category_id": int(label),
                        "bbox": [float(v) for v in box],
                        "area": float(box[2] * box[3]),
                        "iscrowd": int(is_difficult),
                    })
            if image_id in self._detections:
                boxes, scores, labels = self._detections[image_id]
                for box, score, label in zip(_to_xywh(boxes), scores, labels):
                    results.append({"image_id": coco_image_id, "category_id": int(label),
                                    "bbox": [float(v) for v in box], "score": float(score)})
        categories = [{"id": class_id, "name": name}
                      for class_id, name in enumerate(self.class_names, start=1)]
        ground_truth = {"images": images, "annotations": annotations,
                        "categories": categories}
        return ground_truth, results

    def _coco_results(self):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        ground_truth, detections = self.coco_datasets()
        chatter = io.StringIO()   # pycocotools prints progress: keep logs readable
        summary = io.StringIO()
        with contextlib.redirect_stdout(chatter):
            coco_gt = COCO()
            coco_gt.dataset = ground_truth
            coco_gt.createIndex()
            if detections:
                coco_dt = coco_gt.loadRes(detections)
            else:
                # loadRes fails on an empty list; an empty result set built the same
                # way lets COCOeval score "nothing found" itself (0 where there is
                # ground truth, -1 -> NaN where there is none).
                coco_dt = COCO()
                coco_dt.dataset = {"images": list(ground_truth["images"]),
                                   "annotations": [],
                                   "categories": list(ground_truth["categories"])}
                coco_dt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
        with contextlib.redirect_stdout(summary):
            coco_eval.summarize()
        self.coco_summary_text = summary.getvalue()
        stats = np.asarray(coco_eval.stats, dtype=np.float64)
        return {name: (float(value) if value >= 0 else float("nan"))
                for name, value in zip(COCO_STAT_NAMES, stats)}

    # ------------------------------------------------------------------ all

    def evaluate(self):
        """Dict of floats with the keys of ``metric_names(class_names)``.

        After the call, ``coco_summary_text`` holds pycocotools' printed summary.
        """
        results = self._voc_results()
        results.update(self._coco_results())
        results["num_images"] = float(self.num_images)
        return {name: results[name] for name in metric_names(self.class_names)}


_TP, _FP, _IGNORED = 1, 0, -1


def _match_greedy(det_boxes, gt_boxes, gt_difficult, iou_threshold=VOC_IOU_THRESHOLD):
    """VOC assignment of score-sorted detections of one class in one image.

    Returns per detection _TP, _FP or _IGNORED (best match is a difficult box).
    """
    outcome = np.full(len(det_boxes), _FP, dtype=np.int64)
    if len(gt_boxes) == 0:
        return outcome
    iou = iou_matrix(det_boxes, gt_boxes)
    best_gt = np.argmax(iou, axis=1)
    matched = np.zeros(len(gt_boxes), dtype=bool)
    for det_index, gt_index in enumerate(best_gt):
        if iou[det_index, gt_index] < iou_threshold:
            continue                      # FP: no box of the class overlaps enough
        if gt_difficult[gt_index]:
            outcome[det_index] = _IGNORED
        elif not matched[gt_index]:
            matched[gt_index] = True
            outcome[det_index] = _TP
        # else: FP, a duplicate of an already found object
    return outcome


def _as_boxes(boxes, image_id, what):
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"image {image_id!r}: {what} boxes must be [N, 4] "
                         f"[y1, x1, y2, x2], got shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"image {image_id!r}: {what} boxes are not all finite")
    return boxes


def _to_xywh(boxes):
    """[y1, x1, y2, x2] -> COCO [x, y, width, height]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1],
                     boxes[:, 2] - boxes[:, 0]], axis=1)
