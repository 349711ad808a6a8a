"""Evaluates a trained Comparison Detector on a TFRecord split.

    python tools/eval.py --cfg cfgs/tiny_cpu.py                 # latest checkpoint
    python tools/eval.py --cfg cfgs/tiny_cpu.py --checkpoint output/tiny_cpu/model.ckpt-960

    python tools/eval.py --cfg cfgs/deeppcb_cpu.py --novel_classes short,spur,pin-hole
    python tools/eval.py --cfg cfgs/bccd_cpu.py --test_flips horizontal,vertical

Prints a per-class table (VOC AP@0.5) and the COCO figures (pycocotools: mAP@[.5:.95],
AP50, AP75, AR@100), and writes the JSON report `<checkpoint>.eval_<split>.json` beside
the checkpoint (or --report). The same metrics appear in TensorBoard under `eval_<split>/`.
--novel_classes adds the few-shot protocol's bAP50 (mean AP@0.5 over the other,
base classes) and nAP50 (over the listed classes) to the table and to the report
(results "voc/bAP@0.5" and "voc/nAP@0.5"; libs/evaluation/base_novel.py).
--test_flips merges the head's outputs over mirrored views of each image
(libs/flip_merging.py, TEST_FLIPS); its report is `<checkpoint>.eval_<split>_flips.json`.

Beside the JSON it writes an HTML report to look at (--nohtml skips it), the folder
`<report without .json>_html/` (index.html: the run, the per-class table,
precision-recall curves, the confusion matrix with "missed" and "background", AP by
object size and the images with the most errors drawn; libs/evaluation/eval_report.py), and the
per-class precision-recall curves go to TensorBoard's PR curve plugin under
eval_<split>/.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from libs.base import cli  # noqa: E402
from libs.configs import load_config_from_flags  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("cfg", None, "Config file, e.g. cfgs/tiny_cpu.py.")
    flags.DEFINE_string("data_dir", None, "TFRecords + label_map.json (default: DATA_DIR).")
    flags.DEFINE_string("reference_dir", None, "Reference set (default: REFERENCE_DIR).")
    flags.DEFINE_string("model_dir", None, "Run directory (default: MODEL_DIR).")
    flags.DEFINE_string("checkpoint", None, "A checkpoint prefix (default: the latest "
                        "in the run directory).")
    flags.DEFINE_string("split", None, "Split to evaluate (default: EVAL_SPLIT).")
    flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE.")
    flags.DEFINE_string("novel_classes", None, "Comma-separated novel classes: also "
                        "report bAP50 (the other classes) and nAP50 (these).")
    flags.DEFINE_list("test_flips", None, "Test-time flip merging: horizontal, "
                      "vertical or both, comma-separated (sets TEST_FLIPS).")
    flags.DEFINE_string("report", None, "Where the JSON report goes (default: "
                        "<checkpoint>.eval_<split>.json beside the checkpoint).")
    flags.DEFINE_bool("html", True, "Also write the HTML report folder beside the JSON "
                      "(<report>_html/index.html).")


def main(argv):
    error = cli.usage_error(argv, FLAGS.cfg)
    if error is not None:
        return error
    return cli.guarded(_evaluate)


def _evaluate():
    # Here, not at the top: these import TensorFlow (seconds), which must come after
    # the flags are parsed and --verbose has set the console (libs/base/console.py).
    from data.io import convert
    from data.io.dataset import open_run
    from libs.base.io_utils import atomic_write
    from libs.evaluation import base_novel, eval_report, metrics, table
    from libs.train import training
    overrides = list(FLAGS.set)
    if FLAGS.test_flips:
        overrides.append(f"TEST_FLIPS={tuple(FLAGS.test_flips)!r}")
    run = open_run(load_config_from_flags(FLAGS.cfg, overrides), FLAGS.data_dir,
                   FLAGS.reference_dir, FLAGS.model_dir, inference=True)
    cfg = run.cfg                   # with the dataset's values (libs/train/runs.py)
    novel = convert.parse_classes(FLAGS.novel_classes)
    class_split = {}
    if novel:
        # Checked before the evaluation, which takes minutes, not after it.
        base, novel = base_novel.split_base_novel(run.class_names, novel)
        class_split = {"base_classes": base, "novel_classes": novel}
    split = FLAGS.split or cfg.EVAL_SPLIT
    sink = metrics.EvaluationSink()
    results, checkpoint = training.evaluate(run, FLAGS.checkpoint, split, sink=sink)
    step = results.get("global_step")
    eval_dir = os.path.join(run.model_dir, f"eval_{training.eval_name(cfg, split)}")
    eval_report.write_pr_curves(eval_dir, sink.evaluator, run.class_names, step)
    if novel:
        results.update(base_novel.base_novel_ap(results, run.class_names, novel))
    flips = f", test-time flips {'+'.join(cfg.TEST_FLIPS)}" if cfg.TEST_FLIPS else ""
    print(f"checkpoint {checkpoint} (step {results.get('global_step')}), split {split}"
          f"{flips}")
    print(table.format_table(results, run.class_names, novel_classes=novel))
    report = FLAGS.report or f"{checkpoint}.eval_{training.eval_name(cfg, split)}.json"
    with atomic_write(report, "w") as handle:
        json.dump({"checkpoint": checkpoint, "split": split, "config": cfg.NAME,
                   "test_flips": list(cfg.TEST_FLIPS), "results": results, **class_split},
                  handle, indent=2, sort_keys=True, default=float)
        handle.write("\n")
    print(f"report: {report}")
    if FLAGS.html:
        page = eval_report.write_html_report(os.path.splitext(report)[0] + "_html",
                                             sink.evaluator, results, run, split,
                                             checkpoint, step)
        print(f"html report: {page}")


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
