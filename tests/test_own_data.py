"""The README's "Your own data" walk-through runs offline with cfgs/own_data.py.

The generated sample stands in for the user's data (converted and cropped as the README
does: tests/conftest.py sample_data); the ImageNet Lite0 weights come from the package
setup.py installs (imported_lite0: tools/import_backbone.py's library call). Training is
cut to a few steps at a smaller side: what is tested is that the commands and the config
work together, from the imported weights, and that the config's error for a wrong
NUM_CLASS is the one line the README's `--set NUM_CLASS=...` answers.
"""
import json
import os
import subprocess
import sys

from libs.configs import load_config
from tests.conftest import REPO_ROOT

OWN = os.path.join(REPO_ROOT, "cfgs", "own_data.py")


def _tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", name), *args],
                          capture_output=True, text=True, check=False)


def test_the_own_data_config_is_the_measured_cpu_detector():
    """bccd_cpu and deeppcb_cpu start from it: what they measured is what it ships."""
    own = load_config(OWN)
    bccd = load_config(os.path.join(REPO_ROOT, "cfgs", "bccd_cpu.py"))
    assert own.NET_NAME == "efficientnet_lite0"
    assert own.BACKBONE_CHECKPOINT == "output/pretrained/efficientnet_lite0"
    assert (own.DATA_DIR, own.REFERENCE_DIR) == ("output/data", "output/references")
    assert own.MIN_STEPS and own.MIN_STEPS == bccd.MIN_STEPS
    differs = {k for k in vars(own) if vars(own)[k] != vars(bccd)[k]}
    assert differs == {"NAME", "MODEL_DIR", "DATA_DIR", "REFERENCE_DIR", "NUM_CLASS",
                       "FLIP_VERTICAL", "PRESETS", "CONFIG_PATH"}


def test_the_walk_through_trains_from_imported_weights_and_evaluates(sample_data,
                                                                    imported_lite0,
                                                                    tmp_path):
    model_dir = str(tmp_path / "own_data")
    common = ["--cfg", OWN, "--data_dir", sample_data["data_dir"], "--reference_dir",
              sample_data["reference_dir"], "--model_dir", model_dir,
              f"--set=BACKBONE_CHECKPOINT='{imported_lite0[0]}'", "--set=TARGET_SIDE=256",
              "--set=NUM_SUPPORTS=3"]
    wrong = _tool("train.py", *common, "--max_steps", "2")
    assert wrong.returncode != 0
    error = [line for line in wrong.stderr.splitlines() if line.strip()][-1]
    assert "NUM_CLASS = 12 but there are 2 classes" in error, wrong.stderr[-2000:]

    num_class = f"--set=NUM_CLASS={len(sample_data['class_names']) + 1}"
    trained = _tool("train.py", *common, num_class, "--max_steps", "3")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "initialised from the pretrained checkpoint" in trained.stderr
    report = str(tmp_path / "eval.json")
    evaluated = _tool("eval.py", *common, num_class, "--report", report, "--nohtml")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(report) as handle:
        results = json.load(handle)["results"]
    assert results["global_step"] == 3 and "voc/mAP@0.5" in results
