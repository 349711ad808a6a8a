"""The image and box rules: one annotated image -> what its record holds, or nothing.

    load_and_clean(image, known_classes, report) -> (LoadedImage, [CleanObject]) or None
    clean_objects(image, height, width, known_classes, report) -> [CleanObject]
    box_problem(obj) -> (rule, message) or None     the checks that need no image

The same for every annotation format: readers (data/io/formats/) pass boxes on as
annotated and everything is judged here, each rule of data/io/annotation.py's RULES
counted in the Report and logged as one warning line. In order, for an image: not
found (image_missing), not decodable (image_unreadable), not 8-bit RGB JPEG/PNG
(image_converted), an EXIF orientation (image_oriented when the reader asked for it,
image_orientation_ignored when the boxes refer to the stored pixels), an annotated
size other than the real one (size_mismatch, the real size wins); for each box: not
finite, degenerate, of a class not in the label map, entirely outside the image
(dropped), partly outside (clipped), difficult (kept and flagged).
"""
import dataclasses
import math

from libs.base import images as images_lib


@dataclasses.dataclass
class CleanObject:
    name: str
    box: tuple            # (y1, x1, y2, x2) inside the image
    difficult: bool
    index: int
    clipped: bool         # the annotated box reached outside the image
    ignore: bool = False  # an ignore region: neither object nor background in training


def _fmt_box(box):
    return "[" + " ".join(f"{key}={value:g}"
                          for key, value in zip(("y1", "x1", "y2", "x2"), box)) + "]"


def box_problem(obj):
    """(rule, message) when an annotated box can never be used, else None.

    The checks of clean_objects that need no image (the image size decides the rest),
    shared by the tools that choose objects before loading images (references, K-shot).
    """
    if obj.problem or not all(math.isfinite(v) for v in obj.box):
        return "box_not_finite", obj.problem or f"coordinates {_fmt_box(obj.box)} are " \
                                                f"not finite"
    y1, x1, y2, x2 = obj.box
    if x2 <= x1 or y2 <= y1:
        return "box_degenerate", f"box {_fmt_box(obj.box)} has zero or negative size"
    return None


def clean_objects(image, height, width, known_classes, report):
    """Applies the box rules to one image's objects -> [CleanObject].

    known_classes: a container of accepted names, or None to accept every name.
    """
    kept = []
    for obj in image.objects:
        where = f"{image.source}: {image.filename} object {obj.index} {obj.name!r}"
        box = obj.box
        problem = box_problem(obj)
        if problem:
            report.add(problem[0], where, problem[1])
            continue
        y1, x1, y2, x2 = box
        if known_classes is not None and obj.name not in known_classes:
            hint = "its YOLO id has no name in data.yaml / classes.txt / --class_names" \
                if obj.name.startswith("<class id ") else "list it in --classes to add it"
            report.add("box_unknown_class", where,
                       f"class {obj.name!r} is not one of {list(known_classes)} ({hint})")
            continue
        clipped = (max(y1, 0.0), max(x1, 0.0), min(y2, float(height)), min(x2, float(width)))
        if clipped[3] <= clipped[1] or clipped[2] <= clipped[0]:
            report.add("box_outside", where, f"box {_fmt_box(box)} lies outside the "
                       f"{width}x{height} image")
            continue
        was_clipped = clipped != (y1, x1, y2, x2)
        if was_clipped:
            report.add("box_clipped", where, f"box {_fmt_box(box)} reaches outside the "
                       f"{width}x{height} image, clipped to {_fmt_box(clipped)}")
        if obj.difficult:
            report.add("object_difficult", where, "difficult")
        if obj.ignore:
            report.add("object_ignored", where, "ignore region")
        kept.append(CleanObject(obj.name, clipped, obj.difficult, obj.index, was_clipped,
                                obj.ignore))
    return kept


def load_and_clean(image, known_classes, report):
    """One annotated image -> (LoadedImage, [CleanObject]) or None when it is skipped.

    Applies the image rules (missing, unreadable, converted, orientation, size) and the
    box rules. The image is loaded upright when image.apply_orientation (YOLO).
    """
    if image.image_path is None:
        report.add("image_missing", image.source, f"image {image.filename!r} not found")
        return None
    try:
        loaded = images_lib.load_image(image.image_path,
                                       apply_orientation=image.apply_orientation)
    except images_lib.ImageError as exc:
        report.add("image_unreadable", image.image_path, str(exc))
        return None
    if loaded.converted_from:
        report.add("image_converted", image.image_path, loaded.converted_from)
    if loaded.orientation != 1:
        what = (f"EXIF orientation {loaded.orientation} (viewers show the stored pixels "
                f"{images_lib.EXIF_ORIENTATIONS[loaded.orientation]})")
        if image.apply_orientation:
            report.add("image_oriented", image.image_path, what)
        else:
            report.add("image_orientation_ignored", image.image_path,
                       f"{what}; the boxes are taken on the stored pixels (misplaced if "
                       f"they were drawn on the image as viewers show it)")
    if image.annotated_size and image.annotated_size != (loaded.height, loaded.width):
        report.add("size_mismatch", image.source,
                   f"annotated size {image.annotated_size[1]}x{image.annotated_size[0]} but "
                   f"{image.filename} is {loaded.width}x{loaded.height}")
    objects = clean_objects(image, loaded.height, loaded.width, known_classes, report)
    return loaded, objects
