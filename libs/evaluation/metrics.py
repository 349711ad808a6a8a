"""The detection metrics of an Estimator evaluation, for EstimatorSpec(eval_metric_ops=).

    ops = eval_metric_ops(detections, gt_boxes, gt_labels, gt_difficult, image_ids,
                          class_names=names, sink=sink)

The detections and ground truth of each evaluated batch go, through a py_func, to a
Python DetectionEvaluator (libs/evaluation/detection_evaluator.py: VOC AP, COCO) fed by
a StreamingEvaluation; its figures come back as one value op per metric name
(metric_names). An EvaluationSink in the Estimator's params hands that evaluator to the
caller (tools/eval.py's report reads every image from it).
"""
import re
import threading

import numpy as np

from libs.base.tf_compat import tf
from libs.evaluation.detection_evaluator import DetectionEvaluator, metric_names


class EvaluationSink:
    """Keeps the StreamingEvaluation of an Estimator evaluation for the caller.

    Passed in the Estimator's params (params["evaluation_sink"]), which the Estimator
    deep-copies: a copy is this same object, so what model_fn adds reaches the caller
    (libs/evaluation/eval_report.py reads every image's ground truth and detections from it).
    """

    def __init__(self):
        self.evaluations = []

    def __deepcopy__(self, memo):
        return self

    @property
    def evaluator(self):
        """The DetectionEvaluator of the last evaluation (None before one)."""
        return self.evaluations[-1].evaluator if self.evaluations else None


class StreamingEvaluation:
    """The Python side of the Estimator metrics: one evaluator fed batch by batch.

    ``update`` adds a padded batch; ``values`` evaluates once and caches the result, so
    the several value ops of one evaluation (or repeated reads) cost one evaluation.
    The first ``update`` after values were read starts a new evaluation (reset), which
    is how a session that runs several evaluations in a row gets fresh figures.
    A lock guards the state: TF may run py_funcs from several threads.
    """

    def __init__(self, class_names, use_07_metric=False, evaluator=None):
        self.evaluator = evaluator or DetectionEvaluator(class_names, use_07_metric)
        self.names = metric_names(self.evaluator.class_names)
        self._cached = None
        self._lock = threading.Lock()

    def update(self, detections, gt_boxes, gt_labels, gt_difficult, image_ids,
               num_gt=None):
        """Adds one batch (numpy); padding: score 0 / class 0 rows, label 0 GT rows."""
        with self._lock:
            if self._cached is not None:
                self.evaluator.reset()
                self._cached = None
            detections = np.asarray(detections, dtype=np.float64)
            if detections.ndim != 3 or detections.shape[2] != 6:
                raise ValueError(f"detections must be [B, MAX, 6], got {detections.shape}")
            for index, image_id in enumerate(image_ids):
                labels = np.asarray(gt_labels[index]).reshape(-1)
                valid = labels > 0
                if num_gt is not None:
                    valid &= np.arange(len(labels)) < int(num_gt[index])
                difficult = (np.zeros(len(labels), bool) if gt_difficult is None
                             else np.asarray(gt_difficult[index]).reshape(-1).astype(bool))
                self.evaluator.add_ground_truth(
                    image_id, np.asarray(gt_boxes[index]).reshape(-1, 4)[valid],
                    labels[valid], difficult[valid])
                rows = detections[index]
                real = (rows[:, 4] > 0) & (np.round(rows[:, 5]) >= 1)
                rows = rows[real]
                self.evaluator.add_detections(image_id, rows[:, :4], rows[:, 4],
                                              np.round(rows[:, 5]).astype(np.int64))
            return np.int64(self.evaluator.num_images)

    def values(self):
        """All metrics as float32 [len(names)], in ``names`` order."""
        with self._lock:
            if self._cached is None:
                results = self.evaluator.evaluate()
                self._cached = np.array([results[name] for name in self.names],
                                        dtype=np.float32)
            return self._cached


def _op_name(text):
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", text)


def eval_metric_ops(detections, gt_boxes, gt_labels, gt_difficult, image_ids,
                    num_gt=None, class_names=None, use_07_metric=False, names=None,
                    sink=None):
    """Detection metrics for ``tf.estimator.EstimatorSpec(eval_metric_ops=...)``.

    Tensors of one batch: ``detections`` float32 [B, MAX, 6] rows
    [y1, x1, y2, x2, score, class] in original-image pixels, zero-padded (score 0);
    ``gt_boxes`` [B, G, 4], ``gt_labels`` [B, G] (0 = padding), ``gt_difficult`` [B, G]
    or None, ``image_ids`` [B] (int or string), ``num_gt`` [B] or None (then label > 0
    tells real boxes). ``names`` picks a subset of ``metric_names(class_names)``;
    ``sink`` (EvaluationSink) keeps the evaluation's state for the caller.

    Returns {name: (value_op, update_op)}. All names share one update op (a py_func
    feeding a Python ``DetectionEvaluator``) and one py_func computing every value,
    sliced per name: a sess.run of all value ops evaluates once. The Python state lives
    with the graph; the first update after values were read starts a new evaluation.
    """
    if class_names is None:
        raise ValueError("class_names is required")
    state = StreamingEvaluation(class_names, use_07_metric)
    if sink is not None:
        sink.evaluations.append(state)
    selected = state.names if names is None else list(names)
    unknown = set(selected) - set(state.names)
    if unknown:
        raise ValueError(f"unknown metric names {sorted(unknown)}")
    inputs = [detections, gt_boxes, gt_labels, image_ids]
    has_difficult, has_num_gt = gt_difficult is not None, num_gt is not None
    if has_difficult:
        inputs.append(gt_difficult)
    if has_num_gt:
        inputs.append(num_gt)

    def update(*arrays):
        det, boxes, labels, ids = arrays[:4]
        rest = list(arrays[4:])
        difficult = rest.pop(0) if has_difficult else None
        counts = rest.pop(0) if has_num_gt else None
        return state.update(det, boxes, labels, difficult, ids, counts)

    with tf.name_scope("detection_metrics"):
        update_op = tf.py_func(update, inputs, tf.int64, stateful=True, name="update")
        all_values = tf.py_func(state.values, [], tf.float32, stateful=True,
                                name="evaluate")
        all_values.set_shape([len(state.names)])
        ops = {}
        for name in selected:
            value = tf.identity(all_values[state.names.index(name)],
                                name=_op_name(name.replace("@", "_at_")))
            ops[name] = (value, update_op)
    return ops
