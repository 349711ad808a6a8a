"""The annotation formats by name: what --format chooses from.

    register(Format(...)) -> the Format          one call in the format's own module
    get(name) -> Format                          ConversionError for an unknown name
    names() -> ("voc", "coco", "yolo", ...)      registration order: --format's choices
    registered() -> (Format, ...)

A Format is a name, the texts that --help and error messages show, and two functions:
check_inputs(image_dir, annotations) raises ConversionError with one line when
--annotations cannot be this format's input (a file where a folder is expected), and
read(image_dir, annotations, split_file, report, class_names=None) returns
([ImageAnnotation] in image-id order, the class names the annotations declare or use,
in the order a new label map takes them when --classes is not given). report: the
annotation.Report counting what the reader skips or repairs; class_names:
--class_names, for a format whose files number their classes (YOLO); the others
ignore it. What a reader must guarantee is in data/io/annotation.py;
data/io/convert.py does the rest (the generic input checks come before check_inputs).
"""
import dataclasses
import os
from typing import Callable

from data.io import annotation

_REGISTERED = {}   # name -> Format, in registration order


@dataclasses.dataclass(frozen=True)
class Format:
    """One annotation format. The texts are joined over all formats by the tools:
    "--annotations: VOC: the folder of XML files. COCO: ..."."""
    name: str                 # the --format value: "voc"
    label: str                # how messages name the format: "VOC"
    annotations_help: str     # what --annotations is, for --help: "the folder of XML files"
    annotations_short: str    # the same in a few words, for errors: "the XML folder"
    split_entries: str        # what a --split_file line names: "file stems"
    check_inputs: Callable    # see the module docstring
    read: Callable            # see the module docstring


def register(fmt):
    """Makes `fmt` a --format choice; returns it. A name is registered once."""
    if fmt.name in _REGISTERED:
        raise ValueError(f"annotation format {fmt.name!r} is already registered")
    _REGISTERED[fmt.name] = fmt
    return fmt


def get(name):
    """The Format registered as `name`; ConversionError (one line) for any other."""
    if name not in _REGISTERED:
        raise annotation.ConversionError(
            f"--format must be one of {', '.join(names())}, got {name!r}")
    return _REGISTERED[name]


def names():
    """The registered names, in registration order."""
    return tuple(_REGISTERED)


def registered():
    """The registered Formats, in registration order."""
    return tuple(_REGISTERED.values())


def require_folder(annotations, what):
    """check_inputs' test for a format whose --annotations is a folder; `what` ends the
    error line: "(VOC annotations are a folder of XML files)"."""
    if not os.path.isdir(annotations):
        raise annotation.ConversionError(
            f"--annotations {annotations}: no such directory ({what})")


def require_file(annotations, what):
    """check_inputs' test for a format whose --annotations is one file."""
    if not os.path.isfile(annotations):
        raise annotation.ConversionError(
            f"--annotations {annotations}: no such file ({what})")
