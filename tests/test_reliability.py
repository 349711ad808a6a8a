"""Reliability promises (docs/reliability.md): NaN guard, crash and resume, determinism,
multi-worker training."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from data.io.dataset import open_run
from libs.base.tf_compat import tf
from libs.configs import load_config
from libs.train import devices, hooks, runs, training
from libs.train import model_fn as model_lib
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")


def tiny(**overrides):
    return load_config(TINY, overrides)


# ---------------------------------------------------------------------- NaN guard

def _poison(monkeypatch, part, from_step, value=float("nan")):
    """model_fn's `part` loss becomes `value` from global step `from_step` - 1 on (the
    step shown as `from_step` in the logs)."""
    original = model_lib.total_loss

    def poisoned(graph, cfg):
        loss, parts = original(graph, cfg)
        step = tf.train.get_or_create_global_step()
        bad = tf.greater_equal(step, from_step - 1)
        parts = dict(parts)
        parts[part] = tf.where(bad, tf.constant(value, tf.float32), parts[part])
        return loss + parts[part] - tf.stop_gradient(parts[part]), parts

    monkeypatch.setattr(model_lib, "total_loss", poisoned)


def _assert_finite_checkpoint(path):
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
        weights = reader.get_tensor(name)
        if np.issubdtype(np.asarray(weights).dtype, np.floating):
            assert np.isfinite(weights).all(), name


@pytest.mark.parametrize("bad_step, value", [(7, float("nan")), (10, float("inf"))])
def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
        sample_data, tmp_path, monkeypatch, bad_step, value):
    """Step 10 is also a checkpoint step: the guard must stop it before it is saved."""
    model_dir = str(tmp_path / "run")
    run = open_run(tiny(SAVE_CHECKPOINTS_STEPS=5), sample_data["data_dir"],
                               sample_data["reference_dir"], model_dir)
    _poison(monkeypatch, "fast_rcnn/loc_loss", bad_step, value)
    with pytest.raises(hooks.NonFiniteLossError) as caught:
        training.train(run, max_steps=20)
    message = str(caught.value)
    assert "\n" not in message
    assert f"training step {bad_step}:" in message
    assert f"fast_rcnn/loc_loss = {value}" in message
    assert "rpn/cls_loss" not in message                   # only the bad values
    assert message.count("model.ckpt-5") == 1               # names the last good one
    latest = tf.train.latest_checkpoint(model_dir)
    assert latest.endswith("model.ckpt-5")
    _assert_finite_checkpoint(latest)
    assert not os.path.exists(os.path.join(model_dir, f"model.ckpt-{bad_step}.index"))


def test_non_finite_loss_is_one_line_from_the_command_line(sample_data, tmp_path):
    """Through tools/train.py: a LR so large the loss overflows gives one error line,
    exit code 1, and no checkpoint past the last good one."""
    model_dir = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "--cfg", TINY,
         "--data_dir", sample_data["data_dir"], "--reference_dir",
         sample_data["reference_dir"], "--model_dir", model_dir, "--max_steps", "200",
         "--set", "LR=1e30", "--set", "CLIP_GRADIENT_NORM=1e30",
         "--set", "SAVE_CHECKPOINTS_STEPS=1"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite value at training step "), last
    step = int(last.split("training step ")[1].split(":")[0])
    latest = tf.train.latest_checkpoint(model_dir)
    assert latest.endswith(f"model.ckpt-{step - 1}"), (latest, last)
    _assert_finite_checkpoint(latest)


# ------------------------------------------------------------------- crash and resume

def _train_command(sample_data, model_dir, *extra):
    return [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "--cfg", TINY,
            "--data_dir", sample_data["data_dir"], "--reference_dir",
            sample_data["reference_dir"], "--model_dir", model_dir, *extra]


def _checkpoint_step(model_dir):
    """global_step of the latest checkpoint, after reading every tensor of it (a torn
    checkpoint fails here); 0 when there is none yet."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        return 0
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    return int(reader.get_tensor("global_step"))


def test_sigkill_at_random_moments_then_resume_to_completion(sample_data, tmp_path):
    """train.py is killed with SIGKILL four times - once while it starts, three times
    at random moments of training with a checkpoint every 3 steps, so some kills land
    mid-save - and after each kill the run directory holds a complete checkpoint whose
    step never goes back. The same command, rerun, resumes and finishes max_steps."""
    model_dir = str(tmp_path / "run")
    # Each kill lands at most 1.5 s after a new checkpoint: about 30 steps of the tiny
    # model on a fast CPU, fewer on a slow one, so three kills stay well inside 150.
    max_steps = 150
    command = _train_command(sample_data, model_dir, "--max_steps", str(max_steps),
                             "--set", "SAVE_CHECKPOINTS_STEPS=3")
    rng = random.Random(1234)
    steps_seen = [0]
    for attempt in range(4):
        log = open(tmp_path / f"attempt{attempt}.log", "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            if attempt == 0:
                time.sleep(rng.uniform(1.0, 4.0))      # still importing / building
            else:
                start = time.monotonic()
                while _checkpoint_step(model_dir) <= steps_seen[-1]:
                    assert process.poll() is None, "training ended before the kill"
                    assert time.monotonic() - start < 300
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.5))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
            log.close()
        step = _checkpoint_step(model_dir)
        assert step >= steps_seen[-1], steps_seen + [step]
        assert step < max_steps, "the kill came too late to test anything"
        steps_seen.append(step)
    assert steps_seen[-1] > 0
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from its own checkpoint at step {steps_seen[-1]}" in result.stderr
    assert _checkpoint_step(model_dir) == max_steps


# --------------------------------------------------------------------- determinism

def _logged_losses(stderr):
    """{step: loss} from the Estimator's 'loss = X, step = N' log lines (--verbose)."""
    losses = {}
    for line in stderr.splitlines():
        if "loss = " in line and ", step = " in line:
            text = line.split("loss = ")[1]
            losses[int(text.split("step = ")[1].split()[0])] = float(text.split(",")[0])
    return losses


def test_two_runs_with_the_same_seed_give_the_same_losses(sample_data, tmp_path):
    """Two processes, same config and seed: identical losses for the first 12 steps
    (tolerance 1e-6 relative: the printed float32 values are compared)."""
    runs = []
    for name in ("first", "second"):
        result = subprocess.run(
            _train_command(sample_data, str(tmp_path / name), "--max_steps", "12",
                           "--set", "LOG_EVERY_N_STEPS=1", "--verbose"),
            capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(_logged_losses(result.stderr))
    assert sorted(runs[0]) == list(range(1, 13)), runs[0]
    assert len(set(runs[0].values())) > 6              # the loss moves: a real run
    for step in runs[0]:
        assert runs[1][step] == pytest.approx(runs[0][step], rel=1e-6), step


# -------------------------------------------------------------------- multi-worker

def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_chief_and_worker_train_one_consistent_checkpoint(sample_data, tmp_path):
    """The same tools/train.py command in two processes with TF_CONFIG (a chief and a
    worker on 127.0.0.1): MultiWorkerMirroredStrategy trains them in lockstep, the
    chief alone writes the checkpoints, both stop by themselves at max_steps."""
    model_dir = str(tmp_path / "run")
    max_steps = 6
    ports = _free_ports(2)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{ports[1]}"]}
    command = _train_command(sample_data, model_dir, "--max_steps", str(max_steps),
                             "--set", "SAVE_CHECKPOINTS_STEPS=3",
                             "--set", "LOG_EVERY_N_STEPS=1", "--verbose")
    processes = []
    for task_type in ("chief", "worker"):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": task_type, "index": 0}}))
        log = open(tmp_path / f"{task_type}.log", "w+")
        processes.append((task_type, subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    deadline = time.monotonic() + 480
    try:
        for task_type, process, log in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for _, process, _ in processes:
            if process.poll() is None:
                process.kill()
    logs = {}
    for task_type, process, log in processes:
        log.seek(0)
        logs[task_type] = log.read()
        log.close()
        assert process.returncode == 0, f"{task_type}:\n{logs[task_type][-3000:]}"
    for text in logs.values():
        assert "multi-worker training: this process is" in text
    assert "(chief)" in logs["chief"] and "(not chief)" in logs["worker"]
    # one series of checkpoints, written by the chief, at the schedule's steps
    assert _checkpoint_step(model_dir) == max_steps
    state = tf.train.get_checkpoint_state(model_dir)
    steps = sorted(int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths)
    assert steps == [0, 3, 6], steps
    # the worker joined every save (collectives) but into its scratch folder, removed
    # at the end
    saves = [line for line in logs["worker"].splitlines() if "Saving checkpoints" in line]
    assert len(saves) == 3 and all("tmp_worker_0" in line for line in saves), saves
    assert not [name for name in os.listdir(model_dir) if name.startswith("tmp_")]
    # lockstep: both processes ran every step and log the same all-reduced loss
    # (the logged step is read before the increment here: 0..5)
    chief, worker = _logged_losses(logs["chief"]), _logged_losses(logs["worker"])
    assert len(chief) == max_steps and chief == worker
    assert len(set(chief.values())) == max_steps
    # each worker reads its own half of the records
    assert "input pipeline 0 of 2: this worker reads one record in 2" in logs["chief"]
    assert "input pipeline 1 of 2: this worker reads one record in 2" in logs["worker"]


def test_tf_config_errors_are_one_line():
    with pytest.raises(runs.TrainingError, match="not a JSON object"):
        devices.cluster_task({"TF_CONFIG": "{cluster: nope"})
    with pytest.raises(runs.TrainingError, match=r"\['ps'\] tasks"):
        devices.cluster_task({"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1", "b:2"], "ps": ["c:3"]},
             "task": {"type": "worker", "index": 0}})})
    with pytest.raises(runs.TrainingError, match="not one of the cluster's tasks"):
        devices.cluster_task({"TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}})})
    one = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]},
                                    "task": {"type": "worker", "index": 0}})}
    assert devices.cluster_task(one) is None and devices.cluster_task({}) is None
    task = devices.cluster_task({"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}})})
    assert task.is_chief and task.num_workers == 2
