"""Exports a trained Comparison Detector as a SavedModel for serving.

    python tools/export_savedmodel.py --cfg cfgs/tiny_cpu.py
    python tools/export_savedmodel.py --cfg cfgs/tiny_cpu.py --checkpoint P \
        --reference_dir other_references --export_dir output/tiny_cpu/export_other

The model's "serving_default" signature takes a batch of encoded images (JPEG, PNG,
GIF or BMP bytes, any size) and returns num_detections, predict_bbox (original image
pixels, [y1, x1, y2, x2]), predict_class_id, predict_class_name and predict_scores
(see libs/serving/export.py). The reference prototypes are computed once, here, from the
checkpoint and the reference folder, and stored in the model: serving needs no
reference images. Pass another --reference_dir (same classes) to export the same
checkpoint with a new reference set, without retraining.

    saved_model_cli show --all --dir output/tiny_cpu/export
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from libs.base import cli  # noqa: E402
from libs.configs import load_config_from_flags  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("cfg", None, "Config file, e.g. cfgs/tiny_cpu.py.")
    flags.DEFINE_string("data_dir", None, "Folder of label_map.json, for the class names "
                        "(default: DATA_DIR).")
    flags.DEFINE_string("reference_dir", None, "Reference set the prototypes are computed "
                        "from (default: REFERENCE_DIR).")
    flags.DEFINE_string("model_dir", None, "Run directory (default: MODEL_DIR).")
    flags.DEFINE_string("checkpoint", None, "A checkpoint prefix (default: the latest "
                        "in the run directory).")
    flags.DEFINE_string("export_dir", None, "Where the SavedModel goes "
                        "(default: <model_dir>/export).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --export_dir.")
    flags.DEFINE_bool("cache_prototypes", True, "Store the prototypes in the model; "
                      "--nocache_prototypes stores the reference images instead and "
                      "reruns the reference branch at every call (the notebook's way).")
    flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE.")


def main(argv):
    error = cli.usage_error(argv, FLAGS.cfg)
    if error is not None:
        return error
    return cli.guarded(_export)


def _export():
    # Here, not at the top: these import TensorFlow (seconds), which must come after
    # the flags are parsed and --verbose has set the console (libs/base/console.py).
    from data.io.dataset import open_run
    from libs.serving import export
    from libs.train import runs
    cfg = load_config_from_flags(FLAGS.cfg, FLAGS.set)
    run = open_run(cfg, FLAGS.data_dir, FLAGS.reference_dir, FLAGS.model_dir,
                   inference=True, classes_from_references=True)
    checkpoint = runs.resolve_checkpoint(run.model_dir, FLAGS.checkpoint)
    export_dir = FLAGS.export_dir or os.path.join(run.model_dir, "export")
    info = export.export_saved_model(run, checkpoint, export_dir, overwrite=FLAGS.overwrite,
                                     cache_prototypes=FLAGS.cache_prototypes)
    print(f"exported {checkpoint} (step {info['global_step']}) to {export_dir}")
    print(f"classes: {', '.join(info['class_names'])}; prototypes: {info['prototypes']}"
          + (f" from {info['reference_dir']}" if info["reference_dir"] else ""))
    print(f"inspect: saved_model_cli show --all --dir {export_dir}")


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
