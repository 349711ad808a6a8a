"""Detection on image files: what tools/predict.py does, as library code.

    summary = predict_files(detector, ["a.jpg", "folder/"], "output/predictions")

Each image is read with the converter's rules (data/io/images.load_image: 8-bit RGB
JPEG/PNG go to the model byte for byte; grayscale, RGBA, 16-bit, TIFF, WebP... are
converted to 8-bit RGB first), sent to the model on its own, and written to
`output_dir` with its boxes, class names and scores drawn. `detections.json` lists
every image's detections in original pixels, and the files that were skipped with the
reason. An unreadable image is reported and skipped; the others go on.
"""
import json
import os

import cv2
import numpy as np
from absl import logging

from libs.base import images as images_lib
from libs.base.errors import UserError
from libs.base.io_utils import Progress, atomic_path, atomic_write
from libs.serving.export import ExportError

DETECTIONS_FILE = "detections.json"

# Distinct BGR colours, one per class id (cycled).
_PALETTE = ((60, 180, 75), (48, 130, 245), (25, 225, 255), (230, 50, 240),
            (240, 240, 70), (75, 25, 230), (180, 30, 145), (200, 130, 0))


class PredictionError(UserError):
    """No usable input (nothing to predict on); one line for the user."""


def find_images(paths):
    """Files and folders -> the image files, in order (folders: sorted, not recursive)."""
    images = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(name for name in os.listdir(path)
                           if not name.startswith(".")
                           and os.path.splitext(name)[1].lower() in images_lib.IMAGE_EXTENSIONS)
            images.extend(os.path.join(path, name) for name in names)
        elif os.path.exists(path):
            images.append(path)
        else:
            raise PredictionError(f"--images {path}: no such file or folder")
    if not images:
        raise PredictionError(f"no image files in {', '.join(paths)} (extensions: "
                              f"{' '.join(images_lib.IMAGE_EXTENSIONS)})")
    return images


def draw_detections(rgb, result):
    """A BGR copy of `rgb` with each box, class name and score drawn."""
    canvas = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    font_scale = max(0.35, max(height, width) / 1500)
    for box, class_id, name, score in zip(result["boxes"], result["class_ids"],
                                          result["class_names"], result["scores"]):
        color = _PALETTE[int(class_id) % len(_PALETTE)]
        y1, x1, y2, x2 = [int(round(float(v))) for v in box]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        label = f"{name} {float(score):.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX,
                                                     font_scale, 1)
        top = max(y1 - text_h - baseline, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + text_w, top + text_h + baseline), color, -1)
        cv2.putText(canvas, label, (x1, top + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def detections_record(result, min_score=0.0):
    """JSON-ready detections of one image (scores >= min_score)."""
    rows = []
    for box, class_id, name, score in zip(result["boxes"], result["class_ids"],
                                          result["class_names"], result["scores"]):
        if float(score) < min_score:
            continue
        y1, x1, y2, x2 = [round(float(v), 2) for v in box]
        rows.append({"class_id": int(class_id), "class": name,
                     "score": round(float(score), 4),
                     "box": {"ymin": y1, "xmin": x1, "ymax": y2, "xmax": x2}})
    return rows


def _filter(result, min_score):
    keep = np.asarray(result["scores"]) >= min_score
    return {"boxes": np.asarray(result["boxes"])[keep],
            "class_ids": np.asarray(result["class_ids"])[keep],
            "class_names": [n for n, k in zip(result["class_names"], keep) if k],
            "scores": np.asarray(result["scores"])[keep]}


def _output_name(path, used):
    stem, ext = os.path.splitext(os.path.basename(path))
    ext = ".jpg" if ext.lower() in (".jpg", ".jpeg") else ".png"
    name, k = stem + ext, 1
    while name in used:            # two inputs with the same name from different folders
        name, k = f"{stem}_{k}{ext}", k + 1
    used.add(name)
    return name


def predict_files(detector, paths, output_dir, min_score=0.0, draw=True):
    """Runs `detector` (libs.serving.export.Detector) on image files; returns the summary dict.

    The summary (also written to <output_dir>/detections.json) holds "images" (file,
    drawn output, size, detections) and "skipped" (file, reason).
    """

    files = find_images(paths)
    os.makedirs(output_dir, exist_ok=True)
    summary = {"model": detector.info, "min_score": min_score, "images": [], "skipped": []}
    used_names = set()
    with Progress(len(files), "predicting", unit="images") as progress:
        for path in files:
            try:
                loaded = images_lib.load_image(path)
                result = detector.detect([loaded.encoded])[0]
            except (images_lib.ImageError, ExportError) as exc:
                logging.warning("%s: %s -> skipped", path, exc)
                summary["skipped"].append({"file": path, "reason": str(exc)})
                progress.update()
                continue
            result = _filter(result, min_score)
            entry = {"file": path, "height": int(loaded.height), "width": int(loaded.width),
                     "detections": detections_record(result)}
            if draw:
                name = _output_name(path, used_names)
                target = os.path.join(output_dir, name)
                with atomic_path(target) as temp:
                    # The temporary name has no image extension: give cv2 the format.
                    ok, encoded = cv2.imencode(os.path.splitext(name)[1],
                                               draw_detections(loaded.rgb, result))
                    if not ok:
                        raise OSError(f"cannot encode {target}")
                    with open(temp, "wb") as handle:
                        handle.write(encoded.tobytes())
                entry["output"] = target
            summary["images"].append(entry)
            progress.update()
    with atomic_write(os.path.join(output_dir, DETECTIONS_FILE), "w") as handle:
        json.dump(summary, handle, indent=1, default=_json_default)
        handle.write("\n")
    return summary


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
