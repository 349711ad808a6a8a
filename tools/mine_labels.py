"""Finds a new class's unlabelled objects in labelled images: candidates to review.

    python tools/mine_labels.py --cfg cfgs/deeppcb_cpu.py --model_dir output/base \
        --reference_dir output/references_with_new --new_classes short,spur \
        --format voc --image_dir VOC/JPEGImages --annotations VOC/Annotations \
        --split_file VOC/ImageSets/Main/train.txt --output_dir output/mined

The model (a checkpoint of --model_dir, or --checkpoint) runs with the reference set's
classes, the new ones among them (K crops each: tools/make_references.py or
make_fewshot_split.py). Each detection of a new class that is not on a labelled object
is a candidate, verified by its nearest crops in the ImageNet backbone's feature space
(references, base-class objects, background; libs/mining/verify.py): accepted (a new
label), doubtful (an ignore region: trains neither as the class nor as background) or
rejected. Written to --output_dir: the annotations with the mined boxes, in the input's
format (annotations/ for VOC, annotations.json for COCO; the input is not modified),
label_studio.json (the candidates as pre-annotations for a reviewer),
candidates.json (every candidate, best first, with its decision and the counts) and
review/index.html (each class's references and its accepted, doubtful and rejected
candidates drawn: what to look at before trusting the labels).
Thresholds: the config's MINE_* fields (--set; --max_per_image sets MINE_MAX_PER_IMAGE).

After a review in Label Studio (label_studio.json imported, the boxes checked, the
project exported as JSON), the same input and the round's folder give the labels to
retrain on; no model is run:

    python tools/mine_labels.py --reviewed export.json --mined_dir output/mined \
        --format voc --image_dir VOC/JPEGImages --annotations VOC/Annotations \
        --split_file VOC/ImageSets/Main/train.txt --output_dir output/reviewed

On each reviewed image the reviewer's boxes of the new classes replace the round's
(a deleted candidate becomes background); the other images keep the round's accepted
boxes and ignore regions (data/io/mining/review_import.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from data.io import annotation_flags
from libs.base import cli
from libs.configs import load_config_from_flags

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("cfg", None, "Config file of the model, e.g. cfgs/deeppcb_cpu.py.")
    flags.DEFINE_string("model_dir", None, "Run directory of the model (default: MODEL_DIR).")
    flags.DEFINE_string("checkpoint", None, "A checkpoint prefix (default: the latest).")
    flags.DEFINE_string("data_dir", None, "The model's data (label_map.json; default: "
                        "DATA_DIR).")
    flags.DEFINE_string("reference_dir", None, "Reference set of every class the model "
                        "should detect, the new ones included.")
    flags.DEFINE_string("new_classes", None, "Comma-separated classes to mine (classes of "
                        "the reference set).")
    annotation_flags.define("Optional list of the image ids to mine.")
    annotation_flags.define_yolo_names()
    flags.DEFINE_string("output_dir", None, "Where the mined annotations, "
                        "label_studio.json, candidates.json and review/ go.")
    flags.DEFINE_integer("max_per_image", None, "At most this many candidates per image "
                         "(sets MINE_MAX_PER_IMAGE).")
    flags.DEFINE_string("feature_checkpoint", None, "Weights of the verifier's feature "
                        "space (NET_NAME/*; default BACKBONE_CHECKPOINT, the ImageNet "
                        "import).")
    flags.DEFINE_string("image_url_prefix", "", "Label Studio: prefix of each task's "
                        "image (+ its file name), e.g. /data/local-files/?d=JPEGImages/")
    flags.DEFINE_string("reviewed", None, "Label Studio's JSON export of the round's "
                        "reviewed tasks: write the labels it gives instead of mining "
                        "(with --mined_dir; no --cfg).")
    flags.DEFINE_string("mined_dir", None, "With --reviewed: the mining round's "
                        "--output_dir (its candidates.json).")
    flags.DEFINE_bool("overwrite", False, "Replace the annotations of an earlier run.")
    flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE.")


def main(argv):
    if FLAGS.reviewed:
        return _main_reviewed(argv)
    error = cli.usage_error(argv, FLAGS.cfg) or _missing(
        ("new_classes", "format", "image_dir", "annotations", "output_dir"))
    return error if error is not None else cli.guarded(_mine)


def _missing(names, mode=""):
    """Exit code 2 with one line for the first required flag not given, else None."""
    for name in names:
        if not FLAGS[name].value:
            print(f"error: --{name} is required{mode}", file=sys.stderr)
            return 2
    return None


def _mine():
    # Here, not at the top: these import TensorFlow (seconds), which must come after
    # the flags are parsed and --verbose has set the console (libs/base/console.py).
    from data.io import convert
    from data.io.mining import candidates as mine
    from data.io.dataset import open_run
    from libs.train import runs
    overrides = list(FLAGS.set)
    if FLAGS.max_per_image is not None:
        overrides.append(f"MINE_MAX_PER_IMAGE={FLAGS.max_per_image}")
    cfg = load_config_from_flags(FLAGS.cfg, overrides)
    # Every detection down to the candidates' threshold, each class an ROI might be.
    cfg = cfg.replace(DETECTION_MIN_CONFIDENCE=cfg.MINE_MIN_SCORE, DETECTION_CLASSES="every")
    run = open_run(cfg, FLAGS.data_dir, FLAGS.reference_dir, FLAGS.model_dir,
                   inference=True, classes_from_references=True)
    checkpoint = runs.resolve_checkpoint(run.model_dir, FLAGS.checkpoint)
    result = mine.mine_to_folder(
        run, checkpoint, FLAGS.format, FLAGS.image_dir, FLAGS.annotations,
        convert.parse_classes(FLAGS.new_classes), FLAGS.output_dir,
        split_file=FLAGS.split_file, class_names=convert.parse_classes(FLAGS.class_names),
        feature_checkpoint=FLAGS.feature_checkpoint,
        image_url_prefix=FLAGS.image_url_prefix, overwrite=FLAGS.overwrite)
    for name, counts in result.counts.items():
        print(f"{name}: {counts['candidates']} candidates, {counts['accepted']} accepted, "
              f"{counts['doubtful']} doubtful (ignore regions), {counts['rejected']} "
              f"rejected")
    print(f"written to {FLAGS.output_dir}: the annotations, label_studio.json, "
          f"candidates.json (best first), review/index.html (drawn)")


def _main_reviewed(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    error = _missing(("mined_dir", "format", "image_dir", "annotations", "output_dir"),
                     " with --reviewed")
    return error if error is not None else cli.guarded(_apply_review)


def _apply_review():
    from data.io import convert
    from data.io.mining.review_import import apply_review
    counts = apply_review(
        FLAGS.format, FLAGS.image_dir, FLAGS.annotations, FLAGS.mined_dir, FLAGS.reviewed,
        FLAGS.output_dir, split_file=FLAGS.split_file,
        class_names=convert.parse_classes(FLAGS.class_names),
        image_url_prefix=FLAGS.image_url_prefix, overwrite=FLAGS.overwrite)
    print(f"{counts['reviewed_images']} reviewed images: {counts['reviewed_boxes']} boxes "
          f"as the reviewer left them; {counts['mined_boxes']} mined boxes kept on the "
          f"others; written to {FLAGS.output_dir}")


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
