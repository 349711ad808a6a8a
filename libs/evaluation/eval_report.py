"""An evaluation you can look at: an HTML report folder and TensorBoard PR curves.

    sink = metrics.EvaluationSink()
    results, checkpoint = training.evaluate(run, split=split, sink=sink)
    write_pr_curves(eval_dir, sink.evaluator, run.class_names, step)
    write_html_report(folder, sink.evaluator, results, run, split, checkpoint)

Everything comes from the evaluation itself: the DetectionEvaluator that computed the
table holds every image's ground truth and detections (score >= EVAL_SCORE_THRESHOLD),
so the report costs no second pass of the model. The folder is self-contained and
opens offline: index.html with the run (config, checkpoint, step, split), the
per-class table (AP@0.5, COCO AP, #GT, #detections), one precision-recall curve per
class, the confusion matrix with "missed" and "background", AP by object size (COCO's
small / medium / large) and a gallery of the images with the most errors at the
display threshold (DETECTION_MIN_CONFIDENCE), drawn by libs/evaluation/error_analysis.py.
Difficult objects are left out of every count as VOC AP leaves them out: never missed,
and a detection on one of its class is ignored (neither correct nor a false positive),
so the confusion matrix's diagonal is the true positives VOC AP counts at the display
threshold.
Plots are matplotlib PNGs (Agg backend, no display needed).
"""
import html
import os

import numpy as np

from libs.base import images as images_lib
from libs.base.io_utils import atomic_directory
from libs.base.tf_compat import tf
from libs.evaluation import error_analysis

PR_CURVE_THRESHOLDS = 101
GALLERY_SIZE = 12
GALLERY_SIDE = 400


# ------------------------------------------------------------------------- TensorBoard

def pr_curve_counts(scores, is_true, num_gt, num_thresholds=PR_CURVE_THRESHOLDS):
    """TP, FP, TN, FN, precision, recall at thresholds 0, 1/(n-1), ..., 1 from the
    detections' scores, whether each is a true positive, and the number of objects (a
    detection below a threshold is dropped; TN is 0: detection has no negatives)."""
    thresholds = np.linspace(0.0, 1.0, num_thresholds)
    scores = np.asarray(scores, np.float64)
    is_true = np.asarray(is_true, bool)
    kept = scores[None, :] >= thresholds[:, None]
    tp = (kept & is_true[None, :]).sum(axis=1).astype(np.float64)
    fp = (kept & ~is_true[None, :]).sum(axis=1).astype(np.float64)
    fn = np.maximum(num_gt - tp, 0.0)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    recall = tp / num_gt if num_gt else np.zeros_like(tp)
    return tp, fp, np.zeros_like(tp), fn, precision, recall


def write_pr_curves(eval_dir, evaluator, class_names, step):
    """One PR curve per class (TensorBoard's PR curve plugin) in eval_dir's events,
    beside the Estimator's mAP scalars: pr_curves/<class>."""
    from tensorboard.plugins.pr_curve import summary as pr_summary

    summary = tf.compat.v1.Summary()
    for class_id, name in enumerate(class_names, start=1):
        scores, is_true, num_gt = evaluator.class_outcomes(class_id)
        tp, fp, tn, fn, precision, recall = pr_curve_counts(scores, is_true, num_gt)
        summary.value.extend(pr_summary.raw_data_pb(
            f"pr_curves/{name}", true_positive_counts=tp, false_positive_counts=fp,
            true_negative_counts=tn, false_negative_counts=fn, precision=precision,
            recall=recall, num_thresholds=PR_CURVE_THRESHOLDS,
            display_name=f"{name} (VOC IoU 0.5, {num_gt} objects)").value)
    # The cached writer is the one the Estimator's evaluation wrote its scalars with: a
    # second FileWriter opened within the same second would get the same file name.
    writer = tf.compat.v1.summary.FileWriterCache.get(eval_dir)
    writer.add_summary(summary, global_step=step)
    writer.flush()


# ----------------------------------------------------------------------------- errors

def image_errors(evaluator, min_score):
    """{image id: error_analysis result} of every image, detections >= min_score,
    difficult ground truth ignored as the evaluator's VOC AP ignores it."""
    found = {}
    for image_id in evaluator.image_ids:
        gt_boxes, gt_labels, gt_difficult = evaluator.ground_truth_of(image_id)
        boxes, scores, labels = evaluator.detections_of(image_id)
        keep = scores >= min_score
        found[image_id] = error_analysis.analyse_image(gt_boxes, gt_labels, boxes[keep],
                                                       labels[keep], scores[keep],
                                                       gt_difficult)
    return found


def confusion_matrix(evaluator, errors, num_classes):
    """error_analysis.confusion_counts summed over the images: [C + 1, C + 1] without
    the empty class-0 row and column (rows: classes then background; columns: classes
    then missed)."""
    total = np.zeros([num_classes + 2, num_classes + 2], np.int64)
    for image_id, result in errors.items():
        total += error_analysis.confusion_counts(evaluator.ground_truth_of(image_id)[1],
                                                 result, num_classes)
    return total[1:, 1:]


# ------------------------------------------------------------------------------ plots

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_pr_curves(path, evaluator, class_names, results):
    plt = _pyplot()
    columns = min(3, len(class_names))
    rows = (len(class_names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.4 * rows),
                                squeeze=False)
    for index, name in enumerate(class_names):
        axis = axes[index // columns][index % columns]
        _, precision, recall, num_gt = evaluator.pr_curve(index + 1)
        if recall is not None and len(recall):
            axis.plot(recall, precision, color="tab:blue")
        ap = results.get(f"voc/AP@0.5/{name}", float("nan"))
        axis.set_title(f"{name}: AP@0.5 {ap:.3f} ({num_gt} objects)", fontsize=10)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("recall")
        axis.set_ylabel("precision")
        axis.grid(alpha=0.3)
    for index in range(len(class_names), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_confusion(path, matrix, class_names, min_score):
    plt = _pyplot()
    rows = list(class_names) + ["background"]
    columns = list(class_names) + ["missed"]
    size = 1.2 + 0.7 * len(rows)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    axis.set_yticks(range(len(rows)), rows)
    axis.set_xlabel(f"predicted (score >= {min_score:g})")
    axis.set_ylabel("ground truth")
    peak = matrix.max() if matrix.size else 0
    for r in range(matrix.shape[0]):
        for c in range(matrix.shape[1]):
            if r == matrix.shape[0] - 1 and c == matrix.shape[1] - 1:
                continue   # background missed: not a thing
            axis.text(c, r, str(matrix[r, c]), ha="center", va="center", fontsize=9,
                      color="white" if peak and matrix[r, c] > peak / 2 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_ap_by_size(path, results):
    plt = _pyplot()
    sizes = ("small", "medium", "large")
    values = [results.get(f"coco/AP_{s}", float("nan")) for s in sizes]
    figure, axis = plt.subplots(figsize=(4.5, 3))
    shown = [0.0 if np.isnan(v) else v for v in values]
    bars = axis.bar(sizes, shown, color="tab:blue")
    for bar, value in zip(bars, values):
        axis.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01,
                  "n/a" if np.isnan(value) else f"{value:.3f}", ha="center", fontsize=9)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("COCO AP@[.5:.95]")
    axis.set_title("AP by object size (area < 32², < 96², larger)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


# ------------------------------------------------------------------------------ HTML

def _gallery(folder, evaluator, errors, run, split, class_names):
    """Draws the GALLERY_SIZE images with the most errors; [(file, caption)]."""
    import cv2

    worst = sorted((image_id for image_id in errors
                    if error_analysis.num_errors(errors[image_id])),
                   key=lambda i: (-error_analysis.num_errors(errors[i]), str(i)))
    worst = worst[:GALLERY_SIZE]
    records = run.dataset.records(split, worst)
    drawn = []
    for rank, image_id in enumerate(worst, 1):
        record = records.get(int(image_id))
        if record is None:
            continue
        result = errors[image_id]
        gt_boxes, gt_labels, _ = evaluator.ground_truth_of(image_id)
        rgb, _ = images_lib.decode_image_bytes(record["image"])
        canvas = error_analysis.draw_errors(rgb, gt_boxes, gt_labels, result, class_names,
                                            side=GALLERY_SIDE)
        name = f"gallery_{rank:02d}.png"
        cv2.imwrite(os.path.join(folder, name), canvas)
        kinds = {}
        for _, kind in result["false_positives"]:
            kinds[kind] = kinds.get(kind, 0) + 1
        caption = (f"{record['filename'].decode()}: {len(result['misses'])} missed, "
                   + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
                   + (" false positive(s)" if kinds else "0 false positives"))
        if result["ignored"]:
            caption += f"; {len(result['ignored'])} ignored on difficult objects"
        drawn.append((name, caption))
    return drawn


def _table(results, class_names):
    rows = []
    for name in class_names:
        ap = results.get(f"voc/AP@0.5/{name}", float("nan"))
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(ap)}</td>"
                    f"<td>{int(results.get(f'voc/num_gt/{name}', 0))}</td>"
                    f"<td>{int(results.get(f'voc/num_detections/{name}', 0))}</td></tr>")
    rows.append(f"<tr class='total'><td>mean</td><td>{_fmt(results.get('voc/mAP@0.5'))}"
                f"</td><td></td><td></td></tr>")
    coco = " &nbsp; ".join(
        f"{label} {_fmt(results.get(key))}" for label, key in (
            ("mAP@[.5:.95]", "coco/mAP"), ("AP50", "coco/AP50"), ("AP75", "coco/AP75"),
            ("AR@100", "coco/AR@100")))
    return ("<table><tr><th>class</th><th>AP@0.5</th><th>#GT</th><th>#detections</th>"
            "</tr>" + "".join(rows) + f"</table><p>COCO: {coco}</p>")


def _fmt(value):
    return "n/a" if value is None or np.isnan(value) else f"{value:.3f}"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:right}td:first-child,th:first-child{text-align:left}tr.total{font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.gallery figure{margin:0;width:400px}
figcaption{font-size:0.85em}.key span{padding:1px 6px;color:white;margin-right:6px}
.key span.dashed{background:white;border:2px dashed}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}"""


def write_html_report(folder, evaluator, results, run, split, checkpoint, step=None):
    """Writes the report folder atomically (a failure leaves an earlier one as it
    was); returns the path of its index.html."""
    cfg = run.cfg
    names = list(run.class_names)
    min_score = cfg.DETECTION_MIN_CONFIDENCE
    errors = image_errors(evaluator, min_score)
    matrix = confusion_matrix(evaluator, errors, len(names))
    with atomic_directory(folder, overwrite=True) as temp:
        plot_pr_curves(os.path.join(temp, "pr_curves.png"), evaluator, names, results)
        plot_confusion(os.path.join(temp, "confusion.png"), matrix, names, min_score)
        plot_ap_by_size(os.path.join(temp, "ap_by_size.png"), results)
        gallery = _gallery(temp, evaluator, errors, run, split, names)
        kinds = {kind: 0 for kind in error_analysis.FALSE_POSITIVE_KINDS}
        missed = sum(len(r["misses"]) for r in errors.values())
        ignored = sum(len(r["ignored"]) for r in errors.values())
        num_difficult = sum(int(np.sum(r["difficult"])) for r in errors.values())
        for result in errors.values():
            for _, kind in result["false_positives"]:
                kinds[kind] += 1
        key = "".join(
            f"<span style='background:rgb{tuple(reversed(colour))}'>{label}</span>"
            for label, colour in (("ground truth", error_analysis.COLOURS["gt"]),
                                  ("correct", error_analysis.COLOURS["hit"]),
                                  ("missed", error_analysis.COLOURS["miss"]),
                                  ("false positive", error_analysis.COLOURS["fp"])))
        key += "".join(
            f"<span class='dashed' style='border-color:rgb{tuple(reversed(colour))};"
            f"color:rgb{tuple(reversed(colour))}'>{label}</span>"
            for label, colour in (
                ("difficult object (dashed: not counted)", error_analysis.COLOURS["gt"]),
                ("ignored: on a difficult object (dashed)",
                 error_analysis.COLOURS["ignored"])))
        figures = "".join(f"<figure><img src='{name}' alt='{html.escape(caption)}'>"
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                          for name, caption in gallery)
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation: {html.escape(cfg.NAME)} on {html.escape(split)}</title>
<style>{_STYLE}</style></head><body>
<h1>Evaluation: {html.escape(cfg.NAME)} on {html.escape(split)}</h1>
<dl><dt>config</dt><dd>{html.escape(cfg.NAME)}</dd>
<dt>checkpoint</dt><dd>{html.escape(str(checkpoint))}</dd>
<dt>step</dt><dd>{step if step is not None else "n/a"}</dd>
<dt>split</dt><dd>{html.escape(split)} ({evaluator.num_images} images)</dd>
<dt>display threshold</dt><dd>{min_score:g} (confusion matrix, errors, gallery; the
AP figures rank every detection >= {cfg.EVAL_SCORE_THRESHOLD:g})</dd></dl>
<h2>Per class</h2>{_table(results, names)}
<h2>Precision-recall (VOC, IoU 0.5)</h2><img src="pr_curves.png" alt="precision-recall curves">
<h2>Confusion matrix</h2>
<p>Rows: what the object is ("background": a detection on no object of its class);
columns: what the model said ("missed": nothing at the threshold). Errors at score
&gt;= {min_score:g}: {missed} missed objects; false positives {", ".join(
            f"{count} {kind}" for kind, count in kinds.items())}. As in VOC AP,
the {num_difficult} difficult objects are not counted (never missed) and the {ignored}
detections on a difficult object of their class are ignored (neither correct nor false
positives).</p>
<img src="confusion.png" alt="confusion matrix">
<h2>AP by object size</h2><img src="ap_by_size.png" alt="AP by object size">
<h2>The images with the most errors</h2>
<p class="key">{key}</p><div class="gallery">{figures or "<p>No errors.</p>"}</div>
</body></html>
"""
        with open(os.path.join(temp, "index.html"), "w", encoding="utf-8") as handle:
            handle.write(page)
    return os.path.join(folder, "index.html")
