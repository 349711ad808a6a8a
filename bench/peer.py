"""Ours against the peer (torchvision's Faster R-CNN) in one run: ratios.

    # the pretrained CPU configs against the mobile peer, natively and with AVX2 kernels
    python bench/peer.py --peer_python /path/to/torch-venv/bin/python \
        --backbone mobilenet_v3_large --cfgs cfgs/bccd_cpu.py,cfgs/deeppcb_cpu.py \
        --isas native,avx2
    # res101_fewshot against the ResNet-101 peer at two sides (docs/benchmarks.md)
    python bench/peer.py --peer_python /path/to/torch-venv/bin/python \
        --data_dir output/bccd/data --reference_dir output/bccd/references \
        --sides 512,1024

For each ISA, config and side, in this order: the peer
(../shared/bench/peer_torchvision_frcnn.py, "calibrated" mode: batch 1, random weights,
the config's own budgets: RPN pre-NMS top-n RPN_TOP_K_NMS, post-NMS proposals
RPN_PROPOSALS_TRAIN / RPN_PROPOSALS_INFERENCE, FAST_RCNN_MINIBATCH_SIZE ROIs per image,
DETECTION_MAX_INSTANCES detections), then ours: bench/train_step.py with ONE tower of
one image (the peer's batch), then bench/serving.py's cached-prototype SavedModel (the
run's trained checkpoint when MODEL_DIR has one, as a user serves it). Each runs in its
own process, one after the other, so both see the same machine within minutes; the
script prints ours / peer for the training step, inference and peak RSS, and the
proposals and ROIs that flowed through what was timed on both sides.

--isas avx2 runs every process with ONEDNN_MAX_CPU_ISA=AVX2 and
MKL_ENABLE_INSTRUCTIONS=AVX2 (oneDNN and MKL kernels of both frameworks limited to
AVX2: a CPU without AVX-512).

The peer needs torch (`pip install torch==2.14.1 torchvision==0.29.1` in a venv of its
own, never a dependency of this package or of CI).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PEER_SCRIPT = os.path.join(REPO, "..", "shared", "bench", "peer_torchvision_frcnn.py")
DATASETS = os.path.join(REPO, "..", "shared", "datasets")
ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2",
                                  "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def _json_line(output, prefix=""):
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith(prefix + "{"):
            return json.loads(line[len(prefix):])
    raise RuntimeError(f"no JSON result in the output:\n{output[-2000:]}")


def _run(command, isa):
    print(f"$ [{isa}] " + " ".join(command), file=sys.stderr, flush=True)
    env = dict(os.environ, **ISA_ENV[isa])
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{command[1]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def budgets(cfg):
    """The peer's --budgets for a config: PRE,POST_TRAIN,POST_TEST,ROIS,DETS."""
    return ",".join(str(v) for v in (cfg.RPN_TOP_K_NMS, cfg.RPN_PROPOSALS_TRAIN,
                                     cfg.RPN_PROPOSALS_INFERENCE,
                                     cfg.FAST_RCNN_MINIBATCH_SIZE,
                                     cfg.DETECTION_MAX_INSTANCES))


def peer(args, side, cfg, isa):
    out = _run([args.peer_python, PEER_SCRIPT, "--size", str(side), "--mode", "calibrated",
                "--backbone", args.backbone, "--budgets", budgets(cfg)], isa)
    return _json_line(out, "RESULT ")


def ours_train(args, cfg_path, side, data_dir, reference_dir, isa):
    sets = [f"--set=TARGET_SIDE={side}", '--set=GPU_GROUPS=["/cpu:0"]',
            "--set=PER_GPU_IMAGE=1", *args.set]
    out = _run([sys.executable, os.path.join(REPO, "bench", "train_step.py"),
                "--cfg", cfg_path, "--data_dir", data_dir,
                "--reference_dir", reference_dir, "--steps", str(args.steps),
                "--warmup", str(args.warmup), "--json", *sets], isa)
    return _json_line(out)


def ours_serving(args, cfg_path, cfg, side, isa):
    command = [sys.executable, os.path.join(REPO, "bench", "serving.py"), "--cfg", cfg_path,
               f"--set=TARGET_SIDE={side}", *args.set, "--images", str(args.images),
               "--warmup", "1", "--json"]
    checkpoint = _trained_checkpoint(cfg)
    if checkpoint:
        command += ["--checkpoint", checkpoint]
    images = _image_dir(cfg)
    if images:
        command += ["--image_dir", images]
    return _json_line(_run(command, isa))


def _trained_checkpoint(cfg):
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.tf_compat import tf
    model_dir = os.path.join(REPO, cfg.MODEL_DIR)
    return tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None


def _image_dir(cfg):
    """The config's dataset's images when ../shared has them (by the config's name)."""
    for dataset in ("bccd", "deeppcb"):
        if cfg.NAME.startswith(dataset):
            folder = os.path.join(DATASETS, dataset, "JPEGImages")
            return folder if os.path.isdir(folder) else None
    return os.path.join(DATASETS, "bccd", "JPEGImages")


def _spread(values):
    values = list(values)
    return f"{min(values)}-{max(values)}" if values else "none"


def compare(args, cfg_path, side, isa):
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.configs import load_config
    cfg = load_config(cfg_path)
    data_dir = args.data_dir or os.path.join(REPO, cfg.DATA_DIR)
    reference_dir = args.reference_dir or os.path.join(REPO, cfg.REFERENCE_DIR)
    theirs = peer(args, side, cfg, isa)
    train = ours_train(args, cfg_path, side, data_dir, reference_dir, isa)
    serve = ours_serving(args, cfg_path, cfg, side, isa)
    timed = slice(args.warmup, None)
    row = {
        "isa": isa, "config": cfg.NAME, "side": side, "peer_backbone": args.backbone,
        "budgets": budgets(cfg),
        "peer_train_s": theirs["train_step_s"]["median"],
        "peer_infer_s": theirs["infer_s"]["median"],
        "peer_rss_gib": theirs.get("rss_peak_after_train_MiB", 0) / 1024,
        "peer_counts": {k: v for k, v in theirs.items() if "count" in k or
                        "proposals" in k or "rois" in k},
        "ours_train_s": train["median_s_per_step"],
        "ours_train_cpu_s": train.get("median_cpu_s_per_step"),
        "ours_infer_s": serve["cached_s_per_image"],
        "ours_rss_gib": train["peak_rss_gib"],
        "ours_serving_rss_gib": serve["peak_rss_gib"],
        "ours_proposals_per_step": train["proposals_per_step"][timed],
        "ours_rois_per_step": train.get("rois_per_step", [])[timed],
        "ours_proposals_per_image": serve.get("proposals_per_image"),
        "ours_weights_served": serve["weights"],
        "ours_gflop_per_step": train.get("gflop_per_step"),
        "ours_achieved_gflops": train.get("achieved_gflops"),
        "matmul_gflops": train.get("matmul_gflops"),
        "ours_breakdown": train.get("op_seconds_per_block"),
    }
    row["train_ratio"] = row["ours_train_s"] / row["peer_train_s"]
    row["infer_ratio"] = row["ours_infer_s"] / row["peer_infer_s"]
    row["rss_ratio"] = row["ours_rss_gib"] / row["peer_rss_gib"] if row["peer_rss_gib"] \
        else None
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer_python", required=True)
    parser.add_argument("--backbone", default="resnet101",
                        help="the peer's: resnet101 or mobilenet_v3_large")
    parser.add_argument("--cfgs", default=os.path.join(REPO, "cfgs", "res101_fewshot.py"),
                        help="our configs, comma-separated")
    parser.add_argument("--data_dir", default=None, help="default: each config's DATA_DIR")
    parser.add_argument("--reference_dir", default=None,
                        help="default: each config's REFERENCE_DIR")
    parser.add_argument("--sides", default=None,
                        help="comma-separated (default: each config's TARGET_SIDE)")
    parser.add_argument("--isas", default="native", help="native and / or avx2")
    parser.add_argument("--set", action="append", default=[],
                        help="config override for ours, --set=FIELD=VALUE (repeatable)")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--images", type=int, default=7, help="images timed (serving)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    args.set = [s if s.startswith("--set=") else f"--set={s}" for s in args.set]
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.configs import load_config
    rows = []
    for isa in args.isas.split(","):
        for cfg_path in args.cfgs.split(","):
            sides = ([int(s) for s in args.sides.split(",")] if args.sides else
                     [load_config(cfg_path).TARGET_SIDE])
            for side in sides:
                rows.append(compare(args, cfg_path, side, isa))
                print(json.dumps(rows[-1]), flush=True)
                if args.out:
                    with open(args.out, "w") as handle:
                        json.dump(rows, handle, indent=1)
    print(f"\npeer: torchvision Faster R-CNN, {args.backbone}; ours / peer (ratio)")
    print("isa | config | side | train s/step | inference s/image | peak RSS GiB (train) | "
          "proposals / ROIs per step, ours | proposals per image, ours")
    for row in rows:
        print(f"{row['isa']} | {row['config']} | {row['side']} | "
              f"{row['ours_train_s']:.3f} / {row['peer_train_s']:.3f} "
              f"({row['train_ratio']:.2f}) | {row['ours_infer_s']:.3f} / "
              f"{row['peer_infer_s']:.3f} ({row['infer_ratio']:.2f}) | "
              f"{row['ours_rss_gib']:.2f} / {row['peer_rss_gib']:.2f} "
              f"({row['rss_ratio'] or float('nan'):.2f}) | "
              f"{_spread(row['ours_proposals_per_step'])} / "
              f"{_spread(row['ours_rois_per_step'])} | "
              f"{_spread(row['ours_proposals_per_image'] or [])}")
        print(f"    peer counts: {json.dumps(row['peer_counts'])}")
    if rows:
        print(f"median train ratio {statistics.median(r['train_ratio'] for r in rows):.2f}, "
              f"inference {statistics.median(r['infer_ratio'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
