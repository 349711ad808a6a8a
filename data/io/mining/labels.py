"""Mined labels written out: the input's annotations with the new boxes, Label Studio
pre-annotations, and the ranked list (tools/mine_labels.py; data/io/mining/candidates.py finds
and verifies the candidates).

    write_annotations(fmt, annotations, images, candidates, output)
    write_label_studio(candidates, path, model_version, image_url_prefix="")
    write_ranked_list(result, path)

Annotations, in the format they were read from (the input is never modified):
- VOC: every XML read is copied to the output folder; an accepted candidate becomes an
  <object> (difficult 0), a doubtful one an <object> with <ignore>1</ignore> (an
  ignore region for convert_to_tfrecord.py: no anchor or ROI inside it trains as
  background). Rejected ones are not written.
- COCO: the JSON with the new annotations appended (ids after the largest), a new
  category per new class that has none (id after the largest); a doubtful box is an
  `iscrowd: 1` annotation (read back as an ignore region).
- YOLO: a labels folder, every label file read copied (same relative names); an
  accepted candidate is a line appended to x.txt, a doubtful one a line of
  x.ignore.txt (this project's ignore regions for YOLO, data/io/formats/yolo.py); a new
  class takes the id after the largest, and the folder's data.yaml names every id (the
  reader finds it before the input's). Pose labels (kpt_shape) are refused: a mined box
  has no keypoints.
Boxes are in the image's stored pixels for VOC and COCO (they do not apply EXIF
orientation) and in the upright image's for YOLO, as each reader reads them.

Label Studio (data/io/pre_annotations.py): one task per image with a candidate, the
accepted and doubtful ones as pre-annotations, each noted with its decision; the
image's name is its file name relative to the image folder.
"""
import copy
import json
import os
import shutil
from xml.etree import ElementTree

from data.io import annotation, pre_annotations
from data.io.formats import yolo
from libs.base.io_utils import atomic_directory, atomic_write
from libs.mining import verify

WRITTEN = (verify.ACCEPTED, verify.DOUBTFUL)


def _written(candidates):
    return [c for c in candidates if c.verdict.decision in WRITTEN]


def _by_image(candidates):
    found = {}
    for candidate in _written(candidates):
        found.setdefault(candidate.image_index, []).append(candidate)
    return found


_TARGETS = {"voc": "annotations", "coco": "annotations.json", "yolo": "labels"}


def annotations_target(fmt, output_dir, overwrite=False, annotations=None):
    """Where write_annotations puts format `fmt` in output_dir; a one-line error, before
    any work, for a format it cannot write or an output that exists."""
    if fmt not in _TARGETS:
        raise annotation.ConversionError(
            f"--format {fmt}: mined labels are written as {', '.join(_TARGETS)}")
    if fmt == "yolo" and annotations and yolo.keypoint_values_per_line(annotations):
        raise annotation.ConversionError(
            f"{annotations}: pose labels (kpt_shape): a mined box has no keypoints, so "
            f"they cannot be written beside them")
    target = os.path.join(output_dir, _TARGETS[fmt])
    if os.path.exists(target) and not overwrite:
        raise annotation.ConversionError(f"{target} exists (pass --overwrite to replace it)")
    return target


def write_annotations(fmt, annotations, images, candidates, output, overwrite=False,
                      class_names=None):
    """The input's annotations plus the accepted (labels) and doubtful (ignore
    regions) candidates, in format `fmt`, to `output` (a folder for VOC and YOLO, a
    file for COCO). class_names: YOLO's --class_names, when the input was read with
    them. Returns the number of boxes written per decision."""
    if fmt == "yolo":
        _write_yolo(annotations, images, _by_image(candidates), output, overwrite,
                    class_names)
    else:
        {"voc": _write_voc, "coco": _write_coco}[fmt](
            annotations, images, _by_image(candidates), output, overwrite)
    written = _written(candidates)
    return {decision: sum(c.verdict.decision == decision for c in written)
            for decision in WRITTEN}


def _voc_object(candidate):
    element = ElementTree.Element("object")
    ElementTree.SubElement(element, "name").text = candidate.class_name
    ElementTree.SubElement(element, "difficult").text = "0"
    if candidate.verdict.decision == verify.DOUBTFUL:
        ElementTree.SubElement(element, "ignore").text = "1"
    box = ElementTree.SubElement(element, "bndbox")
    y1, x1, y2, x2 = candidate.box
    for key, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
        ElementTree.SubElement(box, key).text = f"{value:.1f}"
    return element


def _write_voc(annotations_dir, images, by_image, output_dir, overwrite):
    with atomic_directory(output_dir, overwrite=overwrite) as temp:
        for index, image in enumerate(images):
            target = os.path.join(temp, os.path.basename(image.source))
            if index not in by_image:
                shutil.copyfile(image.source, target)
                continue
            tree = ElementTree.parse(image.source)
            root = tree.getroot()
            for candidate in by_image[index]:
                root.append(_voc_object(candidate))
            tree.write(target, encoding="utf-8", xml_declaration=False)


def _write_coco(json_path, images, by_image, output_path, overwrite):
    with open(json_path) as handle:
        data = json.load(handle)
    data = copy.deepcopy(data)
    categories = {c["name"]: c["id"] for c in data.get("categories", [])}
    next_category = max(categories.values(), default=0) + 1
    next_id = max((a.get("id", 0) for a in data.get("annotations", [])
                   if isinstance(a.get("id", 0), int)), default=0) + 1
    for index, found in sorted(by_image.items()):
        image_id = images[index].image_id
        for candidate in found:
            if candidate.class_name not in categories:
                categories[candidate.class_name] = next_category
                data.setdefault("categories", []).append(
                    {"id": next_category, "name": candidate.class_name})
                next_category += 1
            y1, x1, y2, x2 = candidate.box
            data.setdefault("annotations", []).append({
                "id": next_id, "image_id": image_id,
                "category_id": categories[candidate.class_name],
                "bbox": [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)],
                "area": round((x2 - x1) * (y2 - y1), 1),
                "iscrowd": int(candidate.verdict.decision == verify.DOUBTFUL),
                "score": round(candidate.score, 4)})
            next_id += 1
    with atomic_write(output_path, "w") as handle:
        json.dump(data, handle)


def yolo_line(class_id, box, height, width):
    """"id cx cy w h", normalised to the image, of a (y1, x1, y2, x2) box in pixels."""
    y1, x1, y2, x2 = box
    return (f"{class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")


def _append_lines(source, target, lines):
    """`source` (if it exists) copied to `target` with `lines` after its own."""
    text = ""
    if source and os.path.isfile(source):
        with open(source, "r", encoding="utf-8-sig", errors="replace") as handle:
            text = handle.read()
    if text and not text.endswith("\n"):
        text += "\n"
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text + "".join(line + "\n" for line in lines))


def _write_yolo(labels_dir, images, by_image, output_dir, overwrite, class_names):
    names = yolo.read_class_names(labels_dir, class_names)
    ids = {}
    for class_id, name in names.items():
        ids.setdefault(name, class_id)
    for candidate in sorted((c for found in by_image.values() for c in found),
                            key=lambda c: c.class_name):
        if candidate.class_name not in ids:
            ids[candidate.class_name] = max(list(names) + list(ids.values()), default=-1) + 1
            names[ids[candidate.class_name]] = candidate.class_name
    with atomic_directory(output_dir, overwrite=overwrite) as temp:
        for index, image in enumerate(images):
            relative = os.path.relpath(image.source, labels_dir)
            stem = os.path.splitext(relative)[0]
            found = by_image.get(index, [])
            lines = {decision: [yolo_line(ids[c.class_name], c.box, c.height, c.width)
                                for c in found if c.verdict.decision == decision]
                     for decision in WRITTEN}
            _append_lines(image.source, os.path.join(temp, relative), lines[verify.ACCEPTED])
            ignore_source = os.path.join(labels_dir, stem + yolo.IGNORE_SUFFIX + ".txt")
            if lines[verify.DOUBTFUL] or os.path.isfile(ignore_source):
                _append_lines(ignore_source,
                              os.path.join(temp, stem + yolo.IGNORE_SUFFIX + ".txt"),
                              lines[verify.DOUBTFUL])
        import yaml
        with open(os.path.join(temp, "data.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump({"names": dict(sorted(names.items()))}, handle,
                           allow_unicode=True, sort_keys=False)


def label_studio_tasks(candidates, model_version, image_url_prefix=""):
    """The written candidates as Label Studio tasks (data/io/pre_annotations.py), each
    noted with its decision; images in the order of their first (best) candidate."""
    return pre_annotations.label_studio_tasks(
        [pre_annotations.Box(c.filename, c.width, c.height, c.class_name, c.score, c.box,
                             c.verdict.decision) for c in _written(candidates)],
        model_version, image_url_prefix)


def write_label_studio(candidates, path, model_version, image_url_prefix=""):
    pre_annotations.write_label_studio(
        label_studio_tasks(candidates, model_version, image_url_prefix), path)


def write_ranked_list(result, path):
    """Every candidate, best first, with its verdict; the counts per class."""
    rows = [{"rank": rank, "file": c.filename, "class": c.class_name,
             "decision": c.verdict.decision, "confidence": round(c.verdict.confidence, 4),
             "score": round(c.score, 4), "vote": round(c.verdict.vote, 4),
             "neighbours": c.verdict.neighbours,
             "box": dict(zip(("ymin", "xmin", "ymax", "xmax"),
                             (round(v, 1) for v in c.box)))}
            for rank, c in enumerate(result.candidates, 1)]
    with atomic_write(path, "w") as handle:
        json.dump({"per_class": result.counts, "not_candidates": result.skipped,
                   "bank": result.bank_sizes, "candidates": rows}, handle, indent=1)
