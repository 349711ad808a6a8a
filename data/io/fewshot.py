"""Base / novel few-shot data (DESIGN.md section 9): K-shot sets and base-training data.

    sample_kshot(images, class_names, shots, seed) -> KShotSet    pure, in memory
    kshot_records(kshot_set) -> [ImageAnnotation]                 what the K-shot split holds
    remove_classes(images, class_names) -> ([ImageAnnotation], stats)   base-training data
    make_kshot_split(...), make_base_split(...)   read, sample/filter, write (the tool)

`images` are convert.read_annotations' records; nothing here loads an image, and the
records these functions return are written by convert.write_records, so a K-shot or
base split passes the same image and box rules as any converted split.

K-shot rule (per class, independently of the other classes)
- Shots: the objects of the class that are not difficult and whose box is usable from
  the annotation (cleaning.box_problem). Difficult objects are not shots and are left
  out of the drawn image's record: training reads every box as a positive (the
  difficult flag only matters to evaluation), so keeping them would train on more
  than K instances. They are counted in the manifest ("difficult_dropped").
- Draw order: the images holding at least one shot, sorted by image id, permuted by
  numpy.random.default_rng([seed, crc32(class name)]). A class's draw depends only on
  the seed, its name and the annotations: adding or removing another class, or asking
  for another K, does not change it.
- Filling, in steps: the targets are the numbers of the series 1, 2, 3, 5, 10, 20,
  30, 50, 100, ... below K, then K (and the class's smallest per-image count, see
  below). For each target in turn, images not yet taken are scanned in draw order and
  taken while the total stays <= the target; an image that would overshoot is passed
  over (and reconsidered at the next target). The set never exceeds K, and holds
  exactly K unless, at the last target, no image left has few enough shots to fill the
  gap; then it holds fewer and a warning names the class and the count. It always
  holds exactly K when at least K images hold exactly one shot of the class.
- Nesting: with the same seed, the set for K contains the set for every K' < K of the
  series (1, 2, 3, 5, 10, ...: the protocol's K = 1, 3, 5, 10 are nested), because the
  steps up to K' are the same; a K outside the series (4, 7) contains the sets of the
  series below it but not necessarily the set of K - 1. Nested AND exact for every
  consecutive K would be possible only with images holding one shot each (each step
  would add exactly one instance): the series keeps the pass-over rule close to the
  plain "draw images until K" between its steps.
- A class every image of which holds more than K shots (BCCD's RBC at K=1: at least 3
  per image) would get no instance at all, and a K-shot set without the class cannot
  even build its prototype. Its target is raised to the smallest per-image count m:
  one image, the first drawn with m shots. m is also a target for every larger K, so
  that image is the first taken there too, and nesting holds. A warning says so.
- Each drawn image becomes one record holding only the drawn class's shots; an image
  drawn for two classes gives two records, each with only its class's boxes. The
  image's other objects are left out, so they train as background, unless
  others_as_ignore (--others_as_ignore) keeps them as ignore regions. Records
  get fresh ids 1..N (class in label-map order, then draw order): the evaluator counts
  an image id once, so two records of one image must not share it; kshot.json maps each
  record to its source image.

Base-training data (remove_classes): every image with the novel classes' boxes removed,
so novel objects become background. An image left without any object is skipped and
counted ("images_only_novel"); an image that had no object to begin with goes to the
writer, which reports it as the converter does.

Label maps: class identity is by name across label maps. A K-shot split's label map
lists every class (base + novel) in a fixed order: --classes, else an existing label
map's (e.g. the val data's), else the sorted names found. A base split's label map is
that order without the novel classes.
"""
import collections
import dataclasses
import json
import os
import zlib

import numpy as np
from absl import logging

from data.io import annotation, cleaning, convert, reference_set
from data.io import label_map as label_map_lib
from libs.base.errors import UserError
from libs.base.io_utils import atomic_write
from libs.evaluation.base_novel import split_base_novel

KSHOT_MANIFEST = "kshot.json"
BASE_MANIFEST = "base.json"
DATA_SUBDIR = "data"
REFERENCE_SUBDIR = "references"
TRAIN_SPLIT = "train"
VAL_SPLIT = "val"
KSHOT_RULE = ("per class: images holding a shot (not difficult, usable box) in the order "
              "of default_rng([seed, crc32(name)]).permutation over image ids; targets "
              "1, 2, 3, 5, 10, 20, 30, 50, ... below K, then K, each filled in draw "
              "order without exceeding it (nested along that series); a class whose "
              "every image holds more than K gets one image with the fewest; only the "
              "class's shots kept")
SERIES = (1, 2, 3, 5)   # times 1, 10, 100, ...: the K values the sets are nested along


class FewShotError(UserError):
    """Unusable few-shot input (flags, classes); the message is one line for the user."""


# ---------------------------------------------------------------------------------------
# Sampling (pure)
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class ClassDraw:
    """What the K-shot rule took for one class."""
    name: str
    images: list            # [(ImageAnnotation, [ObjectAnnotation shots kept])], in order
    available_instances: int  # shots of the class in all the annotations
    available_images: int     # images holding at least one shot
    difficult_dropped: int    # difficult objects of the class in the drawn images

    @property
    def instances(self):
        return sum(len(objects) for _, objects in self.images)


@dataclasses.dataclass
class KShotSet:
    shots: int
    seed: int
    draws: collections.OrderedDict   # class name -> ClassDraw, in label-map order

    def counts(self):
        return {name: draw.instances for name, draw in self.draws.items()}

    def problems(self):
        """One line per class whose count is not exactly K, saying why."""
        lines = []
        for name, draw in self.draws.items():
            if draw.instances == self.shots:
                continue
            if draw.available_instances == 0:
                lines.append(f"class {name!r}: 0 of {self.shots} instances (no usable, "
                             f"non-difficult instance in the annotations)")
            elif draw.instances > self.shots:
                lines.append(f"class {name!r}: {draw.instances} instances for K="
                             f"{self.shots} (every image holding it has at least "
                             f"{draw.instances}; one image taken so the class is present)")
            elif draw.instances == draw.available_instances:
                lines.append(f"class {name!r}: only {draw.instances} of {self.shots} "
                             f"instances taken: the annotations hold no more")
            else:
                lines.append(f"class {name!r}: only {draw.instances} of {self.shots} "
                             f"instances taken ({draw.available_instances} in "
                             f"{draw.available_images} images, but no image left holds "
                             f"{self.shots - draw.instances} or fewer)")
        return lines


def shot_objects(image, class_name):
    """The objects of `class_name` in `image` that count as shots (see the rule)."""
    return [obj for obj in image.objects if obj.name == class_name and not obj.difficult
            and not obj.ignore and cleaning.box_problem(obj) is None]


def draw_order(images, class_name, seed):
    """The images holding a shot of the class, in the seeded order they are drawn."""
    holding = sorted((image for image in images if shot_objects(image, class_name)),
                     key=lambda image: (image.image_id, image.filename))
    rng = np.random.default_rng([int(seed), zlib.crc32(str(class_name).encode("utf-8"))])
    return [holding[i] for i in rng.permutation(len(holding))]


def series_below(value):
    """The numbers of the series 1, 2, 3, 5, 10, 20, 30, 50, 100, ... below `value`."""
    found, scale = [], 1
    while True:
        for base in SERIES:
            if base * scale >= value:
                return found
            found.append(base * scale)
        scale *= 10


def fill_to(counts, shots):
    """Positions (into `counts`, shots per image in draw order) taken for K = shots.

    The filling of the module docstring. Returned in the order taken, so the list for
    K is a prefix of the list for any larger K whenever K is in the series.
    """
    if not counts:
        return []
    fewest = min(counts)
    target = max(shots, fewest)
    taken, used, total = [], [False] * len(counts), 0
    for step in sorted(set(series_below(target)) | {fewest, target}):
        for position, count in enumerate(counts):
            if total == step:
                break
            if not used[position] and total + count <= step:
                used[position] = True
                taken.append(position)
                total += count
    return taken


def _check_shots_and_seed(shots, seed):
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise FewShotError(f"--shots must be a positive integer, got {shots!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FewShotError(f"--seed must be a non-negative integer, got {seed!r}")


def sample_kshot(images, class_names, shots, seed):
    """The K-shot set of `class_names` (label-map order) by the rule of the module."""
    _check_shots_and_seed(shots, seed)
    draws = collections.OrderedDict()
    for name in class_names:
        order = draw_order(images, name, seed)
        per_image = [shot_objects(image, name) for image in order]
        taken = fill_to([len(objects) for objects in per_image], shots)
        drawn = [(order[i], per_image[i]) for i in taken]
        draws[name] = ClassDraw(
            name=name, images=drawn,
            available_instances=sum(len(objects) for objects in per_image),
            available_images=len(order),
            difficult_dropped=sum(1 for image, _ in drawn for obj in image.objects
                                  if obj.name == name and obj.difficult))
    return KShotSet(shots=int(shots), seed=int(seed), draws=draws)


def _drawn(kshot_set):
    """(record id, class name, source image, shots kept) in record order."""
    pairs = [(name, image, objects) for name, draw in kshot_set.draws.items()
             for image, objects in draw.images]
    return [(record_id, *pair) for record_id, pair in enumerate(pairs, start=1)]


def kshot_records(kshot_set, others_as_ignore=False):
    """One ImageAnnotation per (class, drawn image), ids 1..N, that class's shots.

    others_as_ignore: the image's other objects (other classes, the class's own beyond
    its shots, difficult ones) are kept as ignore regions instead of being left out:
    known objects, so neither an object to learn nor background."""
    records = []
    for record_id, _, image, objects in _drawn(kshot_set):
        kept = list(objects)
        if others_as_ignore:
            shots = {id(obj) for obj in objects}
            kept += [dataclasses.replace(obj, ignore=True, difficult=True)
                     for obj in image.objects if id(obj) not in shots]
        records.append(dataclasses.replace(image, image_id=record_id, objects=kept))
    return records


def remove_classes(images, class_names):
    """Base-training data: copies of `images` without the objects of `class_names`.

    Returns (images, stats): stats["boxes_removed"] {class: count} and
    stats["images_only_novel"], the images skipped because only removed objects were
    in them. Images without any object to begin with are kept (the writer reports them).
    """
    removed = set(class_names)
    kept, boxes_removed, only_removed = [], collections.Counter(), 0
    for image in images:
        objects = [obj for obj in image.objects if obj.name not in removed]
        boxes_removed.update(obj.name for obj in image.objects if obj.name in removed)
        if image.objects and not objects:
            only_removed += 1
            continue
        kept.append(dataclasses.replace(image, objects=objects))
    stats = {"boxes_removed": {name: boxes_removed[name] for name in class_names},
             "images_only_novel": only_removed}
    return kept, stats


# ---------------------------------------------------------------------------------------
# Class lists
# ---------------------------------------------------------------------------------------

def class_order(found_names, classes=None, label_map=None):
    """Every class (base + novel) in id order: `classes`, else `label_map`'s, else sorted.

    classes: a list of names (--classes); label_map: a path to a label map file or data
    dir (--label_map), e.g. the val data's, so both use one class order.
    """
    if classes and label_map:
        raise FewShotError("give --classes or --label_map, not both")
    if classes:
        names = list(classes)
    elif label_map:
        names = label_map_lib.read_label_map(label_map).class_names
    else:
        names = sorted(set(found_names))
    if not names:
        raise FewShotError("no class: the annotations contain no object and neither "
                           "--classes nor --label_map names any")
    try:
        label_map_lib.LabelMap(names)      # duplicates, empty names: one line
    except label_map_lib.LabelMapError as exc:
        raise FewShotError(f"--classes: {exc}") from None
    return names


# ---------------------------------------------------------------------------------------
# Writing splits (the tool's work)
# ---------------------------------------------------------------------------------------

def _output_labels(data_dir, class_names):
    """The label map of `data_dir` for these classes: the existing one (keeping its other
    splits) when it lists exactly these classes in this order, else a new one. A
    different existing map is an error: its splits use other ids."""
    path = label_map_lib.label_map_path(data_dir)
    if not os.path.exists(path):
        return label_map_lib.LabelMap(class_names)
    existing = label_map_lib.read_label_map(path)
    if existing.class_names != list(class_names):
        raise FewShotError(f"{path} lists classes {existing.class_names}, this split needs "
                           f"{list(class_names)}; use another --output_dir")
    return existing


def _write_manifest(path, content):
    with atomic_write(path, "w") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.write("\n")


def _check_val_split_file(val_split_file):
    # Before anything is written: a missing file found after the train split would
    # leave a half-made output.
    if val_split_file and not os.path.isfile(val_split_file):
        raise FewShotError(f"--val_split_file {val_split_file}: no such file")


def _read(fmt, image_dir, annotations, split_file, yolo_names=None):
    """read_annotations (which checks the input paths first, one line each).

    yolo_names: --class_names, the names of YOLO's class ids 0, 1, ..."""
    report = annotation.Report()
    images, found = convert.read_annotations(fmt, image_dir, annotations, split_file,
                                             report, class_names=yolo_names)
    return images, found, report


def _write_val(fmt, image_dir, annotations, val_split_file, data_dir, class_names,
               remove, progress_every_seconds, yolo_names=None):
    """Converts a validation split into the same data dir, with the same label map."""
    images, _, report = _read(fmt, image_dir, annotations, val_split_file, yolo_names)
    stats = None
    if remove:
        images, stats = remove_classes(images, remove)
    summary = convert.write_records(images, _output_labels(data_dir, class_names), data_dir,
                                    VAL_SPLIT, report=report,
                                    progress_every_seconds=progress_every_seconds)
    return {"split_file": val_split_file, "images": summary["images_written"],
            "objects_per_class": summary["objects_per_class"], "filtered": stats}


def _source(fmt, image_dir, annotations, split_file):
    return {"format": fmt, "image_dir": image_dir, "annotations": annotations,
            "split_file": split_file}


def make_kshot_split(fmt, image_dir, annotations, output_dir, shots, seed,
                     split_file=None, classes=None, label_map=None, novel_classes=None,
                     val_split_file=None, margin=0.1, progress_every_seconds=5.0,
                     yolo_names=None, others_as_ignore=False):
    """Samples a K-shot set and writes it; returns the manifest (what kshot.json holds).
    others_as_ignore: kshot_records'.

    Writes <output_dir>/data (the set as split "train" + label_map.json listing every
    class, and the val split when val_split_file is given), <output_dir>/references
    (crops of exactly the drawn instances) and <output_dir>/kshot.json last.
    """
    _check_shots_and_seed(shots, seed)
    _check_val_split_file(val_split_file)
    images, found, report = _read(fmt, image_dir, annotations, split_file, yolo_names)
    names = class_order(found, classes, label_map)
    base, novel = split_base_novel(names, novel_classes)
    data_dir = os.path.join(output_dir, DATA_SUBDIR)
    labels = _output_labels(data_dir, names)
    not_listed = sorted(set(found) - set(names))
    if not_listed:
        logging.warning("classes in the annotations but not in the label map are not "
                        "sampled: %s", ", ".join(not_listed))

    kshot_set = sample_kshot(images, names, shots, seed)
    for line in kshot_set.problems():
        logging.warning("%s", line)
    records = kshot_records(kshot_set, others_as_ignore)
    summary = convert.write_records(records, labels, data_dir,
                                    TRAIN_SPLIT, report=report,
                                    progress_every_seconds=progress_every_seconds)
    written = summary["objects_per_class"]
    for name, count in kshot_set.counts().items():
        if written.get(name, 0) != count:
            logging.warning("class %r: %d of the %d drawn instances were written (the "
                            "others failed the image/box rules above)", name,
                            written.get(name, 0), count)
    references = reference_set.crop_instances(
        {name: [(image, obj) for image, objects in draw.images for obj in objects]
         for name, draw in kshot_set.draws.items()},
        os.path.join(output_dir, REFERENCE_SUBDIR), margin=margin,
        rule=f"the instances of the {shots}-shot set, seed {seed} (../{KSHOT_MANIFEST})",
        progress_every_seconds=progress_every_seconds)
    val = None
    if val_split_file:
        val = _write_val(fmt, image_dir, annotations, val_split_file, data_dir, names,
                         None, progress_every_seconds, yolo_names)

    entries = collections.defaultdict(list)
    drawn = _drawn(kshot_set)
    for record_id, name, image, objects in drawn:
        entries[name].append({"record_id": record_id, "image_id": image.image_id,
                              "filename": image.filename,
                              "objects": [obj.index for obj in objects],
                              "boxes": [[float(v) for v in obj.box] for obj in objects]})
    per_class = collections.OrderedDict(
        (name, {"instances": draw.instances, "written": written.get(name, 0),
                "references": references["classes"].get(name, 0),
                "available_instances": draw.available_instances,
                "available_images": draw.available_images,
                "difficult_dropped": draw.difficult_dropped,
                "images": entries[name]})
        for name, draw in kshot_set.draws.items())
    manifest = {"rule": KSHOT_RULE, "shots": kshot_set.shots, "seed": kshot_set.seed,
                "classes": names, "novel_classes": novel,
                "base_classes": base if novel else None,
                "source": _source(fmt, image_dir, annotations, split_file),
                "records": len(drawn), "per_class": per_class,
                "others_as_ignore": bool(others_as_ignore),
                "ignore_regions": sum(obj.ignore for record in records
                                      for obj in record.objects),
                "problems": kshot_set.problems(), "val": val}
    _write_manifest(os.path.join(output_dir, KSHOT_MANIFEST), manifest)
    return manifest


def make_base_split(fmt, image_dir, annotations, output_dir, novel_classes,
                    split_file=None, classes=None, label_map=None, val_split_file=None,
                    progress_every_seconds=5.0, yolo_names=None):
    """Writes base-training data; returns the manifest (what base.json holds).

    <output_dir>/data: split "train" with the novel classes' boxes removed and a label
    map of the base classes only (and the val split, filtered alike, when
    val_split_file is given); <output_dir>/base.json last.
    """
    if not novel_classes:
        raise FewShotError("--novel_classes is required for base-training data")
    _check_val_split_file(val_split_file)
    images, found, report = _read(fmt, image_dir, annotations, split_file, yolo_names)
    names = class_order(found, classes, label_map)
    base, novel = split_base_novel(names, novel_classes)
    if not base:
        raise FewShotError(f"--novel_classes lists every class ({', '.join(names)}); no "
                           f"base class is left")
    data_dir = os.path.join(output_dir, DATA_SUBDIR)
    labels = _output_labels(data_dir, base)
    kept, stats = remove_classes(images, novel)
    summary = convert.write_records(kept, labels, data_dir, TRAIN_SPLIT, report=report,
                                    progress_every_seconds=progress_every_seconds)
    val = None
    if val_split_file:
        val = _write_val(fmt, image_dir, annotations, val_split_file, data_dir, base,
                         novel, progress_every_seconds, yolo_names)
    manifest = {"classes": base, "novel_classes": novel,
                "source": _source(fmt, image_dir, annotations, split_file),
                "images": summary["images_written"],
                "objects_per_class": summary["objects_per_class"],
                "boxes_removed": stats["boxes_removed"],
                "images_only_novel": stats["images_only_novel"], "val": val}
    _write_manifest(os.path.join(output_dir, BASE_MANIFEST), manifest)
    return manifest


def format_manifest(manifest):
    """A few lines for the console: what a K-shot or base split holds, per class."""
    novel = set(manifest.get("novel_classes") or [])
    width = max(len(name) for name in list(manifest["classes"]) + list(novel))
    lines = []
    if "shots" in manifest:
        lines.append(f"{manifest['shots']}-shot set, seed {manifest['seed']}: "
                     f"{manifest['records']} records")
        for name, entry in manifest["per_class"].items():
            tag = "novel" if name in novel else ("base" if novel else "")
            lines.append(f"  {name:<{width}} {tag:<5} {entry['instances']:>4} instances in "
                         f"{len(entry['images'])} images (written {entry['written']}, "
                         f"references {entry['references']}; the split holds "
                         f"{entry['available_instances']} in "
                         f"{entry['available_images']} images)")
        if manifest.get("others_as_ignore"):
            lines.append(f"  the drawn images' other objects: {manifest['ignore_regions']} "
                         f"ignore regions")
        lines.extend(f"  warning: {line}" for line in manifest["problems"])
    else:
        lines.append(f"base data: {manifest['images']} images, classes "
                     f"{', '.join(manifest['classes'])}; "
                     f"{manifest['images_only_novel']} images skipped (only novel objects)")
        for name, count in manifest["objects_per_class"].items():
            lines.append(f"  {name:<{width}} base  {count:>5} objects")
        for name, count in manifest["boxes_removed"].items():
            lines.append(f"  {name:<{width}} novel {count:>5} boxes removed")
    if manifest.get("val"):
        val = manifest["val"]
        lines.append(f"val: {val['images']} images, objects: " + ", ".join(
            f"{name} {count}" for name, count in val["objects_per_class"].items()))
    return "\n".join(lines)
