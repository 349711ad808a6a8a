"""Converts Pascal-VOC, COCO or YOLO annotations into sharded TFRecords + label_map.json.

    python tools/convert_to_tfrecord.py --format voc --image_dir VOC/JPEGImages \
        --annotations VOC/Annotations --split_file VOC/ImageSets/Main/train.txt \
        --output_dir output/data
    python tools/convert_to_tfrecord.py --format yolo --image_dir DATA/images/train \
        --annotations DATA/labels/train --split train --output_dir output/data
    python tools/convert_to_tfrecord.py --format coco --image_dir coco/val2017 \
        --annotations coco/annotations/instances_val2017.json --split val \
        --output_dir output/data

Converting train and then val into the same --output_dir keeps one label map: its ids
are reused and classes it does not know are dropped (and reported) unless listed in
--classes. YOLO's numeric class ids are named by data.yaml / classes.txt in the
dataset root, or by --class_names (which overrides them). Every skipped image, dropped
or clipped box is reported on one warning line; the summary at the end counts each
rule (see data/io/convert.py; the rules: data/io/annotation.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402

# No TensorFlow import until records are written.
from data.io import annotation_flags, convert, formats  # noqa: E402
from libs.base import cli  # noqa: E402
from libs.base.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    entries = "; ".join(f"{f.label}: {f.split_entries}" for f in formats.registered())
    annotation_flags.define(f"Optional list of image ids ({entries}), one per line, "
                                f"e.g. ImageSets/Main/train.txt.")
    annotation_flags.define_yolo_names()
    flags.DEFINE_string("split", None, "Split name, the prefix of the shard files "
                        "(default: the split file's base name, else 'train').")
    flags.DEFINE_string("output_dir", None, "Where the .tfrecord shards and "
                        "label_map.json go.")
    flags.DEFINE_string("classes", None,
                        "Comma-separated class names of the label map in id order "
                        "(1, 2, ...); boxes of other classes are dropped (with an "
                        "existing label map: its ids are kept and listed classes it lacks "
                        "appended). Default: the existing label map's ids, else the "
                        "sorted names found. YOLO's class ids 0, 1, ... are named by "
                        "--class_names or data.yaml / classes.txt, not by this flag.")
    flags.DEFINE_integer("num_shards", 1, "Number of .tfrecord files for this split.")
    flags.DEFINE_bool("difficult_as_ignore", False,
                      "VOC difficult objects become ignore regions (no anchor or ROI "
                      "overlapping one trains as background or object) instead of "
                      "training as objects. COCO crowds and VOC <ignore>1</ignore> "
                      "objects always are.")


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    for name in ("format", "image_dir", "annotations", "output_dir"):
        if not FLAGS[name].value:
            print(f"error: --{name} is required", file=sys.stderr)
            return 2
    try:
        convert.check_inputs(FLAGS.format, FLAGS.image_dir, FLAGS.annotations,
                             FLAGS.split_file)
        summary = convert.convert_dataset(
            FLAGS.format, FLAGS.image_dir, FLAGS.annotations, FLAGS.output_dir,
            split_file=FLAGS.split_file, split=FLAGS.split,
            classes=convert.parse_classes(FLAGS.classes), num_shards=FLAGS.num_shards,
            class_names=convert.parse_classes(FLAGS.class_names),
            difficult_as_ignore=FLAGS.difficult_as_ignore)
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.info("done: %d images, %d objects -> %s", summary["images_written"],
                 summary["objects_written"], FLAGS.output_dir)
    return 0


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
