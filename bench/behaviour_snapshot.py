"""What the code computes, recorded through the command lines only, to compare commits.

    python bench/behaviour_snapshot.py --out /tmp/before.json      # on the old commit
    python bench/behaviour_snapshot.py --out /tmp/after.json       # on the new one
    python bench/behaviour_snapshot.py --compare /tmp/before.json /tmp/after.json

A redesign that promises "behaviour unchanged" (issue 30) shows it with this: each run
generates the sample data, converts it, crops references, trains a config for a fixed
number of steps with a fixed seed and a summary at every step, evaluates it on val,
exports a SavedModel and runs tools/predict.py with it on the val images. The snapshot
holds every logged loss at every step, the evaluation's metrics and every detection
(box, class, score) of the SavedModel. Only the tools' flags and files are used, never
library code, so the same script runs on both sides of a refactor.

--compare prints, per run, the largest difference of each kind and exits 1 when one is
over the tolerance (--rtol on losses and metrics, --atol in pixels / score units on
detections); equal class ids and detection counts are required.
"""
import argparse
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")     # the SavedModel loader's C++ notes

from bench.common import REPO, read_json, run_tool, write_json  # noqa: E402

# name -> (config, --set overrides, needs the packaged ImageNet weights imported)
RUNS = {
    "tiny_cpu": ("cfgs/tiny_cpu.py", [], False),
    "tiny_cpu_fc": ("cfgs/tiny_cpu.py", ["CLASSIFIER='fc'"], False),
    "tiny_fewshot": ("cfgs/tiny_fewshot.py", [], True),
}


def _scalars(model_dir):
    """{step: {tag: value}} of the training events in model_dir (not the eval dirs)."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.tf_compat import tf
    found = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                # speeds (global_step/sec) are the machine's, not the code's
                if value.HasField("simple_value") and not value.tag.endswith("/sec"):
                    found.setdefault(str(event.step), {})[value.tag] = value.simple_value
    return found


def snapshot_run(name, work, steps):
    cfg, overrides, pretrained = RUNS[name]
    sample = os.path.join(work, "sample")
    data, references = os.path.join(work, "data"), os.path.join(work, "references")
    if not os.path.isdir(data):
        import subprocess
        subprocess.run([sys.executable, "-m", "data.sample.generate", "--out_dir", sample],
                       check=True, cwd=REPO, capture_output=True)
        voc = ["--format", "voc", "--image_dir", f"{sample}/JPEGImages", "--annotations",
               f"{sample}/Annotations"]
        for split in ("train", "val"):
            run_tool("convert_to_tfrecord.py", *voc, "--split_file",
                     f"{sample}/ImageSets/Main/{split}.txt", "--output_dir", data)
        run_tool("make_references.py", *voc, "--split_file",
                 f"{sample}/ImageSets/Main/train.txt", "--output_dir", references,
                 "--per_class", "3")
    if pretrained:
        run_tool("import_backbone.py", "--name", "efficientnet_lite0", "--output_dir",
                 os.path.join(work, "lite0"))
        overrides = overrides + [f"BACKBONE_CHECKPOINT={os.path.join(work, 'lite0')!r}"]
    model_dir = os.path.join(work, name)
    sets = [f"--set={item}" for item in overrides + ["SAVE_SUMMARY_STEPS=1", "SEED=0"]]
    common = ["--cfg", cfg, "--data_dir", data, "--reference_dir", references,
              "--model_dir", model_dir, *sets]
    run_tool("train.py", *common, "--max_steps", str(steps))
    report = os.path.join(work, f"{name}_eval.json")
    run_tool("eval.py", *common, "--report", report, "--nohtml")
    export_dir = os.path.join(work, f"{name}_export")
    run_tool("export_savedmodel.py", *common, "--export_dir", export_dir)
    with open(os.path.join(sample, "ImageSets", "Main", "val.txt")) as handle:
        stems = [line.strip() for line in handle if line.strip()]
    evaluation = read_json(report)
    return {"losses": _scalars(model_dir),
            "metrics": {k: v for k, v in evaluation["results"].items()
                        if isinstance(v, (int, float)) and v == v},     # NaN: undefined
            "detections": _served(export_dir, [
                os.path.join(sample, "JPEGImages", f"{stem}.jpg") for stem in stems]),
            "export_dir": export_dir}


def _served(export_dir, paths):
    """{image: [{"box", "class_id", "score"}]}: the SavedModel's own outputs, unrounded
    (loaded with plain TensorFlow: no project code between the model and the figures)."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.tf_compat import tf
    found = {}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        model = tf.compat.v1.saved_model.load(session, ["serve"], export_dir)
        signature = model.signature_def["serving_default"]
        images = signature.inputs["images"].name
        outputs = {key: value.name for key, value in signature.outputs.items()}
        for path in paths:
            with open(path, "rb") as handle:
                out = session.run(outputs, {images: [handle.read()]})
            count = int(out["num_detections"][0])
            found[os.path.basename(path)] = [
                {"box": [float(v) for v in out["predict_bbox"][0][k]],
                 "class_id": int(out["predict_class_id"][0][k]),
                 "score": float(out["predict_scores"][0][k])} for k in range(count)]
    return found


def _relative(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare(before, after, rtol, atol):
    """Prints the largest differences per run; returns the number over tolerance."""
    problems = 0
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            print(f"{name}: only in one snapshot")
            problems += 1
            continue
        old, new = before[name], after[name]
        loss_steps = sorted(set(old["losses"]) | set(new["losses"]), key=int)
        worst_loss, where = 0.0, None
        for step in loss_steps:
            a, b = old["losses"].get(step, {}), new["losses"].get(step, {})
            if set(a) != set(b):
                print(f"{name}: step {step} logs {sorted(set(a) ^ set(b))} on one side")
                problems += 1
            for tag in set(a) & set(b):
                diff = _relative(a[tag], b[tag])
                if diff > worst_loss:
                    worst_loss, where = diff, (step, tag)
        worst_metric = max((_relative(old["metrics"][k], new["metrics"][k])
                            for k in old["metrics"] if k in new["metrics"]), default=0.0)
        worst_box = worst_score = 0.0
        for image in sorted(set(old["detections"]) | set(new["detections"])):
            a = old["detections"].get(image, [])
            b = new["detections"].get(image, [])
            if len(a) != len(b) or [d["class_id"] for d in a] != [d["class_id"] for d in b]:
                print(f"{name}: {image}: {len(a)} vs {len(b)} detections or other classes")
                problems += 1
                continue
            for x, y in zip(a, b):
                worst_box = max([worst_box] + [abs(p - q) for p, q in zip(x["box"], y["box"])])
                worst_score = max(worst_score, abs(x["score"] - y["score"]))
        steps = len(loss_steps)
        print(f"{name}: {steps} steps of losses, largest relative difference "
              f"{worst_loss:.2e}{f' (step {where[0]}, {where[1]})' if where else ''}; "
              f"metrics {worst_metric:.2e}; detections: boxes {worst_box:.2e} px, "
              f"scores {worst_score:.2e}")
        problems += (worst_loss > rtol) + (worst_metric > rtol) + (worst_box > atol) + \
            (worst_score > atol)
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="Where the snapshot JSON goes.")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"Comma-separated runs of {', '.join(RUNS)}.")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--work_dir", default=None,
                        help="Where the runs' files go (default: a temporary folder).")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-3)
    args = parser.parse_args()
    if args.compare:
        before, after = (read_json(path) for path in args.compare)
        return 1 if compare(before, after, args.rtol, args.atol) else 0
    if not args.out:
        parser.error("--out is required (or --compare BEFORE AFTER)")
    work = args.work_dir or tempfile.mkdtemp(prefix="behaviour_")
    snapshot = {}
    for name in args.runs.split(","):
        print(f"{name}: training {args.steps} steps, evaluating, exporting, predicting",
              flush=True)
        snapshot[name] = snapshot_run(name, work, args.steps)
    write_json(args.out, snapshot)
    print(f"snapshot of {len(snapshot)} run(s) -> {args.out} (files in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
