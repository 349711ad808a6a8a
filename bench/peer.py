"""Ours against the peer (torchvision Faster R-CNN, ResNet-101 FPN) in one run: ratios.

    python bench/peer.py --peer_python /path/to/torch-venv/bin/python \
        --data_dir output/bccd/data --reference_dir output/bccd/references \
        --sides 512,1024

For each side S, in this order: the peer (../shared/bench/peer_torchvision_frcnn.py,
"calibrated" mode: batch 1, 6000 pre-NMS, 2000/1000 post-NMS proposals, 200 ROIs per
image, random weights), then ours: bench/train_step.py on res101_fewshot with ONE tower
of one image (the peer's batch), the same proposal counts, then bench/serving.py's
cached-prototype SavedModel latency. Each runs in its own process, one after the
other, so both see the same machine within minutes; the script prints ours / peer for
the training step and for inference.

The peer needs torch (`pip install torch==2.14.1 torchvision==0.29.1` in a venv of its
own, never a dependency of this package or of CI).
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPT = os.path.join(REPO, "..", "shared", "bench", "peer_torchvision_frcnn.py")


def _json_line(output, prefix=""):
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith(prefix + "{"):
            return json.loads(line[len(prefix):])
    raise RuntimeError(f"no JSON result in the output:\n{output[-2000:]}")


def _run(command):
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command[1]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def peer(python, side):
    out = _run([python, PEER_SCRIPT, "--size", str(side), "--mode", "calibrated"])
    return _json_line(out, "RESULT ")


def ours_train(side, args):
    sets = [f"--set=TARGET_SIDE={side}", '--set=GPU_GROUPS=["/cpu:0"]',
            f"--set=NUM_CLASS={args.num_class}"]
    out = _run([sys.executable, os.path.join(REPO, "bench", "train_step.py"),
                "--cfg", args.cfg, "--data_dir", args.data_dir,
                "--reference_dir", args.reference_dir, "--steps", str(args.steps),
                "--warmup", str(args.warmup), "--json", *sets])
    return _json_line(out)


def ours_serving(side, args):
    out = _run([sys.executable, os.path.join(REPO, "bench", "serving.py"),
                "--cfg", args.cfg, f"--set=TARGET_SIDE={side}",
                "--classes", str(args.num_class - 1), "--images", "5", "--warmup", "1",
                "--image_dir", args.image_dir, "--json"])
    return _json_line(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer_python", required=True)
    parser.add_argument("--cfg", default=os.path.join(REPO, "cfgs", "res101_fewshot.py"))
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--reference_dir", required=True)
    parser.add_argument("--image_dir", default=os.path.join(REPO, "..", "shared", "datasets",
                                                            "bccd", "JPEGImages"))
    parser.add_argument("--num_class", type=int, default=4)
    parser.add_argument("--sides", default="512,1024")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for side in [int(s) for s in args.sides.split(",")]:
        theirs = peer(args.peer_python, side)
        train = ours_train(side, args)
        serve = ours_serving(side, args)
        row = {
            "side": side,
            "peer_train_s": theirs["train_step_s"]["median"],
            "peer_infer_s": theirs["infer_s"]["median"],
            "peer_train_proposals": theirs.get("train_rpn_proposals"),
            "ours_train_s": train["median_s_per_step"],
            "ours_train_proposals": train["proposals_per_step"],
            "ours_infer_s": serve["cached_s_per_image"],
            "ours_breakdown": train.get("op_seconds_per_block"),
            "peer_rss_gib": theirs.get("rss_peak_after_train_MiB", 0) / 1024,
            "ours_rss_gib": train["peak_rss_gib"],
        }
        row["train_ratio"] = row["ours_train_s"] / row["peer_train_s"]
        row["infer_ratio"] = row["ours_infer_s"] / row["peer_infer_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\nside | train s/step ours / peer = ratio | inference s/image ours / peer = ratio")
    for row in rows:
        print(f"{row['side']:5d} | {row['ours_train_s']:.2f} / {row['peer_train_s']:.2f} = "
              f"{row['train_ratio']:.2f} | {row['ours_infer_s']:.2f} / "
              f"{row['peer_infer_s']:.2f} = {row['infer_ratio']:.2f}")


if __name__ == "__main__":
    main()
