"""The console: quiet by default, TensorFlow's logs with --verbose, live progress lines
(libs/base/console.py, libs/base/io_utils.Progress)."""
import io
import logging
import os
import subprocess
import sys

import pytest

from libs.base import console, io_utils
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


# ------------------------------------------------------------------- progress lines

def test_progress_line_has_count_rate_eta_and_fields():
    clock = FakeClock()
    progress = io_utils.Progress(960, "training", unit="steps", clock=clock,
                                 stream=io.StringIO())
    progress.begin_at(400)                      # resumed: 400 steps done before
    clock.now = 40.0
    progress.update(80, loss=0.98853)
    # 80 steps in 40 s = 2 steps/s (the 400 earlier steps are not counted);
    # 480 left -> 240 s
    assert progress.line() == "training: 480/960 steps, 2.0 steps/s, ETA 4:00, loss 0.9885"
    assert progress.line(final=True) == \
        "training: 480/960 steps, 2.0 steps/s, took 0:40, loss 0.9885"


def test_progress_formats():
    assert io_utils.format_duration(3725) == "1:02:05"
    assert io_utils.format_duration(75.4) == "1:15"
    assert io_utils.format_rate(12.34, "steps") == "12 steps/s"
    assert io_utils.format_rate(1.44, "steps") == "1.4 steps/s"
    assert io_utils.format_rate(0.0312, "steps") == "0.031 steps/s"
    assert io_utils.format_rate(3.0) == "3.0/s"
    clock = FakeClock()
    progress = io_utils.Progress(None, "reading", clock=clock, stream=io.StringIO())
    clock.now = 2.0
    progress.update(4)
    assert progress.line() == "reading: 4/?, 2.0/s"                # no total, no ETA
    unknown = io_utils.Progress(10, "waiting", clock=clock, stream=io.StringIO())
    assert unknown.line().endswith("ETA ?")                   # nothing done yet


def test_progress_redraws_one_line_on_a_terminal():
    clock, stream = FakeClock(), FakeTerminal()
    with io_utils.Progress(4, "evaluating val", unit="images", clock=clock,
                           stream=stream) as progress:
        for _ in range(4):
            clock.now += 1.0
            progress.update()
    text = stream.getvalue()
    # every draw starts with a carriage return; one newline, at the very end
    assert text.count("\n") == 1 and text.endswith("\n")
    draws = text[:-1].split("\r")[1:]
    assert len(draws) == 5                           # 4 updates + the final line
    assert draws[0].startswith("evaluating val: 1/4 images, 1.0 images/s, ETA 0:03")
    assert draws[-1].startswith("evaluating val: 4/4 images, 1.0 images/s, took 0:04")


def test_progress_prints_a_line_every_so_often_elsewhere():
    clock, stream = FakeClock(), io.StringIO()
    with io_utils.Progress(100, "convert train", every_seconds=30.0, unit="images",
                           clock=clock, stream=stream) as progress:
        for _ in range(100):
            clock.now += 1.0                           # 100 s in all
            progress.update()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # at 30, 60 and 90 s, then the final line
    assert [line.split(",")[0] for line in lines] == [
        "convert train: 30/100 images", "convert train: 60/100 images",
        "convert train: 90/100 images", "convert train: 100/100 images"]
    assert lines[-1].endswith("took 1:40")


def test_a_log_line_erases_the_live_progress_line_first():
    clock, stream = FakeClock(), FakeTerminal()
    progress = io_utils.Progress(10, "training", clock=clock, stream=stream)
    progress.update()
    drawn = stream.getvalue()
    assert drawn.startswith("\rtraining: 1/10")
    io_utils.clear_live_progress()               # what console's filter does
    erased = stream.getvalue()[len(drawn):]
    assert erased == "\r" + " " * (len(drawn) - 1) + "\r"
    progress.update()                            # drawn again at once
    assert stream.getvalue()[len(drawn) + len(erased):].startswith("\rtraining: 2/10")
    progress.close()


# ----------------------------------------------------------------- the log filter

def _record(path, level=logging.INFO, message="hello"):
    return logging.LogRecord("any", level, path, 1, message, None, None)


def test_quiet_console_keeps_the_project_lines_and_every_error(monkeypatch):
    monkeypatch.setattr(console, "_verbose", False)
    keep = console.OwnLinesFilter().filter
    ours = os.path.join(REPO_ROOT, "libs", "training.py")
    theirs = os.path.join(os.path.dirname(logging.__file__), "site-packages", "tensorflow",
                          "python", "util", "deprecation.py")
    assert keep(_record(ours))
    assert keep(_record(ours, logging.WARNING))
    assert not keep(_record(theirs, logging.WARNING))
    assert not keep(_record(theirs, logging.INFO))
    assert keep(_record(theirs, logging.ERROR))
    monkeypatch.setattr(console, "_verbose", True)
    assert keep(_record(theirs, logging.INFO))

    plain = console.PlainFormatter()
    assert plain.format(_record(ours, message="starting")) == "starting"
    assert plain.format(_record(ours, logging.WARNING, "few")) == "warning: few"
    assert plain.format(_record(ours, logging.ERROR, "bad")) == "error: bad"


def test_import_noise_is_dropped_and_everything_else_kept(monkeypatch):
    monkeypatch.setattr(console, "_verbose", False)
    passed = io.StringIO()
    with console.hidden_import_noise(stream=passed):
        # what the C++ runtime writes straight to file descriptor 2
        os.write(2, b"2026-11-26 06:52:06.820040: E external/local_xla/xla/stream_executor"
                    b"/cuda/cuda_dnn.cc:9261] Unable to register cuDNN factory: Attempting "
                    b"to register factory for plugin cuDNN when one has already been "
                    b"registered\n")
        os.write(2, b"E0000 something real went wrong\n")
    assert passed.getvalue() == "E0000 something real went wrong\n"


# ------------------------------------------------------------- through a command line

NOISE = ("deprecat", "Unable to register", "cuDNN", "global_step/sec", "loss = ",
         "Calling model_fn", "UserWarning")


def _train(sample_data, model_dir, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"), "--cfg", TINY,
         "--data_dir", sample_data["data_dir"], "--reference_dir",
         sample_data["reference_dir"], "--model_dir", model_dir, "--max_steps", "3",
         "--set", "LOG_EVERY_N_STEPS=1", *extra],
        capture_output=True, text=True, timeout=600)


def test_tools_print_their_own_lines_unless_verbose(sample_data, tmp_path):
    """Default: the tool's lines only - none of TensorFlow's deprecation warnings,
    C++ registration messages at import, Estimator or per-step hook lines (asked for at
    every step here); --verbose: TensorFlow's logs are back."""
    quiet = _train(sample_data, str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = quiet.stdout + quiet.stderr
    for noise in NOISE:
        assert noise.lower() not in output.lower(), (noise, output)
    lines = output.strip().splitlines()
    assert lines[0].startswith("starting ") and "from scratch" in lines[0]
    assert lines[1].startswith("config tiny_cpu: ")
    assert lines[-2].startswith("training: 3/3 steps, ") and ", loss " in lines[-2]
    assert lines[-1].startswith("training stopped at step 3")
    assert len(lines) == 4, output

    verbose = _train(sample_data, str(tmp_path / "verbose"), "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    for back in ("is deprecated", "global_step/sec", "loss = ", "Calling model_fn"):
        assert back in verbose.stderr, back
    # the project's lines are still there, in absl's format
    assert "training.py" in verbose.stderr and "from scratch" in verbose.stderr


def test_warnings_that_matter_still_show(tmp_path):
    """The converter's bad-record warning and its summary come through the quiet console
    as plain lines, with nothing of TensorFlow's around them."""
    from data.sample.generate import generate_voc_dataset
    voc = tmp_path / "voc"
    ids = generate_voc_dataset(str(voc), num_train=3, num_val=1, seed=0)["train"]
    (voc / "JPEGImages" / f"{ids[0]}.jpg").write_bytes(b"not a jpeg")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "convert_to_tfrecord.py"),
         "--format", "voc", "--image_dir", str(voc / "JPEGImages"), "--annotations",
         str(voc / "Annotations"), "--split_file", str(voc / "ImageSets/Main/train.txt"),
         "--output_dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    warning = [line for line in lines if line.startswith("warning: ")]
    assert len(warning) == 1 and f"{ids[0]}.jpg" in warning[0] and \
        "[image_unreadable]" in warning[0], lines
    assert any(line.split() == ["image_unreadable", "1", "zero-byte,", "truncated", "or",
                                "undecodable", "image", "->", "image", "skipped"]
               for line in lines), lines
    assert lines[-1].startswith("done: 2 images, ")           # the bad one skipped
    for noise in NOISE:
        assert noise.lower() not in result.stderr.lower(), noise


@pytest.mark.parametrize("tool", ["train.py", "eval.py", "export_savedmodel.py",
                                  "predict.py", "convert_to_tfrecord.py",
                                  "make_references.py"])
def test_every_tool_has_verbose_in_its_help(tool):
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", tool),
                             "--help"], capture_output=True, text=True, timeout=120)
    assert "--[no]verbose" in result.stdout, result.stdout[-2000:]
