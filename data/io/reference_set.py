"""Reference images (the few-shot supports): a folder per class name, images inside.

    crop_references(images, output_dir, per_class, margin=0.1, min_size=8, classes=None)
        -> summary dict         crops annotated objects into R/<class>/<image>_<k>.png
    crop_instances(instances, output_dir, margin=0.1)
        -> summary dict         the same for given objects (a K-shot set's instances)
    load_reference_images(reference_dir, class_names, num_supports, side, seed=None)
        -> uint8 [num_classes, num_supports, side, side, 3] RGB

Which objects become references (crop_references), deterministically:
    an object qualifies when it is not difficult (nor an ignore region), its box is finite, non-degenerate,
    inside the image (a box reaching outside shows a cut-off object) and at least
    `min_size` pixels high and wide. Images are taken in sorted file-name order, one
    object per image per pass: the first pass takes the largest qualifying object of
    the class from each image, the second pass the second largest, and so on, until
    `per_class` are found. References thus come from as many different images as
    possible, and large (clearly visible) objects first.

Which files are loaded (load_reference_images):
    seed=None: the first `num_supports` usable images of each class folder in sorted
    file-name order (the notebook's rule); with a seed, a random subset drawn from a
    generator seeded by (seed, class name), so adding a class does not change the
    others' choice.

Annotations are read by the converter's readers (data/io/convert.read_annotations) and
images decoded by its loader (libs/base/images.py), so references and TFRecords see the
same pixels and the same box rules (data/io/cleaning.py).
"""
import collections
import json
import math
import os
import zlib

import cv2
import numpy as np
from absl import logging

from data.io import annotation, cleaning
from libs.base import images as images_lib
from libs.base.errors import UserError
from libs.base.io_utils import Progress, atomic_write

MANIFEST = "references.json"
_IMAGE_CACHE_SIZE = 64
SELECTION_RULE = ("qualifying objects (not difficult, inside the image, >= min_size), "
                  "images in sorted file-name order, one object per image per pass, "
                  "largest first")


class ReferenceSetError(UserError):
    """An unusable reference set; the message is one line for the user."""


def class_dir_name(class_name):
    """The folder of a class: its name, with path separators replaced by '_'."""
    name = str(class_name).strip().replace("/", "_").replace("\\", "_")
    if name in ("", ".", ".."):
        name = "_" + name
    return name


# ---------------------------------------------------------------------------------------
# Cropping references from annotations
# ---------------------------------------------------------------------------------------

def _candidates(images, wanted, min_size, skipped):
    """Qualifying objects (by their annotation) as sort keys + data, in selection order."""
    ordered = sorted(images, key=lambda image: image.filename)
    candidates = []
    for image in ordered:
        by_class = collections.defaultdict(list)
        for obj in image.objects:
            if obj.name not in wanted:
                continue
            if cleaning.box_problem(obj):
                skipped["invalid_box"] += 1
                continue
            y1, x1, y2, x2 = obj.box
            if obj.difficult or obj.ignore:
                skipped["difficult"] += 1
                continue
            if y2 - y1 < min_size or x2 - x1 < min_size:
                skipped["too_small"] += 1
                continue
            by_class[obj.name].append(obj)
        for name, objects in by_class.items():
            # Largest first; ties by annotation order, so the choice is stable.
            objects.sort(key=lambda o: (-(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]),
                                        o.index))
            for rank, obj in enumerate(objects):
                candidates.append(((rank, image.filename, obj.index), image, obj))
    candidates.sort(key=lambda item: item[0])
    return candidates


def crop_with_margin(rgb, box, margin):
    """The box of `rgb` grown by `margin` of its size on each side, clipped to the image
    (how a reference is cropped; the mining verifier crops candidates alike)."""
    height, width = rgb.shape[:2]
    y1, x1, y2, x2 = box
    dy, dx = (y2 - y1) * margin, (x2 - x1) * margin
    top, left = max(int(math.floor(y1 - dy)), 0), max(int(math.floor(x1 - dx)), 0)
    bottom = min(int(math.ceil(y2 + dy)), height)
    right = min(int(math.ceil(x2 + dx)), width)
    return rgb[top:bottom, left:right]


def _crop_stem(filename):
    """An image's file name -> the stem of its crops: "x.jpg" -> "x"; the folders of a
    relative name are kept ("a/b/x.jpg" -> "a_b_x"), so that images of the same name in
    different folders (YOLO subfolders) do not overwrite each other's crops."""
    parts = [part for part in filename.replace("\\", "/").split("/")
             if part not in ("", ".", "..")]
    return "_".join(parts[:-1] + [os.path.splitext(parts[-1] if parts else "")[0]])


def _read_manifest(output_dir):
    try:
        with open(os.path.join(output_dir, MANIFEST), "r", encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def crop_references(images, output_dir, per_class, margin=0.1, min_size=8, classes=None,
                    progress_every_seconds=None):
    """Crops up to `per_class` objects per class into output_dir/<class>/<image>_<k>.png.

    images: [annotation.ImageAnnotation] from convert.read_annotations. classes: the class
    names to crop (default: every name in the annotations). <image> is the image's file
    name without extension, its folders joined by '_' (a/b/x.jpg -> a_b_x); k is the
    object's position in its image's annotation. margin: context added on each side, as
    a fraction of the box height/width. Writes output_dir/references.json (what was
    cropped from where) and removes crops listed by an earlier run's manifest that this
    run did not write.
    Returns {"classes": {name: count}, "per_class": K, "files": [...], "skipped": {...}}.
    """
    if not isinstance(per_class, int) or per_class < 1:
        raise ReferenceSetError(f"--per_class must be a positive integer, got {per_class!r}")
    if classes is None:
        classes = sorted({obj.name for image in images for obj in image.objects
                          if obj.name.strip()})
    if not classes:
        raise ReferenceSetError("no class to crop: the annotations contain no objects")
    skipped = collections.Counter()
    candidates = [(image, obj) for _, image, obj in
                  _candidates(images, set(classes), min_size, skipped)]
    return _write_crops(candidates, output_dir, {name: per_class for name in classes},
                        margin, skipped, {"rule": SELECTION_RULE, "per_class": per_class,
                                          "min_size": min_size},
                        skip_partly_outside=True,
                        progress_every_seconds=progress_every_seconds)


def crop_instances(instances, output_dir, margin=0.1, rule="given instances",
                   progress_every_seconds=5.0):
    """Crops exactly the given objects, as crop_references writes its choice.

    instances: {class name: [(annotation.ImageAnnotation, annotation.ObjectAnnotation)]}, e.g.
    the instances of a K-shot set (data/io/fewshot.py), so that the references are the
    very objects the detector is trained on. No selection rule applies: a box reaching
    outside the image is cropped clipped, small objects are kept. `rule` is recorded in
    the manifest. Returns the summary of crop_references, with "per_class" the number
    of instances given per class.
    """
    candidates = [(image, obj) for pairs in instances.values() for image, obj in pairs]
    limits = {name: len(pairs) for name, pairs in instances.items()}
    return _write_crops(candidates, output_dir, limits, margin, collections.Counter(),
                        {"rule": rule, "per_class": limits}, skip_partly_outside=False,
                        progress_every_seconds=progress_every_seconds)


def _write_crops(candidates, output_dir, limits, margin, skipped, manifest_fields,
                 skip_partly_outside, progress_every_seconds):
    """Crops (image, object) pairs in order until each class has limits[class] crops.

    The one writer of reference folders and their manifest (references.json).
    """
    if margin < 0:
        raise ReferenceSetError(f"--margin must be >= 0, got {margin}")
    report = annotation.Report()
    counts = collections.OrderedDict((name, 0) for name in limits)
    written, entries = [], collections.OrderedDict((name, []) for name in limits)
    loaded_cache, failed = collections.OrderedDict(), set()

    def load(image):
        # Later passes revisit the same images: keep the most recent ones decoded, and
        # remember failures so each bad image is reported once.
        key = (image.source, image.filename)
        if key in failed:
            return None
        if key in loaded_cache:
            loaded_cache.move_to_end(key)
            return loaded_cache[key]
        if image.image_path is None:
            report.add("image_missing", image.source, f"image {image.filename!r} not found")
            failed.add(key)
            return None
        try:
            # Upright for YOLO images, whose boxes refer to the image as viewers show it.
            rgb = images_lib.load_image(image.image_path,
                                        apply_orientation=image.apply_orientation).rgb
        except images_lib.ImageError as exc:
            report.add("image_unreadable", image.image_path, str(exc))
            failed.add(key)
            return None
        loaded_cache[key] = rgb
        if len(loaded_cache) > _IMAGE_CACHE_SIZE:
            loaded_cache.popitem(last=False)
        return rgb

    os.makedirs(output_dir, exist_ok=True)
    with Progress(sum(limits.values()), "references", progress_every_seconds,
                  unit="crops") as progress:
        for image, obj in candidates:
            if all(counts[name] >= limit for name, limit in limits.items()):
                break
            if counts[obj.name] >= limits[obj.name]:
                continue
            rgb = load(image)
            if rgb is None:
                continue
            height, width = rgb.shape[:2]
            y1, x1, y2, x2 = obj.box
            if skip_partly_outside and (y1 < 0 or x1 < 0 or y2 > height or x2 > width):
                skipped["partly_outside"] += 1
                continue
            crop = crop_with_margin(rgb, obj.box, margin)
            ok, png = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            if not ok:
                raise ReferenceSetError(f"cannot encode a crop of {image.filename}")
            relative = f"{class_dir_name(obj.name)}/{_crop_stem(image.filename)}_" \
                       f"{obj.index}.png"
            with atomic_write(os.path.join(output_dir, relative)) as handle:
                handle.write(png.tobytes())
            counts[obj.name] += 1
            written.append(relative)
            entries[obj.name].append({"file": relative, "image": image.filename,
                                      "object": obj.index,
                                      "box": [float(v) for v in obj.box]})
            progress.update()

    previous = _read_manifest(output_dir) or {}
    for relative in sorted(set(previous.get("files", [])) - set(written)):
        path = os.path.join(output_dir, relative)
        if os.path.isfile(path):
            os.remove(path)
            logging.info("removed %s (an earlier run's reference, not chosen now)", path)
    manifest = dict(manifest_fields, margin=margin, classes=entries, files=written)
    with atomic_write(os.path.join(output_dir, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")

    for name, count in counts.items():
        if count < limits[name]:
            logging.warning("class %r: only %d of %d references found (qualifying objects "
                            "ran out)", name, count, limits[name])
    skipped.update({rule: n for rule, n in report.counts.items() if n})
    summary = {"classes": dict(counts), "per_class": manifest_fields["per_class"],
               "files": written, "skipped": dict(sorted(skipped.items())),
               "output_dir": output_dir}
    logging.info("references in %s: %s", output_dir,
                 ", ".join(f"{name} {count}" for name, count in counts.items()))
    logging.info("objects not used: %s", ", ".join(
        f"{rule} {n}" for rule, n in summary["skipped"].items()) or "none")
    return summary


# ---------------------------------------------------------------------------------------
# Loading references for the model
# ---------------------------------------------------------------------------------------

def _class_files(reference_dir, class_name):
    folder = os.path.join(reference_dir, class_dir_name(class_name))
    if not os.path.isdir(folder):
        available = sorted(name for name in os.listdir(reference_dir)
                           if os.path.isdir(os.path.join(reference_dir, name)))
        raise ReferenceSetError(
            f"{reference_dir}: no folder for class {class_name!r} (expected {folder}; "
            f"found: {', '.join(available) or 'none'})")
    images, others = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        # Hidden files (.DS_Store, a writer's temporary files) and subfolders are not
        # candidates and not worth a warning.
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if os.path.splitext(name)[1].lower() in images_lib.IMAGE_EXTENSIONS:
            images.append(path)
        else:
            others.append(path)
    return folder, images, others


def reference_classes(reference_dir):
    """The class names a reference set holds, sorted.

    The classes of the manifest a cropping tool wrote (original names, which folder
    names may have altered), and every other sub-folder that holds at least one image
    file: a class added by dropping a folder of crops into the set (how a new class
    joins a trained model's references, README "Add a class from a few examples").
    """
    if not reference_dir or not os.path.isdir(reference_dir):
        raise ReferenceSetError(f"reference dir {reference_dir} does not exist (crop one "
                                f"with tools/make_references.py)")
    manifest = _read_manifest(reference_dir)
    names = []
    if manifest and isinstance(manifest.get("classes"), dict):
        names = [name for name, entries in manifest["classes"].items() if entries]
    listed = {class_dir_name(name) for name in names}
    names += [name for name in os.listdir(reference_dir)
              if not name.startswith(".") and name not in listed
              and os.path.isdir(os.path.join(reference_dir, name))
              and _class_files(reference_dir, name)[1]]
    if not names:
        raise ReferenceSetError(f"{reference_dir}: no class folder with images in it")
    return sorted(names)


def _read_rgb(path):
    with open(path, "rb") as handle:
        data = handle.read()
    rgb, _ = images_lib.decode_image_bytes(data)
    return rgb


def select_reference_files(reference_dir, class_names, num_supports, seed=None,
                           min_supports=None):
    """The files load_reference_images would use: {class name: [paths]}, plus decoded RGB.

    min_supports (default num_supports): a class with fewer usable images than
    num_supports but at least this many keeps what it has, with a warning (a K-shot
    reference set may hold fewer crops of a class than K).
    Returns (paths by class, images by class) where images are uint8 RGB arrays.
    """
    if not reference_dir or not os.path.isdir(reference_dir):
        raise ReferenceSetError(f"reference dir {reference_dir} does not exist (crop one "
                                f"with tools/make_references.py)")
    if not class_names:
        raise ReferenceSetError("no class names given")
    if not isinstance(num_supports, (int, np.integer)) or num_supports < 1:
        raise ReferenceSetError(f"num_supports must be a positive integer, "
                                f"got {num_supports!r}")
    paths_by_class, images_by_class = collections.OrderedDict(), collections.OrderedDict()
    for class_name in class_names:
        folder, files, others = _class_files(reference_dir, class_name)
        if seed is not None:
            rng = np.random.default_rng([int(seed), zlib.crc32(str(class_name).encode())])
            files = [files[i] for i in rng.permutation(len(files))]
        chosen, pixels, problems = [], [], []
        for path in others:
            problems.append(f"{path}: not an image file (extension)")
        for path in files:
            if len(chosen) == num_supports:
                break
            try:
                rgb = _read_rgb(path)
            except (OSError, images_lib.ImageError) as exc:
                problems.append(f"{path}: unreadable ({exc})")
                continue
            chosen.append(path)
            pixels.append(rgb)
        if len(chosen) < num_supports:
            bad = f", {len(problems)} unusable file(s) skipped" if problems else ""
            if len(chosen) < (num_supports if min_supports is None else min_supports):
                raise ReferenceSetError(
                    f"class {class_name!r}: {folder} has {len(chosen)} usable image(s)"
                    f"{bad}, need num_supports={num_supports}")
            logging.warning("reference set: class %r has %d usable image(s)%s, fewer than "
                            "num_supports=%d: its prototype averages those", class_name,
                            len(chosen), bad, num_supports)
        for problem in problems:
            logging.warning("reference set: %s -> skipped", problem)
        paths_by_class[class_name] = chosen
        images_by_class[class_name] = pixels
    return paths_by_class, images_by_class


def load_reference_images(reference_dir, class_names, num_supports, side, seed=None,
                          return_paths=False, min_supports=None):
    """uint8 [len(class_names), num_supports, side, side, 3] RGB reference images.

    Each image is resized to side x side (bilinear, aspect not kept, as the notebook
    does). Class order = class_names order (pass the label map's names in id order, so
    row c is class id c + 1). With return_paths, also returns {class: [paths]}; a
    class with fewer images (min_supports) has zeros in its last slots, and its paths
    say how many are real.
    """
    if not isinstance(side, (int, np.integer)) or side < 1:
        raise ReferenceSetError(f"side must be a positive integer, got {side!r}")
    paths, images = select_reference_files(reference_dir, class_names, num_supports, seed,
                                           min_supports=min_supports)
    batch = np.zeros((len(class_names), num_supports, side, side, 3), np.uint8)
    for c, class_name in enumerate(class_names):
        for s, rgb in enumerate(images[class_name]):
            batch[c, s] = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_LINEAR)
    return (batch, paths) if return_paths else batch
