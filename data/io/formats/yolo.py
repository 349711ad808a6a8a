"""YOLO (Ultralytics / Darknet): a folder of .txt label files, one per image (--format yolo).

    DATA/images/train/a/x.jpg    DATA/labels/train/a/x.txt    DATA/data.yaml (names)

- Lines: "class cx cy w h", normalised to the image, becomes
  [(cy - h/2) H, (cx - w/2) W, (cy + h/2) H, (cx + w/2) W] for an H x W image (its
  size read from the image itself); a segmentation line "class x1 y1 ... xn yn" (a
  normalised polygon, n >= 3) the bounding box of its points (polygon_to_box); with
  data.yaml's `kpt_shape: [K, D]` (a pose dataset) every line is a box followed by K * D
  keypoint values, which are not used. A malformed line is skipped (annotation_invalid).
- Classes: class k is the name of id k (0-based) given by --class_names, else by
  data.yaml / classes.txt (read_class_names); a mapping with gaps keeps its ids, so an
  id without a name is an unknown class ("<class id k>", box_unknown_class). The names
  in id order are the label map's default order.
- EXIF orientation: YOLO boxes are normalised to the image as viewers show it, so an
  image's EXIF orientation (JPEG APP1 / PNG eXIf) is applied before its size is read
  and the record stores the upright pixels as PNG (image_oriented).
- Folders: images in subfolders of the image folder are found too (hidden folders
  skipped); image_dir/a/b/x.jpg pairs with labels_dir/a/b/x.txt (extension in any
  case) and is stored with the file name "a/b/x.jpg". An image without a label file is
  skipped (annotation_invalid); an empty label file is an image without objects.
- Image ids: the 1-based position of the image's relative path without extension
  ("a/b/x") in the sorted list of the image folder's images, so train and val
  converted from one folder never share an id and re-running gives the same ids.
- --split_file: image paths or stems, one per line (_match_split_entry).
- Ignore regions (this project's extension; YOLO has no flag for them): x.ignore.txt
  beside x.txt holds lines of the same form whose boxes are ignore regions (trained
  neither as their class nor as background; tools/mine_labels.py writes its doubtful
  boxes there). Other YOLO tools look for x.txt only, so to them these regions are
  unlabelled, as they were.
"""
import collections
import math
import os
import posixpath

from absl import logging

from data.io import annotation
from data.io.formats import registry
from libs.base import images as images_lib

CLASS_FILES = ("data.yaml", "data.yml", "classes.txt")
IGNORE_SUFFIX = ".ignore"      # labels/x.ignore.txt: the ignore regions of image x


def _find_class_file(labels_dir):
    """(the first data.yaml / data.yml / classes.txt found or None, folders searched):
    the labels folder, its parent and the dataset root above it (DATA/labels/train ->
    DATA)."""
    folder = os.path.abspath(labels_dir)
    folders = [folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))]
    for directory in folders:
        for name in CLASS_FILES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path, folders
    return None, folders


def read_class_names(labels_dir, class_names=None):
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
        raise annotation.ConversionError(f"YOLO labels name classes by number: give --class_names "
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
        raise annotation.ConversionError(f"{path}: unreadable class list ({exc})") from None
    except Exception as exc:  # yaml.YAMLError, without importing yaml up front
        raise annotation.ConversionError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(names, list):
        items = list(enumerate(names))
    elif isinstance(names, dict):
        items = list(names.items())
    else:
        items = []
    if not items:
        raise annotation.ConversionError(f"{path}: no class names (data.yaml needs `names:` as a "
                              f"list or a mapping id -> name; classes.txt one per line)")
    by_id = {}
    for key, name in items:
        class_id = _class_id_key(key)
        if class_id is None:
            raise annotation.ConversionError(f"{path}: class id {key!r} of `names` is not a "
                                  f"non-negative integer")
        if class_id in by_id:
            raise annotation.ConversionError(f"{path}: class id {class_id} is named twice "
                                  f"({by_id[class_id]!r}, {name!r})")
        if isinstance(name, bool) or not isinstance(name, (str, int)) or \
                not str(name).strip():
            where = f"line {class_id + 1} (class id {class_id})" if is_text else \
                f"class id {class_id}"
            raise annotation.ConversionError(f"{path}: {where} has no name ({name!r}); an id "
                                  f"without a class cannot be skipped by leaving it empty")
        by_id[class_id] = str(name).strip()
    return dict(sorted(by_id.items()))


def keypoint_values_per_line(labels_dir):
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
        raise annotation.ConversionError(f"{path}: kpt_shape {shape!r} is not [keypoints, values "
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
    for name in annotation.list_files(labels_dir, recursive=True):
        root, extension = os.path.splitext(name)
        if extension.lower() != ".txt":
            continue
        if root in index:
            report.add("annotation_invalid", annotation.join_relative(labels_dir, name),
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
    if extension.lower() in images_lib.IMAGE_EXTENSIONS + (".txt",):
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


def read(image_dir, labels_dir, split_file, report, class_names=None):
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
    names = read_class_names(labels_dir, class_names)
    keypoint_values = keypoint_values_per_line(labels_dir)
    images_by_stem = annotation.image_index(image_dir, recursive=True)
    stems = sorted(images_by_stem)
    ids = {stem: position + 1 for position, stem in enumerate(stems)}
    labels = _label_index(labels_dir, report)
    ignores = {stem[:-len(IGNORE_SUFFIX)]: labels.pop(stem) for stem in list(labels)
               if stem.endswith(IGNORE_SUFFIX) and stem not in images_by_stem
               and stem[:-len(IGNORE_SUFFIX)] in images_by_stem}
    if split_file:
        wanted = []
        entries = annotation.read_split_file(split_file)
        for entry in annotation.dedupe(entries, split_file, report):
            stem = _match_split_entry(entry, ids, image_dir, os.path.dirname(split_file))
            if stem is None:
                report.add("annotation_invalid", split_file,
                           f"{entry!r} matches no image of {image_dir}")
            else:
                wanted.append(stem)
        stems = sorted(annotation.dedupe(wanted, split_file, report), key=ids.get)
    else:
        for stem in sorted(set(labels) - set(stems) - {"classes"}):
            report.add("annotation_invalid", annotation.join_relative(labels_dir, labels[stem]),
                       f"no image named {stem}.* in {image_dir}")
    images = []
    for stem in stems:
        filename = images_by_stem[stem][0]
        for other in images_by_stem[stem][1:]:
            report.add("duplicate_image", annotation.join_relative(image_dir, other),
                       f"same name as {filename} apart from the extension; the label "
                       f"file is used for {filename} only")
        label_path = annotation.join_relative(labels_dir, labels.get(stem, stem + ".txt"))
        if stem not in labels:
            report.add("annotation_invalid", label_path,
                       f"no label file for image {filename}")
            continue
        image_path = annotation.join_relative(image_dir, filename)
        size = images_lib.image_size(image_path, apply_orientation=True)
        image = annotation.ImageAnnotation(image_id=ids[stem], filename=filename,
                                image_path=image_path, source=label_path,
                                apply_orientation=True)
        if not _read_label_file(label_path, image, names, size, keypoint_values, report):
            continue
        if stem in ignores:
            _read_label_file(annotation.join_relative(labels_dir, ignores[stem]), image,
                             names, size, keypoint_values, report, ignore=True)
        images.append(image)
    return images, list(dict.fromkeys(names.values()))


def _read_label_file(label_path, image, names, size, keypoint_values, report,
                     ignore=False):
    """Appends the objects of one label file to `image` (ignore regions when `ignore`);
    False when the file cannot be read (reported)."""
    try:
        # utf-8-sig: a byte-order mark would make line 1 "not numbers".
        with open(label_path, "r", encoding="utf-8-sig", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        report.add("annotation_invalid", label_path, f"unreadable ({exc.strerror or exc})")
        return False
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
        image.objects.append(annotation.ObjectAnnotation(
            name=name, box=box, index=len(image.objects), problem=problem, ignore=ignore))
    return True


def check_inputs(image_dir, annotations):
    registry.require_folder(annotations,
                            "YOLO labels are a folder of .txt files, one per image")


FORMAT = registry.register(registry.Format(
    name="yolo", label="YOLO", annotations_help="the folder of .txt label files "
                                                "(DATA/labels/train)",
    annotations_short="the labels folder", split_entries="image paths or stems",
    check_inputs=check_inputs, read=read))
