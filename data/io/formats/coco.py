"""COCO: one detection JSON for a split (--format coco).

    {"images": [{"id", "file_name", "width", "height"}, ...],
     "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h], "iscrowd"}, ...],
     "categories": [{"id", "name"}, ...]}

- Boxes: [x, y, w, h] becomes [y, x, y + h, x + w], on the stored pixels: an image's
  EXIF orientation is not applied, only reported (image_orientation_ignored).
  iscrowd is object_difficult and object_ignored (an ignore region in training, as
  in Detectron); an annotation of an unknown category keeps the name
  "<category id N>" and goes to box_unknown_class.
- Images: file_name relative to --image_dir; width/height are checked against the
  image (size_mismatch). Image ids: COCO's own.
- --split_file: file names, base names, stems or image ids, one per line.
- Classes: the category names, sorted (not in category-id order).
A file that is not a COCO detection JSON is a ConversionError; malformed entries are
skipped and counted (annotation_invalid, duplicate_image).
"""
import json
import math
import os

from data.io import annotation
from data.io.formats import registry


def read(image_dir, json_path, split_file, report, class_names=None):
    """Reads a COCO detection JSON -> ([ImageAnnotation] in id order, the category
    names, sorted). class_names: unused (COCO names its categories)."""
    try:
        with open(json_path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        image_entries = data["images"]
        object_entries = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise annotation.ConversionError(
            f"--annotations {json_path}: not a COCO detection JSON "
            f"({type(exc).__name__}: {exc})") from None

    images = {}
    for entry in image_entries:
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            report.add("annotation_invalid", json_path, f"image entry {entry!r} lacks "
                       f"id/file_name")
            continue
        if image_id in images:
            report.add("duplicate_image", json_path, f"image id {image_id} listed twice")
            continue
        width = annotation.float_or_nan(entry.get("width"))
        height = annotation.float_or_nan(entry.get("height"))
        size = (int(height), int(width)) if width > 0 and height > 0 else None
        path = os.path.join(image_dir, file_name)
        images[image_id] = annotation.ImageAnnotation(
            image_id=image_id, filename=file_name,
            image_path=path if os.path.isfile(path) else None,
            source=json_path, annotated_size=size)

    for entry in object_entries:
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        if image_id not in images:
            report.add("annotation_invalid", json_path,
                       f"annotation {entry.get('id') if isinstance(entry, dict) else entry!r}"
                       f" refers to unknown image id {image_id!r}")
            continue
        image = images[image_id]
        category = entry.get("category_id")
        name = categories.get(category, f"<category id {category}>")
        bbox = entry.get("bbox")
        crowd = bool(entry.get("iscrowd", 0))
        problem = None
        if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            x, y, w, h = (annotation.float_or_nan(v) for v in bbox)
            box = (y, x, y + h, x + w)
        else:
            box, problem = (math.nan,) * 4, f"bbox {bbox!r} is not [x, y, w, h]"
        image.objects.append(annotation.ObjectAnnotation(
            name=name, box=box, difficult=crowd, ignore=crowd,
            index=len(image.objects), problem=problem))

    selected = sorted(images)
    if split_file:
        wanted = annotation.dedupe(annotation.read_split_file(split_file), split_file, report)
        by_key = {}
        for image_id in selected:
            file_name = images[image_id].filename
            for key in (file_name, os.path.basename(file_name),
                        annotation.file_stem(file_name), str(image_id)):
                by_key.setdefault(key, image_id)
        chosen = set()
        for entry in wanted:
            if entry in by_key:
                chosen.add(by_key[entry])
            else:
                report.add("annotation_invalid", split_file,
                           f"{entry!r} matches no image of {json_path}")
        selected = sorted(chosen)
    return [images[i] for i in selected], sorted(set(categories.values()))


def check_inputs(image_dir, annotations):
    registry.require_file(annotations, "COCO annotations are one JSON file")


FORMAT = registry.register(registry.Format(
    name="coco", label="COCO", annotations_help="the JSON file",
    annotations_short="the JSON file", split_entries="file names or ids",
    check_inputs=check_inputs, read=read))
