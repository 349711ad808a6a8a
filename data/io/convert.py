"""Pascal-VOC / COCO / YOLO annotations -> validated, sharded TFRecords + label_map.json.

    convert_dataset(fmt, image_dir, annotations, output_dir, split_file=None, split=None,
                    classes=None, num_shards=1) -> summary dict
    write_records(images, labels, output_dir, split, num_shards=1) -> summary dict

write `<output_dir>/<split>-00000-of-0000N.tfrecord` (schema: data/io/tfrecord_format.py)
and `<output_dir>/label_map.json` (data/io/label_map.py). convert_dataset reads a whole
split and picks the label map; write_records writes any list of annotated images read
by read_annotations (a filtered or sampled one: data/io/fewshot.py) under a given label
map. Both apply the same rules and the same atomic publishing.

Conventions
- Boxes are [y1, x1, y2, x2] in pixels of the stored image. VOC corners are taken as
  written (the TF Object Detection API convention, no 1-based shift); COCO [x, y, w, h]
  becomes [y, x, y + h, x + w]; YOLO's normalised "class cx cy w h" becomes
  [(cy - h/2) H, (cx - w/2) W, (cy + h/2) H, (cx + w/2) W] for an H x W image (its size
  read from the image itself), and a YOLO segmentation line "class x1 y1 ... xn yn"
  (a normalised polygon, n >= 3) the bounding box of its points (polygon_to_box).
  Class k is the name of id k (0-based) given by --class_names, else by data.yaml /
  classes.txt (yolo_class_names); a mapping with gaps keeps its ids, so an id without
  a name is an unknown class.
- EXIF orientation: YOLO boxes are normalised to the image as viewers show it, so a
  YOLO image's EXIF orientation (JPEG APP1 / PNG eXIf) is applied before its size is
  read and the record stores the upright pixels as PNG (image_oriented). VOC and COCO
  boxes are taken on the stored pixels, which are kept; a non-default orientation is
  reported (image_orientation_ignored).
- YOLO folders: images in subfolders of the image folder are found too (hidden
  folders skipped); image_dir/a/b/x.jpg pairs with labels_dir/a/b/x.txt (extension in
  any case) and is stored with the file name "a/b/x.jpg".
- Image ids: COCO keeps its ids; VOC uses the 1-based position of the XML file in the
  sorted listing of the annotation folder, YOLO that of the image's relative path
  without extension ("a/b/x") in the sorted list of the image folder's images, so
  train and val converted from one folder never share an id and re-running gives the
  same ids.
- Records are written in image-id order (write_records: in the order given), record k
  into shard k % num_shards. Output
  bytes depend only on the input (no timestamps, no randomness).
- Atomic: every shard is written to a hidden temporary file and all are renamed
  together at the end; the label map is written last. A failure leaves the output
  directory as it was. Shards of an earlier conversion of the same split that the new
  one does not replace (a different --num_shards) are removed after the rename, so
  `<split>-*.tfrecord` always means exactly one conversion.

Validation: every rule of RULES below is applied to every image and object; each
occurrence is logged as one warning line "<file>: <what> -> <action>" and counted; the
counts are the summary. The readers and the image loader are shared with
data/io/reference_set.py.
"""
import collections
import dataclasses
import json
import math
import os
import posixpath
import struct
import xml.etree.ElementTree as ElementTree

import cv2
import numpy as np
from absl import logging

from data.io import label_map as label_map_lib
from libs.io_utils import PendingFile, Progress

FORMATS = ("voc", "coco", "yolo")

# Rule -> the action taken, as printed in the summary. Order = order of the checks.
RULES = collections.OrderedDict([
    ("annotation_invalid", "annotation file missing/unparseable or entry malformed -> "
                           "entry skipped"),
    ("polygon_to_box", "YOLO polygon (segmentation label) -> its bounding box"),
    ("duplicate_image", "image listed more than once -> converted once"),
    ("image_missing", "image file not found -> image skipped"),
    ("image_unreadable", "zero-byte, truncated or undecodable image -> image skipped"),
    ("image_converted", "not 8-bit RGB JPEG/PNG (grey, RGBA, palette, 16-bit, CMYK, "
                        "other format) -> stored as 8-bit RGB PNG"),
    ("image_oriented", "EXIF orientation applied (YOLO) -> stored upright as PNG"),
    ("image_orientation_ignored", "EXIF orientation not 1 (VOC/COCO boxes refer to the "
                                  "stored pixels) -> kept as stored"),
    ("size_mismatch", "annotated size differs from the image -> real size used"),
    ("box_not_finite", "NaN/inf/missing coordinates -> box dropped"),
    ("box_degenerate", "x2 <= x1 or y2 <= y1 -> box dropped"),
    ("box_unknown_class", "class not in --classes / the existing label map -> "
                          "box dropped"),
    ("box_outside", "box entirely outside the image -> box dropped"),
    ("box_clipped", "box partly outside the image -> clipped to the image"),
    ("object_difficult", "VOC difficult / COCO iscrowd -> kept, flagged difficult"),
    # An image without objects has no positive anchor or ROI: it adds nothing to the
    # RPN and Fast R-CNN targets as this pipeline builds them.
    ("image_no_objects", "no valid object left -> image skipped"),
])
# Counted, but not worth a warning line each: nothing is wrong with them.
_QUIET_RULES = ("object_difficult", "polygon_to_box")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class ConversionError(ValueError):
    """A fatal problem (missing input, unusable label map); one line for the user."""


class ImageError(ValueError):
    """An image that cannot be used; the message says why."""


@dataclasses.dataclass
class ObjectAnnotation:
    name: str
    box: tuple            # (y1, x1, y2, x2) as annotated; may be NaN/degenerate/outside
    difficult: bool = False
    index: int = 0        # position in the image's annotation, for messages and names
    problem: str = None   # set by a reader when the coordinates could not be read


@dataclasses.dataclass
class ImageAnnotation:
    image_id: int
    filename: str         # relative to image_dir, as stored in the record
    image_path: str       # None when the image file cannot be found
    source: str           # the annotation file, for messages
    annotated_size: tuple = None  # (height, width) from the annotation, if given
    objects: list = dataclasses.field(default_factory=list)
    # The boxes refer to the image after its EXIF orientation (YOLO): load it upright.
    apply_orientation: bool = False


class Report:
    """Counts rule applications and logs each one as a single warning line.

    At most `lines_per_rule` lines per rule: a dataset where a rule applies to every
    record (DeepPCB: 978 grey JPEGs; base-training data: thousands of novel boxes
    dropped as unknown classes) would bury everything else. The rest are counted, and
    the summary gives every count.
    """

    def __init__(self, lines_per_rule=20):
        self.counts = collections.OrderedDict((rule, 0) for rule in RULES)
        self.lines_per_rule = lines_per_rule

    def add(self, rule, where, what):
        if rule not in RULES:
            raise KeyError(rule)
        self.counts[rule] += 1
        if rule in _QUIET_RULES or self.counts[rule] > self.lines_per_rule + 1:
            return
        if self.counts[rule] == self.lines_per_rule + 1:
            logging.warning("... more [%s] records are counted in the summary, not listed",
                            rule)
            return
        action = RULES[rule].split("->")[-1].strip()
        logging.warning("%s: %s -> %s [%s]", where, what, action, rule)


# ---------------------------------------------------------------------------------------
# Input checks (fatal errors) and readers
# ---------------------------------------------------------------------------------------

def check_inputs(fmt, image_dir, annotations, split_file=None):
    """Raises ConversionError with one line when an input path is unusable."""
    if fmt not in FORMATS:
        raise ConversionError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not image_dir:
        raise ConversionError("--image_dir is required")
    if not os.path.isdir(image_dir):
        raise ConversionError(f"--image_dir {image_dir}: no such directory")
    if not annotations:
        raise ConversionError("--annotations is required (VOC: the XML folder, "
                              "COCO: the JSON file, YOLO: the labels folder)")
    if fmt == "voc" and not os.path.isdir(annotations):
        raise ConversionError(f"--annotations {annotations}: no such directory "
                              f"(VOC annotations are a folder of XML files)")
    if fmt == "coco" and not os.path.isfile(annotations):
        raise ConversionError(f"--annotations {annotations}: no such file "
                              f"(COCO annotations are one JSON file)")
    if fmt == "yolo" and not os.path.isdir(annotations):
        raise ConversionError(f"--annotations {annotations}: no such directory "
                              f"(YOLO labels are a folder of .txt files, one per image)")
    if split_file and not os.path.isfile(split_file):
        raise ConversionError(f"--split_file {split_file}: no such file")


def read_split_file(split_file):
    """Image ids (VOC: file stems) listed one per line; blank lines and '#' ignored.

    VOC ImageSets/Main/<class>_train.txt style lines ("id  1") keep their first column.
    """
    with open(split_file, "r", encoding="utf-8-sig") as handle:
        entries = []
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line:
                entries.append(line.split()[0])
    return entries


def _stem(name):
    return os.path.splitext(os.path.basename(name))[0]


def _dedupe(entries, where, report):
    seen, unique = set(), []
    for entry in entries:
        if entry in seen:
            report.add("duplicate_image", where, f"{entry!r} listed more than once")
            continue
        seen.add(entry)
        unique.append(entry)
    return unique


def _list_files(folder, recursive=False):
    """Sorted names in folder; recursive: the relative paths, written with "/"
    ("a/b/x.jpg"), of the files in folder and its subfolders, hidden folders skipped."""
    if not recursive:
        return sorted(os.listdir(folder))
    found = []
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        relative = os.path.relpath(directory, folder)
        prefix = "" if relative == os.curdir else relative.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in files)
    return sorted(found)


def _image_index(image_dir, recursive=False):
    """Stem -> sorted file names of the images directly inside image_dir; recursive:
    relative stem ("a/b/x") -> relative paths ("a/b/x.jpg"), subfolders included."""
    index = collections.defaultdict(list)
    for name in _list_files(image_dir, recursive):
        root, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS:
            index[root].append(name)
    return index


def _float_or_nan(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _xml_text(element, path, default=None):
    child = element.find(path)
    if child is None or child.text is None:
        return default
    return child.text.strip()


def _parse_voc_xml(xml_path):
    """-> (filename or None, (height, width) or None, [ObjectAnnotation]); raises on bad XML."""
    root = ElementTree.parse(xml_path).getroot()
    if root.tag != "annotation":
        raise ValueError(f"root element is <{root.tag}>, expected <annotation>")
    filename = _xml_text(root, "filename")
    size = None
    width = _float_or_nan(_xml_text(root, "size/width"))
    height = _float_or_nan(_xml_text(root, "size/height"))
    if width > 0 and height > 0:  # labelImg and others write 0 when they do not know
        size = (int(round(height)), int(round(width)))
    objects = []
    for index, element in enumerate(root.findall("object")):
        name = _xml_text(element, "name", default="")
        difficult = _xml_text(element, "difficult", default="0")
        box_element = element.find("bndbox")
        problem = None
        if box_element is None:
            box, problem = (math.nan,) * 4, "has no <bndbox>"
        else:
            box = tuple(_float_or_nan(_xml_text(box_element, key))
                        for key in ("ymin", "xmin", "ymax", "xmax"))
        objects.append(ObjectAnnotation(
            name=name, box=box, difficult=_float_or_nan(difficult) == 1, index=index,
            problem=problem))
    return filename, size, objects


def read_voc(image_dir, annotations_dir, split_file=None, report=None):
    """Reads a Pascal-VOC folder of XML files -> [ImageAnnotation] in image-id order."""
    report = report or Report()
    all_stems = sorted(_stem(name) for name in os.listdir(annotations_dir)
                       if name.lower().endswith(".xml"))
    ids = {stem: position + 1 for position, stem in enumerate(all_stems)}
    if split_file:
        stems = _dedupe(read_split_file(split_file), split_file, report)
    else:
        stems = all_stems
    images_by_stem = _image_index(image_dir)
    images = []
    for stem in sorted(stems, key=lambda s: ids.get(s, 0)):
        xml_path = os.path.join(annotations_dir, stem + ".xml")
        if stem not in ids:
            report.add("annotation_invalid", split_file or annotations_dir,
                       f"no annotation file {xml_path}")
            continue
        try:
            filename, size, objects = _parse_voc_xml(xml_path)
        except (ElementTree.ParseError, ValueError, OSError) as exc:
            report.add("annotation_invalid", xml_path, f"unreadable XML ({exc})")
            continue
        image_path = None
        if filename and os.path.isfile(os.path.join(image_dir, filename)):
            image_path = os.path.join(image_dir, filename)
        else:
            # The <filename> of many exported datasets is stale or lacks the extension;
            # the file named like the XML is the VOC convention.
            for candidate in images_by_stem.get(stem, []) + images_by_stem.get(
                    _stem(filename or ""), []):
                image_path = os.path.join(image_dir, candidate)
                filename = candidate
                break
        images.append(ImageAnnotation(
            image_id=ids[stem], filename=filename or stem, image_path=image_path,
            source=xml_path, annotated_size=size, objects=objects))
    return images


def read_coco(image_dir, json_path, split_file=None, report=None):
    """Reads a COCO detection JSON -> ([ImageAnnotation] in id order, category names)."""
    report = report or Report()
    try:
        with open(json_path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        image_entries = data["images"]
        annotations = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"--annotations {json_path}: not a COCO detection JSON "
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
        width = _float_or_nan(entry.get("width"))
        height = _float_or_nan(entry.get("height"))
        size = (int(height), int(width)) if width > 0 and height > 0 else None
        path = os.path.join(image_dir, file_name)
        images[image_id] = ImageAnnotation(
            image_id=image_id, filename=file_name,
            image_path=path if os.path.isfile(path) else None,
            source=json_path, annotated_size=size)

    for entry in annotations:
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
        problem = None
        if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            x, y, w, h = (_float_or_nan(v) for v in bbox)
            box = (y, x, y + h, x + w)
        else:
            box, problem = (math.nan,) * 4, f"bbox {bbox!r} is not [x, y, w, h]"
        image.objects.append(ObjectAnnotation(
            name=name, box=box, difficult=bool(entry.get("iscrowd", 0)),
            index=len(image.objects), problem=problem))

    selected = sorted(images)
    if split_file:
        wanted = _dedupe(read_split_file(split_file), split_file, report)
        by_key = {}
        for image_id in selected:
            file_name = images[image_id].filename
            for key in (file_name, os.path.basename(file_name), _stem(file_name),
                        str(image_id)):
                by_key.setdefault(key, image_id)
        chosen = set()
        for entry in wanted:
            if entry in by_key:
                chosen.add(by_key[entry])
            else:
                report.add("annotation_invalid", split_file,
                           f"{entry!r} matches no image of {json_path}")
        selected = sorted(chosen)
    return [images[i] for i in selected], [categories[k] for k in sorted(categories)]


YOLO_CLASS_FILES = ("data.yaml", "data.yml", "classes.txt")


def _find_class_file(labels_dir):
    """(the first data.yaml / data.yml / classes.txt found or None, folders searched):
    the labels folder, its parent and the dataset root above it (DATA/labels/train ->
    DATA)."""
    folder = os.path.abspath(labels_dir)
    folders = [folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))]
    for directory in folders:
        for name in YOLO_CLASS_FILES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path, folders
    return None, folders


def yolo_class_names(labels_dir, class_names=None):
    """The names of YOLO's class ids: {id: name} in id order.

    `class_names` (--class_names: the names of ids 0, 1, ...) when given, else the
    `names` of data.yaml (a list, or a mapping id -> name whose ids are kept as
    written) or the lines of classes.txt, looked for as _find_class_file says. An id
    without a name is an unknown class (box_unknown_class), never the next name: gaps
    in a mapping and names given to several ids are logged as warnings, and so is a
    class file that --class_names overrides.
    """
    path, folders = _find_class_file(labels_dir)
    if class_names:
        if path:
            logging.warning("--class_names overrides the class names of %s", path)
        names, where = dict(enumerate(class_names)), "--class_names"
    elif path:
        names, where = _read_class_file(path), path
    else:
        raise ConversionError(f"YOLO labels name classes by number: give --class_names "
                              f"(names in id order 0, 1, ...) or put data.yaml or "
                              f"classes.txt in {folders[-1]}")
    _warn_about_class_names(names, where)
    return names


def _warn_about_class_names(names, where):
    """One warning line per gap in the ids and per name that several ids share."""
    previous = -1
    for class_id in names:
        if class_id > previous + 1:
            missing = (f"id {previous + 1}" if class_id == previous + 2
                       else f"ids {previous + 1}-{class_id - 1}")
            logging.warning("%s: no name for class %s: its boxes are dropped "
                            "[box_unknown_class]", where, missing)
        previous = class_id
    ids_by_name = collections.defaultdict(list)
    for class_id, name in names.items():
        ids_by_name[name].append(class_id)
    for name, ids in ids_by_name.items():
        if len(ids) > 1:
            logging.warning("%s: class ids %s are all named %r: their boxes are one class",
                            where, ", ".join(str(i) for i in ids), name)


def _class_id_key(key):
    """A `names` key of data.yaml -> the class id, or None if it is not one."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key if key >= 0 else None
    if isinstance(key, str) and key.strip().isascii() and key.strip().isdigit():
        return int(key)
    return None


def _read_class_file(path):
    """data.yaml's `names` or classes.txt's lines -> {id: name} in id order."""
    is_text = path.endswith(".txt")
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is not part of the first name.
        with open(path, "r", encoding="utf-8-sig") as handle:
            if is_text:
                names = [line.strip() for line in handle.read().splitlines()]
                while names and not names[-1]:
                    names.pop()
            else:
                import yaml
                data = yaml.safe_load(handle)
                names = data.get("names") if isinstance(data, dict) else None
    except (OSError, ValueError, ImportError) as exc:
        raise ConversionError(f"{path}: unreadable class list ({exc})") from None
    except Exception as exc:  # yaml.YAMLError, without importing yaml up front
        raise ConversionError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(names, list):
        items = list(enumerate(names))
    elif isinstance(names, dict):
        items = list(names.items())
    else:
        items = []
    if not items:
        raise ConversionError(f"{path}: no class names (data.yaml needs `names:` as a "
                              f"list or a mapping id -> name; classes.txt one per line)")
    by_id = {}
    for key, name in items:
        class_id = _class_id_key(key)
        if class_id is None:
            raise ConversionError(f"{path}: class id {key!r} of `names` is not a "
                                  f"non-negative integer")
        if class_id in by_id:
            raise ConversionError(f"{path}: class id {class_id} is named twice "
                                  f"({by_id[class_id]!r}, {name!r})")
        if isinstance(name, bool) or not isinstance(name, (str, int)) or \
                not str(name).strip():
            where = f"line {class_id + 1} (class id {class_id})" if is_text else \
                f"class id {class_id}"
            raise ConversionError(f"{path}: {where} has no name ({name!r}); an id "
                                  f"without a class cannot be skipped by leaving it empty")
        by_id[class_id] = str(name).strip()
    return dict(sorted(by_id.items()))


def _image_size(path, apply_orientation=False):
    """(height, width) of an image as load_image decodes it (upright when
    apply_orientation), or None if unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        rgb, _ = decode_image_bytes(data)
    except (OSError, ImageError):
        return None
    height, width = rgb.shape[:2]
    if apply_orientation and exif_orientation(data) >= 5:   # 5-8 swap the axes
        return width, height
    return height, width


def yolo_keypoint_values(labels_dir):
    """Values of keypoints per label line: K * D of data.yaml's `kpt_shape: [K, D]`
    (a pose dataset: "class cx cy w h" then K keypoints), else 0."""
    path, _ = _find_class_file(labels_dir)
    if not path or path.endswith(".txt"):
        return 0
    try:
        import yaml
        with open(path, "r", encoding="utf-8-sig") as handle:
            data = yaml.safe_load(handle)
    except Exception:  # noqa: BLE001 - _read_class_file reports an unreadable file
        return 0
    shape = data.get("kpt_shape") if isinstance(data, dict) else None
    if shape is None:
        return 0
    if not (isinstance(shape, list) and len(shape) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise ConversionError(f"{path}: kpt_shape {shape!r} is not [keypoints, values "
                              f"per keypoint]")
    logging.info("%s: kpt_shape %s: pose labels; their boxes are read, their keypoints "
                 "are not used", path, shape)
    return shape[0] * shape[1]


def _parse_yolo_line(line, names, size, keypoint_values=0):
    """One label line -> (name, box in pixels, problem or None, polygon?).

    "class cx cy w h" is a box; "class x1 y1 x2 y2 ... xn yn" (n >= 3 points, an odd
    number >= 7 of values) is a polygon, a segmentation label, replaced by the
    bounding box of its points as Ultralytics does. names: {class id: name}.
    keypoint_values > 0 (a pose dataset): every line is a box followed by that many
    keypoint values, which are not used (a line of 2-D keypoints would otherwise pass
    for a polygon).
    """
    fields = line.split()
    if keypoint_values:
        if len(fields) != 5 + keypoint_values:
            raise ValueError(f"{len(fields)} values, expected {5 + keypoint_values} "
                             f"(class cx cy w h and {keypoint_values} keypoint values, "
                             f"kpt_shape of data.yaml)")
        fields = fields[:5]
    polygon = len(fields) >= 7 and len(fields) % 2 == 1
    if len(fields) != 5 and not polygon:
        raise ValueError(f"{len(fields)} values, expected 5 (class cx cy w h) or an odd "
                         f"number >= 7 (class x1 y1 ... xn yn, a polygon)")
    try:
        number = float(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        raise ValueError("not numbers") from None
    if not number.is_integer():
        raise ValueError(f"class id {fields[0]} is not an integer")
    class_id = int(number)
    name = names.get(class_id, f"<class id {class_id}>")
    if size is None:
        return name, (math.nan,) * 4, "image size unknown (unreadable image)", polygon
    height, width = size
    if polygon:
        if not all(math.isfinite(v) for v in values):
            return name, (math.nan,) * 4, None, polygon   # box_not_finite says it
        xs, ys = values[0::2], values[1::2]
        return name, (min(ys) * height, min(xs) * width,
                      max(ys) * height, max(xs) * width), None, polygon
    cx, cy, w, h = values
    return name, ((cy - h / 2) * height, (cx - w / 2) * width,
                  (cy + h / 2) * height, (cx + w / 2) * width), None, polygon


def _label_index(labels_dir, report):
    """Relative stem ("a/b/x") -> relative path of its label file, found in labels_dir
    and its subfolders with the extension .txt in any case (x.TXT)."""
    index = {}
    for name in _list_files(labels_dir, recursive=True):
        root, extension = os.path.splitext(name)
        if extension.lower() != ".txt":
            continue
        if root in index:
            report.add("annotation_invalid", _join(labels_dir, name),
                       f"a second label file for {root} ({index[root]} is read)")
            continue
        index[root] = name
    return index


def _match_split_entry(entry, stems, image_dir, split_dir):
    """The relative stem an entry of a YOLO split file names, or None.

    Entries are relative stems or paths ("a/x", "a/x.jpg", Ultralytics' lists of
    "./images/train/a/x.jpg" relative to the list's folder, or absolute paths): the
    entry itself, then the path it names if that lies inside image_dir, then its
    trailing path components (paths written on another machine). A path to an
    existing file outside image_dir matches nothing.
    """
    text = entry.replace("\\", "/")
    root, extension = os.path.splitext(text)
    forms = [text]
    if extension.lower() in IMAGE_EXTENSIONS + (".txt",):
        forms.insert(0, root)
    for form in forms:
        form = posixpath.normpath(form)
        if form in stems:
            return form
    form = posixpath.normpath(forms[0])
    located = form if os.path.isabs(form) else os.path.join(split_dir, form)
    relative = os.path.relpath(os.path.abspath(located), os.path.abspath(image_dir))
    if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
        relative = relative.replace(os.sep, "/")
        return relative if relative in stems else None
    if os.path.isfile(os.path.join(split_dir, text)):
        return None
    parts = form.split("/")
    for start in range(1, len(parts)):
        suffix = "/".join(parts[start:])
        if suffix in stems:
            return suffix
    return None


def _join(folder, relative):
    """folder + a relative path written with "/"."""
    return os.path.join(folder, *relative.split("/"))


def read_yolo(image_dir, labels_dir, split_file=None, report=None, class_names=None):
    """Reads a YOLO labels folder -> ([ImageAnnotation] in image-id order, class names
    in id order).

    Images are found in image_dir and its subfolders (hidden ones skipped); the label
    of image_dir/a/b/x.jpg is labels_dir/a/b/x.txt (.TXT too), its record's file name
    "a/b/x.jpg". A malformed line is skipped (annotation_invalid), an image without a
    label file too; an empty label file is an image without objects. Polygons become
    their bounding box (polygon_to_box). Unknown class ids and boxes reaching outside
    [0, 1] go to the box rules (box_unknown_class, box_outside, box_clipped) like VOC's
    and COCO's. Boxes refer to the upright image (apply_orientation is set).
    """
    report = report or Report()
    names = yolo_class_names(labels_dir, class_names)
    keypoint_values = yolo_keypoint_values(labels_dir)
    images_by_stem = _image_index(image_dir, recursive=True)
    stems = sorted(images_by_stem)
    ids = {stem: position + 1 for position, stem in enumerate(stems)}
    labels = _label_index(labels_dir, report)
    if split_file:
        wanted = []
        for entry in _dedupe(read_split_file(split_file), split_file, report):
            stem = _match_split_entry(entry, ids, image_dir, os.path.dirname(split_file))
            if stem is None:
                report.add("annotation_invalid", split_file,
                           f"{entry!r} matches no image of {image_dir}")
            else:
                wanted.append(stem)
        stems = sorted(_dedupe(wanted, split_file, report), key=ids.get)
    else:
        for stem in sorted(set(labels) - set(stems) - {"classes"}):
            report.add("annotation_invalid", _join(labels_dir, labels[stem]),
                       f"no image named {stem}.* in {image_dir}")
    images = []
    for stem in stems:
        filename = images_by_stem[stem][0]
        for other in images_by_stem[stem][1:]:
            report.add("duplicate_image", _join(image_dir, other),
                       f"same name as {filename} apart from the extension; the label "
                       f"file is used for {filename} only")
        label_path = _join(labels_dir, labels.get(stem, stem + ".txt"))
        if stem not in labels:
            report.add("annotation_invalid", label_path,
                       f"no label file for image {filename}")
            continue
        try:
            # utf-8-sig: a byte-order mark would make line 1 "not numbers".
            with open(label_path, "r", encoding="utf-8-sig", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            report.add("annotation_invalid", label_path,
                       f"unreadable ({exc.strerror or exc})")
            continue
        image_path = _join(image_dir, filename)
        size = _image_size(image_path, apply_orientation=True)
        image = ImageAnnotation(image_id=ids[stem], filename=filename,
                                image_path=image_path, source=label_path,
                                apply_orientation=True)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                name, box, problem, polygon = _parse_yolo_line(line, names, size,
                                                               keypoint_values)
            except ValueError as exc:
                report.add("annotation_invalid", f"{label_path} line {number}",
                           f"{line.strip()!r}: {exc}")
                continue
            if polygon:
                report.add("polygon_to_box", f"{label_path} line {number}",
                           f"polygon of {(len(line.split()) - 1) // 2} points")
            image.objects.append(ObjectAnnotation(name=name, box=box,
                                                  index=len(image.objects),
                                                  problem=problem))
        images.append(image)
    return images, list(dict.fromkeys(names.values()))


def read_annotations(fmt, image_dir, annotations, split_file=None, report=None,
                     class_names=None):
    """Any reader -> ([ImageAnnotation], class names the annotations declare or use).

    class_names: YOLO's names of class ids 0, 1, ... (see yolo_class_names)."""
    check_inputs(fmt, image_dir, annotations, split_file)
    report = report or Report()
    if fmt == "voc":
        images = read_voc(image_dir, annotations, split_file, report)
        names = sorted({obj.name for image in images for obj in image.objects
                        if obj.name.strip()})
        return images, names
    if fmt == "yolo":
        images, names = read_yolo(image_dir, annotations, split_file, report, class_names)
        return images, names
    images, names = read_coco(image_dir, annotations, split_file, report)
    return images, sorted(set(names))


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedImage:
    encoded: bytes        # what the record stores: the original bytes or a PNG
    image_format: str     # "jpeg" | "png"
    height: int
    width: int
    converted_from: str   # None when the original bytes are stored unchanged
    rgb: np.ndarray       # uint8 [H, W, 3]
    orientation: int = 1  # the file's EXIF orientation (applied if load_image was asked)


_JPEG_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                     0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha",
                    6: "RGBA"}


def _sniff_format(data):
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_info(data):
    """-> (number of colour components or None, complete?) from the marker segments.

    OpenCV decodes a truncated JPEG without an error (grey fill), so completeness is
    checked here: after the first start-of-scan the entropy-coded data cannot contain
    FF D9 (byte stuffing), so an FF D9 there is the end-of-image marker.
    """
    pos, components = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return components, False
        marker = data[pos + 1]
        if marker == 0xFF:            # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:   # markers without a length
            pos += 2
            continue
        if marker == 0xD9:            # end of image before any scan: no pixels
            return components, False
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_SOF_MARKERS and pos + 9 < len(data):
            components = data[pos + 9]
        if marker == 0xDA:
            return components, data.find(b"\xff\xd9", pos + 2 + length) != -1
        pos += 2 + length
    return components, False


def _png_info(data):
    """-> (bit depth, colour type name, complete?) by walking the chunks up to IEND."""
    pos, depth, color = 8, None, None
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunk_type = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return depth, color, False
        if chunk_type == b"IHDR" and length >= 10:
            depth = data[pos + 16]
            color = _PNG_COLOR_TYPES.get(data[pos + 17], f"colour type {data[pos + 17]}")
        if chunk_type == b"IEND":
            return depth, color, True
        pos = end
    return depth, color, False


# EXIF orientation -> how viewers show the stored pixels (apply_exif_orientation).
EXIF_ORIENTATIONS = {1: "as stored", 2: "mirrored horizontally", 3: "rotated 180 degrees",
                     4: "mirrored vertically", 5: "transposed",
                     6: "rotated 90 degrees clockwise", 7: "transversed",
                     8: "rotated 90 degrees counter-clockwise"}
_EXIF_ORIENTATION_TAG = 0x0112
_MAX_IFD_ENTRIES = 1024


def _tiff_orientation(tiff):
    """The Orientation tag of IFD0 of a TIFF structure (EXIF payload), 1 if absent or
    unusable. Every read is bounds-checked: garbage gives 1, never an exception."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    if struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return 1
    offset = struct.unpack(order + "I", tiff[4:8])[0]
    if offset + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[offset:offset + 2])[0]
    for entry in range(min(count, _MAX_IFD_ENTRIES)):
        start = offset + 2 + 12 * entry
        if start + 12 > len(tiff):
            return 1
        tag, kind = struct.unpack(order + "HH", tiff[start:start + 4])
        if tag != _EXIF_ORIENTATION_TAG:
            continue
        if kind == 3:      # SHORT: the value is in the first two bytes of the field
            value = struct.unpack(order + "H", tiff[start + 8:start + 10])[0]
        elif kind == 4:    # LONG, written by a few tools
            value = struct.unpack(order + "I", tiff[start + 8:start + 12])[0]
        else:
            return 1
        return value if value in EXIF_ORIENTATIONS else 1
    return 1


def exif_orientation(data):
    """EXIF orientation (1-8) of encoded JPEG (APP1 "Exif") or PNG (eXIf chunk) bytes;
    1 when there is none or it cannot be read. Walks the segments / chunks up to the
    image data only, never raises."""
    try:
        kind = _sniff_format(data)
        if kind == "jpeg":
            pos = 2
            while pos + 4 <= len(data) and data[pos] == 0xFF:
                marker = data[pos + 1]
                if marker == 0xFF:                                # fill byte
                    pos += 1
                    continue
                if marker == 0x01 or 0xD0 <= marker <= 0xD8:      # no length
                    pos += 2
                    continue
                if marker in (0xD9, 0xDA):                        # image data: no EXIF
                    return 1
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
                    return _tiff_orientation(data[pos + 10:pos + 2 + length])
                pos += 2 + length
        elif kind == "png":
            pos = 8
            while pos + 8 <= len(data):
                length = int.from_bytes(data[pos:pos + 4], "big")
                chunk_type = data[pos + 4:pos + 8]
                if chunk_type == b"eXIf":
                    return _tiff_orientation(data[pos + 8:pos + 8 + length])
                if chunk_type == b"IEND":
                    return 1
                pos += 12 + length
    except (struct.error, IndexError, ValueError):
        pass
    return 1


def apply_exif_orientation(rgb, orientation):
    """Stored pixels [H, W, ...] -> the image as viewers show it for an EXIF orientation
    (1-8; anything else is 1). 5-8 swap height and width."""
    transforms = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],                      # mirror horizontal
        3: lambda a: a[::-1, ::-1],                   # rotate 180
        4: lambda a: a[::-1],                         # mirror vertical
        5: lambda a: a.swapaxes(0, 1),                # transpose
        6: lambda a: np.rot90(a, k=-1),               # rotate 90 clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),    # transverse
        8: lambda a: np.rot90(a, k=1),                # rotate 90 counter-clockwise
    }
    return np.ascontiguousarray(transforms.get(orientation, transforms[1])(rgb))


def to_rgb8(image):
    """An OpenCV-decoded image (BGR/BGRA/grey, 8 or 16 bit) -> uint8 RGB [H, W, 3].

    16-bit values are scaled by 1/257 (full 16-bit range onto 0..255, the same for every
    image, so relative intensities across the dataset are kept). Alpha is dropped, as
    TensorFlow's decode_image(channels=3) does.
    """
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"unsupported number of channels {image.shape[2]}")


def decode_image_bytes(data):
    """Encoded bytes -> (uint8 RGB [H, W, 3], why it is not storable as is, or None).

    Raises ImageError for zero-byte, truncated or undecodable data.
    """
    if not data:
        raise ImageError("zero-byte file")
    kind = _sniff_format(data)
    conversion = None
    if kind == "jpeg":
        components, complete = _jpeg_info(data)
        if not complete:
            raise ImageError("truncated JPEG (no end-of-image marker)")
        if components == 1:
            conversion = "grayscale JPEG"
        elif components == 4:
            conversion = "CMYK JPEG"
        elif components != 3:
            conversion = f"JPEG with {components} components"
    elif kind == "png":
        depth, color, complete = _png_info(data)
        if not complete:
            raise ImageError("truncated PNG (no IEND chunk)")
        if color != "RGB" or depth != 8:
            conversion = f"{depth}-bit {color} PNG"
    else:
        conversion = f"{kind or 'unrecognised'} format"
    image = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        raise ImageError(f"cannot be decoded as an image ({kind or 'unknown format'})")
    if image.dtype != np.uint8 and kind not in ("jpeg", "png"):  # PNG depth said above
        conversion = f"{conversion}, {image.dtype} pixels"
    return to_rgb8(image), conversion


def load_image(path, apply_orientation=False):
    """Reads an image file for a record: the bytes to store, their format, size, RGB.

    8-bit RGB JPEG/PNG files are stored byte for byte; anything else is converted to 8-bit
    RGB and re-encoded as PNG (lossless; TensorFlow decodes it like the originals).
    The pixels are the stored ones (EXIF orientation ignored, but returned); with
    apply_orientation, a non-default EXIF orientation is applied and the upright image
    re-encoded as PNG.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"cannot be read ({exc.strerror or exc})") from None
    rgb, conversion = decode_image_bytes(data)
    orientation = exif_orientation(data)
    reoriented = apply_orientation and orientation != 1
    if reoriented:
        rgb = apply_exif_orientation(rgb, orientation)
    height, width = rgb.shape[:2]
    if conversion is None and not reoriented:
        return LoadedImage(data, _sniff_format(data), height, width, None, rgb, orientation)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError("cannot be re-encoded as PNG")
    return LoadedImage(png.tobytes(), "png", height, width, conversion, rgb, orientation)


# ---------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class CleanObject:
    name: str
    box: tuple            # (y1, x1, y2, x2) inside the image
    difficult: bool
    index: int
    clipped: bool         # the annotated box reached outside the image


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
        kept.append(CleanObject(obj.name, clipped, obj.difficult, obj.index, was_clipped))
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
        loaded = load_image(image.image_path, apply_orientation=image.apply_orientation)
    except ImageError as exc:
        report.add("image_unreadable", image.image_path, str(exc))
        return None
    if loaded.converted_from:
        report.add("image_converted", image.image_path, loaded.converted_from)
    if loaded.orientation != 1:
        what = (f"EXIF orientation {loaded.orientation} (viewers show the stored pixels "
                f"{EXIF_ORIENTATIONS[loaded.orientation]})")
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


# ---------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------

def default_split(split_file):
    return _stem(split_file) if split_file else "train"


def parse_classes(text):
    """'a,b, c' -> ['a', 'b', 'c'] (None for empty)."""
    if not text:
        return None
    return [name.strip() for name in text.split(",") if name.strip()] or None


def format_summary(summary):
    lines = [f"{summary['split']}: {summary['images_read']} images read, "
             f"{summary['images_written']} written with {summary['objects_written']} "
             f"objects into {len(summary['files'])} shard(s) in {summary['output_dir']}; "
             f"classes: {', '.join(summary['classes'])}"]
    # Each rule applied gets a line with its count and action; the others share one
    # line, so that a clean conversion is two lines and still names every rule checked.
    applied = [rule for rule in RULES if summary[rule]]
    width = max(len(rule) for rule in RULES)
    for rule in applied:
        lines.append(f"  {rule:<{width}} {summary[rule]:>6}   {RULES[rule]}")
    unapplied = [rule for rule in RULES if rule not in applied]
    if unapplied:
        lines.append(f"  0 each: {', '.join(unapplied)}")
    return "\n".join(lines)


def _check_output_names(split, num_shards):
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ConversionError(f"--num_shards must be a positive integer, got {num_shards!r}")
    if not split or os.sep in split or split.startswith("."):
        raise ConversionError(f"--split {split!r} is not a usable file-name prefix")


def convert_dataset(fmt, image_dir, annotations, output_dir, split_file=None, split=None,
                    classes=None, num_shards=1, progress_every_seconds=None,
                    class_names=None):
    """Converts one split; see the module docstring. Returns the summary dict:

    split, output_dir, files, classes (id order), images_read (annotations read),
    images_written, objects_written, objects_per_class, and one count per rule of RULES.
    Raises ConversionError for fatal problems (nothing is written then). YOLO's class
    ids are named by class_names (--class_names), else by data.yaml / classes.txt;
    `classes` (--classes) only gives the label map's ids and which classes are kept.
    """
    check_inputs(fmt, image_dir, annotations, split_file)
    split = split or default_split(split_file)
    _check_output_names(split, num_shards)

    report = Report()
    images, found_names = read_annotations(fmt, image_dir, annotations, split_file, report,
                                           class_names=class_names)
    os.makedirs(output_dir, exist_ok=True)
    map_path = label_map_lib.label_map_path(output_dir)
    existing = None
    try:
        if os.path.exists(map_path):
            existing = label_map_lib.read_label_map(map_path)
        labels = label_map_lib.choose_classes(found_names, classes, existing)
    except label_map_lib.LabelMapError as exc:
        raise ConversionError(str(exc)) from None
    if existing is not None:
        logging.info("reusing the class ids of %s: %s", map_path, labels.class_names)
    return write_records(images, labels, output_dir, split, num_shards=num_shards,
                         report=report, progress_every_seconds=progress_every_seconds)


def write_records(images, labels, output_dir, split, num_shards=1, report=None,
                  progress_every_seconds=5.0):
    """Writes annotated images as the TFRecord shards of `split` + the label map.

    images: [ImageAnnotation] in the order to write (already selected or filtered by
    the caller: a whole split, a K-shot set, base classes only). labels: the LabelMap
    the records use; boxes of classes it does not list are dropped and reported. Every
    image and box rule applies here, counted in `report` (a Report, possibly holding the
    counts of the reading step). Publishing is atomic as the module docstring says.
    Returns the summary dict of convert_dataset; raises ConversionError when no image
    survives (nothing is written then).
    """
    # TensorFlow is imported here, not at module level: its import takes seconds and
    # prints C++ banners, which would bury the one-line error of a bad flag.
    from data.io import tfrecord_format
    from libs.tf_compat import tf

    _check_output_names(split, num_shards)
    report = report or Report()
    os.makedirs(output_dir, exist_ok=True)
    names = [tfrecord_format.shard_name(split, i, num_shards) for i in range(num_shards)]
    pending = [PendingFile(os.path.join(output_dir, name)) for name in names]
    writers = []
    images_written = objects_written = 0
    per_class = collections.Counter()
    try:
        writers = [tf.io.TFRecordWriter(p.temp_path) for p in pending]
        with Progress(len(images), f"convert {split}", progress_every_seconds,
                      unit="images") as progress:
            for image in images:
                progress.update()
                result = load_and_clean(image, labels.class_names, report)
                if result is None:
                    continue
                loaded, objects = result
                if not objects:
                    what = "has no valid object left" if image.objects else \
                        "has no object annotated"
                    report.add("image_no_objects", image.source, f"{image.filename} {what}")
                    continue
                example = tfrecord_format.make_example(
                    encoded=loaded.encoded, image_format=loaded.image_format,
                    height=loaded.height, width=loaded.width, filename=image.filename,
                    image_id=image.image_id, boxes=[o.box for o in objects],
                    labels=[labels.id_of(o.name) for o in objects],
                    class_texts=[o.name for o in objects],
                    difficult=[o.difficult for o in objects])
                writers[images_written % num_shards].write(example.SerializeToString())
                images_written += 1
                objects_written += len(objects)
                per_class.update(o.name for o in objects)
        for writer in writers:
            writer.close()
        writers = []
        if images_written == 0:
            _log_summary(_summary(split, output_dir, [], labels, len(images), 0, 0,
                                  per_class, report))
            raise ConversionError(
                f"no image of split {split!r} survived validation "
                f"({len(images)} listed; see the warnings above); nothing written")
        for item in pending:
            item.commit()
    except BaseException:
        for writer in writers:
            writer.close()
        for item in pending:
            item.discard()
        raise

    # The new shards are in place: drop shards of an earlier conversion of this split
    # that were not overwritten, then publish the label map.
    for name in sorted(os.listdir(output_dir)):
        if tfrecord_format.is_shard_of(name, split) and name not in names:
            os.remove(os.path.join(output_dir, name))
            logging.info("removed %s (left from an earlier conversion of %s)", name, split)
    labels = labels.with_split(split, images_written, objects_written, names)
    label_map_lib.write_label_map(label_map_lib.label_map_path(output_dir), labels)

    summary = _summary(split, output_dir, names, labels, len(images), images_written,
                       objects_written, per_class, report)
    _log_summary(summary)
    return summary


def _summary(split, output_dir, files, labels, images_read, images_written,
             objects_written, per_class, report):
    summary = collections.OrderedDict(
        split=split, output_dir=output_dir, files=list(files), classes=labels.class_names,
        images_read=images_read, images_written=images_written,
        objects_written=objects_written,
        objects_per_class={name: per_class[name] for name in labels.class_names})
    summary.update(report.counts)
    return summary


def _log_summary(summary):
    for line in format_summary(summary).splitlines():
        logging.info("%s", line)
