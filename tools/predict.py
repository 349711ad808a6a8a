"""Detects objects in images with an exported SavedModel or a training checkpoint.

    python tools/predict.py --saved_model output/tiny_cpu/export \
        --images output/sample/voc/JPEGImages --output_dir output/predictions
    python tools/predict.py --cfg cfgs/tiny_cpu.py --images some.jpg   # latest checkpoint

Writes each image with its boxes, class names and scores drawn to --output_dir, and
<output_dir>/detections.json with every detection in original pixels. --images takes
files and folders (repeat the flag). An unreadable image is reported and skipped; the
others go on. --min_score filters what is drawn and listed (the model itself returns
detections above DETECTION_MIN_CONFIDENCE). --label_studio also writes them as
Label Studio pre-annotations (label_studio.json) for a reviewer to correct.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from libs.base import cli  # noqa: E402
from libs.configs import load_config_from_flags  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("saved_model", None, "An exported SavedModel folder "
                        "(tools/export_savedmodel.py).")
    flags.DEFINE_string("cfg", None, "Instead of --saved_model: a config, whose run "
                        "directory's latest checkpoint (or --checkpoint) is used.")
    flags.DEFINE_string("checkpoint", None, "With --cfg: a checkpoint prefix.")
    flags.DEFINE_string("model_dir", None, "With --cfg: the run directory.")
    flags.DEFINE_string("data_dir", None, "With --cfg: folder of label_map.json.")
    flags.DEFINE_string("reference_dir", None, "With --cfg: the reference set.")
    flags.DEFINE_multi_string("set", [], "With --cfg: config override FIELD=VALUE.")
    flags.DEFINE_multi_string("images", [], "An image file or a folder of images "
                              "(repeatable).")
    flags.DEFINE_string("output_dir", "output/predictions", "Where drawn images and "
                        "detections.json go.")
    flags.DEFINE_float("min_score", 0.0, "Keep detections with at least this score.")
    flags.DEFINE_bool("draw", True, "Write the images with boxes drawn "
                      "(--nodraw: detections.json only).")
    flags.DEFINE_bool("label_studio", False, "Also write <output_dir>/label_studio.json: "
                      "the detections as Label Studio pre-annotations (model-assisted "
                      "labelling).")
    flags.DEFINE_string("image_url_prefix", "", "With --label_studio: prefix of each "
                        "task's image (+ its file name), e.g. "
                        "/data/local-files/?d=JPEGImages/")


def main(argv):
    import sys as _sys
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}", file=_sys.stderr)
        return 2
    if bool(FLAGS.saved_model) == bool(FLAGS.cfg):
        print("error: give exactly one model: --saved_model DIR or --cfg FILE",
              file=_sys.stderr)
        return 2
    if not FLAGS.images:
        print("error: --images is required (a file or a folder)", file=_sys.stderr)
        return 2
    return cli.guarded(_predict)


def _load_detector():
    # Here, not at the top: these import TensorFlow (seconds), which must come after
    # the flags are parsed and --verbose has set the console (libs/base/console.py).
    from data.io.dataset import open_run
    from libs.serving import export
    from libs.train import runs
    if FLAGS.saved_model:
        version = os.path.basename(os.path.normpath(FLAGS.saved_model))
        return export.Detector.from_saved_model(FLAGS.saved_model), version
    cfg = load_config_from_flags(FLAGS.cfg, FLAGS.set)
    run = open_run(cfg, FLAGS.data_dir, FLAGS.reference_dir, FLAGS.model_dir,
                   inference=True, classes_from_references=True)
    checkpoint = runs.resolve_checkpoint(run.model_dir, FLAGS.checkpoint)
    version = (f"{os.path.basename(os.path.normpath(run.model_dir))}@"
               f"{os.path.basename(checkpoint)}")
    return export.Detector.from_checkpoint(run, checkpoint), version


def _predict():
    from libs.serving import prediction  # TensorFlow too: see _load_detector
    from data.io import pre_annotations
    detector, version = _load_detector()
    with detector:
        summary = prediction.predict_files(detector, FLAGS.images, FLAGS.output_dir,
                                           min_score=FLAGS.min_score, draw=FLAGS.draw)
    found = sum(len(image["detections"]) for image in summary["images"])
    print(f"{len(summary['images'])} image(s), {found} detection(s), "
          f"{len(summary['skipped'])} skipped; results in {FLAGS.output_dir}/"
          f"{prediction.DETECTIONS_FILE}")
    if FLAGS.label_studio:
        # Folders are not walked into: a task's image is its file name.
        boxes = [pre_annotations.Box(
            os.path.basename(image["file"]), image["width"], image["height"], row["class"],
            row["score"], tuple(row["box"][k] for k in ("ymin", "xmin", "ymax", "xmax")),
            None) for image in summary["images"] for row in image["detections"]]
        path = os.path.join(FLAGS.output_dir, "label_studio.json")
        pre_annotations.write_label_studio(pre_annotations.label_studio_tasks(
            boxes, version, FLAGS.image_url_prefix), path)
        print(f"pre-annotations for Label Studio: {path}")
    for skipped in summary["skipped"]:
        print(f"skipped {skipped['file']}: {skipped['reason']}")


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
