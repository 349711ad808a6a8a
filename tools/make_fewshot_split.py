"""Writes the data of the base/novel few-shot protocol: a K-shot set, or base-training data.

    # K instances of every class (base and novel), drawn with a seed
    python tools/make_fewshot_split.py --format voc --image_dir D/JPEGImages \
        --annotations D/Annotations --split_file D/ImageSets/Main/train.txt \
        --novel_classes short,spur,pin-hole --shots 5 --seed 0 \
        --val_split_file D/ImageSets/Main/val.txt --output_dir output/deeppcb_fs/5shot_seed0
    # base-training data: every train image, the novel classes' boxes removed
    python tools/make_fewshot_split.py --format voc --image_dir D/JPEGImages \
        --annotations D/Annotations --split_file D/ImageSets/Main/train.txt \
        --novel_classes short,spur,pin-hole --base_only \
        --val_split_file D/ImageSets/Main/val.txt --output_dir output/deeppcb_fs/base

A K-shot run writes OUT/data (the set as split "train", label_map.json listing every
class), OUT/references (one folder per class: crops of exactly the drawn instances) and
OUT/kshot.json (the seed, K and every drawn image and box, to reproduce or inspect the
set). For each class, images holding it are drawn in a seeded order until K instances
are reached, keeping only that class's boxes; an image that would overshoot K is passed
over, difficult objects are not shots, and the 1-, 3-, 5-, 10-shot sets of one seed are
nested. A class that cannot reach exactly K gets a warning naming it and the count
taken. The full rule: data/io/fewshot.py. --base_only writes OUT/data with the novel
classes' boxes removed (images left without objects are skipped and counted) and a
label map of the base classes only, and OUT/base.json.

Class ids: the K-shot label map lists all classes in the order of --classes, else of
--label_map (e.g. an existing data dir's, so that ids agree with it), else sorted; the
base label map is the same order without the novel classes. --val_split_file converts
that split into OUT/data as "val" with the same label map (base mode: novel boxes
removed), so OUT/data is ready for tools/train.py and tools/eval.py --novel_classes.
Base-class references for a comparison model: tools/make_references.py --classes.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from data.io import annotation_flags, convert, fewshot  # noqa: E402
from libs.base import cli  # noqa: E402
from libs.base.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    annotation_flags.define("Optional list of image ids to draw from (the train "
                                "split), e.g. ImageSets/Main/train.txt.")
    annotation_flags.define_yolo_names()
    flags.DEFINE_string("output_dir", None, "Where data/, references/ and kshot.json "
                        "(or base.json) go.")
    flags.DEFINE_string("novel_classes", None, "Comma-separated novel classes. Required "
                        "with --base_only; recorded in kshot.json otherwise.")
    flags.DEFINE_integer("shots", None, "K: instances per class in the K-shot set.")
    flags.DEFINE_integer("seed", 0, "Seed of the draw (same seed, same set).")
    flags.DEFINE_bool("base_only", False, "Write base-training data (novel boxes "
                      "removed) instead of a K-shot set.")
    flags.DEFINE_string("classes", None, "Comma-separated class names of the label map "
                        "in id order (all classes, base and novel).")
    flags.DEFINE_string("label_map", None, "Take the class order from this label map "
                        "(file or data dir) instead of --classes.")
    flags.DEFINE_string("val_split_file", None, "Also convert this split into "
                        "OUT/data as split 'val', with the same label map.")
    flags.DEFINE_bool("others_as_ignore", False, "Keep the drawn images' other objects "
                      "(other classes, instances beyond K) as ignore regions instead of "
                      "background.")
    flags.DEFINE_float("margin", 0.1, "Context added on each side of a reference crop, "
                       "as a fraction of the box height/width.")


def _usage_error(argv):
    if len(argv) > 1:
        return f"unexpected arguments {' '.join(argv[1:])}"
    for name in ("format", "image_dir", "annotations", "output_dir"):
        if not FLAGS[name].value:
            return f"--{name} is required"
    if FLAGS.base_only:
        if FLAGS.shots is not None:
            return "--shots does not apply to --base_only (base data keeps every image)"
        if not convert.parse_classes(FLAGS.novel_classes):
            return "--novel_classes is required with --base_only"
    elif FLAGS.shots is None:
        return "--shots is required (or --base_only for base-training data)"
    return None


def main(argv):
    problem = _usage_error(argv)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    common = dict(split_file=FLAGS.split_file, classes=convert.parse_classes(FLAGS.classes),
                  label_map=FLAGS.label_map, val_split_file=FLAGS.val_split_file,
                  yolo_names=convert.parse_classes(FLAGS.class_names))
    novel = convert.parse_classes(FLAGS.novel_classes)
    try:
        if FLAGS.base_only:
            manifest = fewshot.make_base_split(FLAGS.format, FLAGS.image_dir,
                                               FLAGS.annotations, FLAGS.output_dir, novel,
                                               **common)
        else:
            manifest = fewshot.make_kshot_split(FLAGS.format, FLAGS.image_dir,
                                                FLAGS.annotations, FLAGS.output_dir,
                                                FLAGS.shots, FLAGS.seed,
                                                novel_classes=novel, margin=FLAGS.margin,
                                                others_as_ignore=FLAGS.others_as_ignore,
                                                **common)
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(fewshot.format_manifest(manifest))
    print(f"written to {FLAGS.output_dir}")
    return 0


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
