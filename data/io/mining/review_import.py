"""A reviewer's verdicts brought back: Label Studio's export applied to a mining round.

    reviewed = read_review(export_path, filenames, new_classes, image_url_prefix, report)
    candidates = reviewed_candidates(images, reviewed, mined_rows, sizes)

tools/mine_labels.py --reviewed. The round wrote label_studio.json (the candidates as
pre-annotations, data/io/pre_annotations.py) and candidates.json (every candidate with
its decision); a reviewer opened the tasks in Label Studio, kept, moved, drew or deleted
boxes and exported the project as JSON (Export -> JSON: the task list with each task's
`annotations`). Applied to the input annotations:

- an image whose task has a submitted annotation (the latest one not cancelled): its
  new-class boxes are the reviewer's, all as labels; every candidate of the round on
  it is replaced (a deleted box becomes background, as the reviewer said);
- an image not reviewed (no task, or no submitted annotation: the pre-annotations are
  the model's, not a person's): the round's accepted boxes and ignore regions, as
  mined.

A task's image is matched to an input image by its name (data.image without
`image_url_prefix`, URL-decoded; else the longest trailing part of its path that names
an input image). Boxes are Label Studio's percent of the image, top-left corner; a
rotated box, a label that is not a new class and a task that matches no image are
skipped with one line each (review_skipped), never guessed.
"""
import json
import os
import urllib.parse

from data.io import annotation
from data.io.mining.candidates import Candidate
from libs.mining import verify

MAX_EXPORT_BYTES = 512 << 20      # a Label Studio export larger than this is refused


class ReviewError(annotation.ConversionError):
    """An unusable export (unreadable, not a task list, no task matching an image)."""


def _match_image(url, filenames, image_url_prefix):
    """The input image a task's data.image names, or None."""
    name = urllib.parse.unquote(str(url))
    if image_url_prefix and name.startswith(image_url_prefix):
        name = name[len(image_url_prefix):]
    name = name.replace("\\", "/")
    if name in filenames:
        return name
    parts = [p for p in name.replace("?", "/").replace("=", "/").split("/") if p]
    for start in range(len(parts)):
        suffix = "/".join(parts[start:])
        if suffix in filenames:
            return suffix
    return None


def _latest_annotation(task):
    """The task's latest submitted annotation (not cancelled), or None."""
    submitted = [a for a in task.get("annotations") or []
                 if isinstance(a, dict) and not a.get("was_cancelled")]
    if not submitted:
        return None
    return max(enumerate(submitted),
               key=lambda item: (str(item[1].get("updated_at", "")), item[0]))[1]


def _box(value):
    """(y1, x1, y2, x2) in fractions of the image from a rectangle's percent value."""
    x, y = float(value["x"]) / 100.0, float(value["y"]) / 100.0
    w, h = float(value["width"]) / 100.0, float(value["height"]) / 100.0
    return y, x, y + h, x + w


def read_review(path, filenames, new_classes, image_url_prefix="", report=None):
    """{image filename: [(class, (y1, x1, y2, x2) in fractions)]} for every reviewed
    image of the export at `path` (see the module docstring); `report` counts what was
    skipped."""
    report = report if report is not None else annotation.Report()
    try:
        if os.path.getsize(path) > MAX_EXPORT_BYTES:
            raise ReviewError(f"{path}: larger than {MAX_EXPORT_BYTES >> 20} MB; not a "
                              f"review export of one mining round")
        with open(path, "r", encoding="utf-8-sig") as handle:
            tasks = json.load(handle)
    except OSError as exc:
        raise ReviewError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ReviewError(f"{path}: not JSON ({exc})") from None
    if not isinstance(tasks, list):
        raise ReviewError(f"{path}: not Label Studio's JSON export (a list of tasks; "
                          f"export the project as JSON, not JSON-MIN or CSV)")
    filenames, new_classes = set(filenames), set(new_classes)
    reviewed, unmatched = {}, 0
    for number, task in enumerate(tasks, 1):
        where = f"{path} task {task.get('id', number) if isinstance(task, dict) else number}"
        image = task.get("data", {}).get("image") if isinstance(task, dict) else None
        name = _match_image(image, filenames, image_url_prefix) if image else None
        if name is None:
            unmatched += 1
            report.add("review_skipped", where, f"image {image!r} is none of the mined "
                       f"images")
            continue
        chosen = _latest_annotation(task)
        if chosen is None:
            continue                      # not reviewed: the round's boxes stand
        boxes = []
        for result in chosen.get("result") or []:
            if not isinstance(result, dict) or result.get("type") != "rectanglelabels":
                continue
            value = result.get("value") or {}
            labels = value.get("rectanglelabels") or []
            try:
                box = _box(value)
                rotation = float(value.get("rotation", 0) or 0)
            except (KeyError, TypeError, ValueError):
                report.add("review_skipped", where, f"a box without x, y, width, height")
                continue
            if len(labels) != 1 or labels[0] not in new_classes:
                report.add("review_skipped", where, f"label {labels!r}: not one of the "
                           f"new classes {sorted(new_classes)}")
                continue
            if rotation % 360:
                report.add("review_skipped", where, f"a {labels[0]} box rotated by "
                           f"{rotation:g} degrees")
                continue
            boxes.append((labels[0], box))
        reviewed[name] = boxes
    if tasks and unmatched == len(tasks):
        raise ReviewError(f"{path}: no task's image is one of the mined images (pass the "
                          f"--image_url_prefix the round was mined with)")
    return reviewed


def reviewed_candidates(images, reviewed, mined_rows, sizes):
    """The boxes to write, as Candidates (the writers of data/io/mining/labels.py): the
    reviewer's on reviewed images (accepted), the round's written ones elsewhere.

    images: the input's annotated images; reviewed: read_review's result (boxes in
    fractions); mined_rows: candidates.json's rows; sizes: {image index: (height,
    width)} of the images as the format's boxes refer to them."""
    index_of = {image.filename: index for index, image in enumerate(images)}
    candidates = []
    for name, boxes in sorted(reviewed.items(), key=lambda item: index_of[item[0]]):
        index = index_of[name]
        height, width = sizes[index]
        for class_name, (y1, x1, y2, x2) in boxes:
            candidates.append(Candidate(
                index, name, class_name, 1.0,
                (y1 * height, x1 * width, y2 * height, x2 * width), height, width,
                verify.Verdict(verify.ACCEPTED, 1.0, [], 1.0)))
    for row in mined_rows:
        if row["file"] in reviewed or row["decision"] == verify.REJECTED:
            continue
        index = index_of.get(row["file"])
        if index is None:
            raise ReviewError(f"candidates.json names {row['file']!r}, which is not among "
                              f"the input images: give the annotations the round mined")
        height, width = sizes[index]
        box = tuple(float(row["box"][key]) for key in ("ymin", "xmin", "ymax", "xmax"))
        candidates.append(Candidate(
            index, row["file"], row["class"], float(row["score"]), box, height, width,
            verify.Verdict(row["decision"], float(row["vote"]), list(row["neighbours"]),
                           float(row["confidence"]))))
    return candidates


def apply_review(fmt, image_dir, annotations, mined_dir, export, output_dir,
                 split_file=None, class_names=None, image_url_prefix="", overwrite=False):
    """tools/mine_labels.py --reviewed: the input annotations with the reviewed round's
    boxes (module docstring), written to output_dir in the input's format (as the round
    wrote its own). Returns {"reviewed_images", "reviewed_boxes", "mined_boxes"}."""
    from data.io import convert
    from data.io.mining import labels as mined_labels
    from libs.base import images as images_lib

    ranked_path = os.path.join(mined_dir, "candidates.json")
    try:
        with open(ranked_path, "r", encoding="utf-8") as handle:
            ranked = json.load(handle)
        rows, new_classes = ranked["candidates"], list(ranked["per_class"])
    except OSError as exc:
        raise ReviewError(f"{ranked_path}: unreadable ({exc.strerror or exc}); --mined_dir "
                          f"is the --output_dir of the mining round") from None
    except (ValueError, KeyError, TypeError):
        raise ReviewError(f"{ranked_path}: not a candidates.json of tools/mine_labels.py") \
            from None
    images, _ = convert.read_annotations(fmt, image_dir, annotations, split_file,
                                         class_names=class_names)
    target = mined_labels.annotations_target(fmt, output_dir, overwrite, annotations)
    report = annotation.Report()
    reviewed = read_review(export, [image.filename for image in images], new_classes,
                           image_url_prefix, report)
    wanted = set(reviewed) | {row["file"] for row in rows
                              if row["decision"] != verify.REJECTED}
    sizes = {}
    for index, image in enumerate(images):
        if image.filename in wanted:
            size = images_lib.image_size(image.image_path,
                                         apply_orientation=image.apply_orientation) \
                if image.image_path else None
            if size is None:
                raise ReviewError(f"{image.image_path or image.filename}: unreadable "
                                  f"image; its boxes cannot be written")
            sizes[index] = size
    candidates = reviewed_candidates(images, reviewed, rows, sizes)
    os.makedirs(output_dir, exist_ok=True)
    mined_labels.write_annotations(fmt, annotations, images, candidates, target,
                                   overwrite=overwrite, class_names=class_names)
    return {"reviewed_images": len(reviewed),
            "reviewed_boxes": sum(len(boxes) for boxes in reviewed.values()),
            "mined_boxes": sum(c.filename not in reviewed for c in candidates)}
