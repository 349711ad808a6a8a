"""What every annotation format's reader produces, and the rules every conversion reports.

    ImageAnnotation, ObjectAnnotation   one image's annotation as a reader gives it
    RULES, Report                       the validation rules; counts + one warning line each
    ConversionError                     a fatal problem, one line for the user
    read_split_file, dedupe, list_files, image_index, ...   helpers the readers share

Readers (data/io/formats/) only read: they turn a format's files into ImageAnnotations
and leave every judgement on boxes and images to data/io/cleaning.py, so that all
formats obey the same rules. What a reader guarantees:
- Boxes are (y1, x1, y2, x2) in pixels of the stored image, or of the image as viewers
  show it when the reader sets apply_orientation (libs/base/images.py). A box is passed
  on as annotated, even NaN, degenerate or outside the image; `problem` says why the
  coordinates could not be read at all.
- Image ids are positive integers, unique within a conversion and the same on every
  run over the same files, and the images come in image-id order.
- Whatever a reader skips or repairs (an unreadable annotation file, an image listed
  twice, a polygon turned into a box) is reported through the Report with a rule of
  RULES.

Validation: every rule of RULES is applied to every image and object; each occurrence
is logged as one warning line "<file>: <what> -> <action>" and counted; the counts are
the summary of a conversion (data/io/convert.py).
"""
import collections
import dataclasses
import math
import os

from absl import logging

from libs.base import images as images_lib
from libs.base.errors import UserError

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
    ("object_ignored", "ignore region (COCO iscrowd, VOC <ignore>1</ignore>, difficult "
                       "with --difficult_as_ignore) -> kept, trains neither as object "
                       "nor as background"),
    ("review_skipped", "Label Studio review: a task matching no image, a rotated box or "
                       "a label not among the new classes -> skipped"),
    # An image without objects has no positive anchor or ROI: it adds nothing to the
    # RPN and Fast R-CNN targets as this pipeline builds them.
    ("image_no_objects", "no valid object left -> image skipped"),
])
# Counted, but not worth a warning line each: nothing is wrong with them.
_QUIET_RULES = ("object_difficult", "object_ignored", "polygon_to_box")


class ConversionError(UserError):
    """A fatal problem (missing input, unusable label map); one line for the user."""


@dataclasses.dataclass
class ObjectAnnotation:
    name: str
    box: tuple            # (y1, x1, y2, x2) as annotated; may be NaN/degenerate/outside
    difficult: bool = False
    # An ignore region (data/io/tfrecord_format.py): a crowd, a doubtful mined box.
    ignore: bool = False
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
# Helpers the readers share
# ---------------------------------------------------------------------------------------

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


def file_stem(name):
    """"a/b/x.jpg" -> "x"."""
    return os.path.splitext(os.path.basename(name))[0]


def dedupe(entries, where, report):
    """entries without repeats, in order; each repeat is reported (duplicate_image)."""
    seen, unique = set(), []
    for entry in entries:
        if entry in seen:
            report.add("duplicate_image", where, f"{entry!r} listed more than once")
            continue
        seen.add(entry)
        unique.append(entry)
    return unique


def list_files(folder, recursive=False):
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


def image_index(image_dir, recursive=False):
    """Stem -> sorted file names of the images directly inside image_dir; recursive:
    relative stem ("a/b/x") -> relative paths ("a/b/x.jpg"), subfolders included."""
    index = collections.defaultdict(list)
    for name in list_files(image_dir, recursive):
        root, extension = os.path.splitext(name)
        if extension.lower() in images_lib.IMAGE_EXTENSIONS:
            index[root].append(name)
    return index


def float_or_nan(text):
    """A number written in an annotation, NaN when it is missing or not a number
    (box_not_finite then drops the box)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def join_relative(folder, relative):
    """folder + a relative path written with "/"."""
    return os.path.join(folder, *relative.split("/"))
