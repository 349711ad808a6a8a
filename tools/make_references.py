"""Crops reference images (few-shot supports) per class from VOC, COCO or YOLO annotations.

    python tools/make_references.py --format voc --image_dir VOC/JPEGImages \
        --annotations VOC/Annotations --split_file VOC/ImageSets/Main/train.txt \
        --output_dir output/references --per_class 5

Writes OUTPUT_DIR/<class name>/<image>_<k>.png and OUTPUT_DIR/references.json (what was
cropped from where). Crop from the training split only, so evaluation images never leak
into the prototypes. The choice is deterministic; the rule is in
data/io/reference_set.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from data.io import annotation_flags, convert, reference_set  # noqa: E402
from libs.base import cli  # noqa: E402
from libs.base.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    annotation_flags.define("Optional list of image ids to crop from.")
    annotation_flags.define_yolo_names()
    flags.DEFINE_string("output_dir", None, "The reference dir: one folder per class.")
    flags.DEFINE_integer("per_class", None, "References to crop per class.")
    flags.DEFINE_float("margin", 0.1, "Context added on each side of a box, as a "
                       "fraction of its height/width.")
    flags.DEFINE_integer("min_size", 8, "Objects smaller than this (pixels, height or "
                         "width) are not used.")
    flags.DEFINE_string("classes", None, "Comma-separated classes to crop (default: all "
                        "classes in the annotations). YOLO's class ids are named by "
                        "--class_names or data.yaml / classes.txt, not by this flag.")


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    for name in ("format", "image_dir", "annotations", "output_dir", "per_class"):
        if FLAGS[name].value is None or FLAGS[name].value == "":
            print(f"error: --{name} is required", file=sys.stderr)
            return 2
    try:
        images, names = convert.read_annotations(
            FLAGS.format, FLAGS.image_dir, FLAGS.annotations, FLAGS.split_file,
            class_names=convert.parse_classes(FLAGS.class_names))
        summary = reference_set.crop_references(
            images, FLAGS.output_dir, FLAGS.per_class, margin=FLAGS.margin,
            min_size=FLAGS.min_size, classes=convert.parse_classes(FLAGS.classes) or names)
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(summary['files'])} references to {FLAGS.output_dir}: "
          + ", ".join(f"{name} {count}" for name, count in summary["classes"].items()))
    return 0


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
