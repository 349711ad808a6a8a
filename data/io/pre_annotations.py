"""Boxes for a reviewer: Label Studio's task JSON with the boxes as pre-annotations.

    tasks = label_studio_tasks(boxes, model_version, image_url_prefix="")
    write_label_studio(tasks, path)

Written by tools/mine_labels.py (the mined candidates, data/io/mining/labels.py) and
tools/predict.py --label_studio (a model's detections: model-assisted labelling). The
JSON is the task list Label Studio's "Import" takes: one task per image, in the order
of each image's first box, the boxes under `predictions` (model_version, the best
score, one rectanglelabels result per box: x, y, width, height in percent of the image,
top-left corner; the box's own score; `meta.text` a note such as the miner's
decision), so a reviewer opens them as pre-annotations and corrects them.
`image_url_prefix` + the image's name is the task's image, e.g.
"/data/local-files/?d=JPEGImages/" for Label Studio's local file storage.
"""
import collections
import json

from libs.base.io_utils import atomic_write

# One box: the image's name (as the task should show it), its stored size in pixels,
# the class, a score, (y1, x1, y2, x2) in pixels, and an optional note.
Box = collections.namedtuple("Box", "filename width height class_name score box note")


def label_studio_tasks(boxes, model_version, image_url_prefix=""):
    tasks, by_file = [], {}
    for found in boxes:
        if found.filename not in by_file:
            by_file[found.filename] = []
            tasks.append({"data": {"image": image_url_prefix + found.filename},
                          "predictions": [{"model_version": model_version,
                                           "result": by_file[found.filename]}]})
        y1, x1, y2, x2 = found.box
        result = {
            "id": f"c{len(by_file[found.filename])}",
            "type": "rectanglelabels", "from_name": "label", "to_name": "image",
            "original_width": found.width, "original_height": found.height,
            "image_rotation": 0,
            "value": {"x": 100.0 * x1 / found.width, "y": 100.0 * y1 / found.height,
                      "width": 100.0 * (x2 - x1) / found.width,
                      "height": 100.0 * (y2 - y1) / found.height, "rotation": 0,
                      "rectanglelabels": [found.class_name]},
            "score": round(float(found.score), 4)}
        if found.note:
            result["meta"] = {"text": [found.note]}
        by_file[found.filename].append(result)
    for task in tasks:
        results = task["predictions"][0]["result"]
        task["predictions"][0]["score"] = round(max(r["score"] for r in results), 4)
    return tasks


def write_label_studio(tasks, path):
    with atomic_write(path, "w") as handle:
        json.dump(tasks, handle, indent=1)
