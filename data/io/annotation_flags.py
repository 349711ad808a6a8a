"""The flags of every tool that reads annotations, defined once so they mean the same.

    annotation_flags.define(split_help)   --format, --image_dir, --annotations, --split_file
    annotation_flags.define_yolo_names()  --class_names (YOLO's names of class ids 0, 1, ...)

The --format choices and the --annotations help come from the format registry
(data/io/formats), so a new format appears in every tool. Called at run time by the
tools' _define_flags (libs.base.cli.run_tool), never at import.
"""
from absl import flags

from data.io import formats


def define(split_help):
    """--format, --image_dir, --annotations, --split_file: where annotations come from."""
    flags.DEFINE_enum("format", None, list(formats.names()), "Annotation format.")
    flags.DEFINE_string("image_dir", None, "Folder of the images.")
    flags.DEFINE_string("annotations", None, " ".join(
        f"{f.label}: {f.annotations_help}." for f in formats.registered()))
    flags.DEFINE_string("split_file", None, split_help)


def define_yolo_names():
    """--class_names: the names of YOLO's class ids, the same flag in every tool that
    reads YOLO labels (--classes, where a tool has it, chooses classes; it never names
    YOLO ids)."""
    flags.DEFINE_string("class_names", None,
                        "YOLO only: comma-separated names of class ids 0, 1, ... . "
                        "Default: `names` of data.yaml or the lines of classes.txt, "
                        "looked for in the labels folder, its parent and the dataset "
                        "root (DATA/labels/train -> DATA); this flag overrides such a "
                        "file (a warning names it).")
