"""`make venv` (behind make demo / make test) uses a Python that TensorFlow 2.15 has
wheels for (3.9-3.11), or stops at once with one line (scripts/find_python.sh).

Fake interpreters (shell scripts answering --version) are the only commands on PATH,
and `make -n` prints the venv recipe without running it: nothing is installed.
"""
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def _fake_pythons(tmp_path, **versions):
    """{"python3": "3.12.3", ...} -> a folder of scripts printing "Python <version>"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, version in versions.items():
        script = bin_dir / name.replace("_", ".")
        script.write_text(f"#!/bin/sh\necho 'Python {version}'\n")
        script.chmod(0o755)
    return bin_dir


def _make_venv_dry_run(tmp_path, bin_dir, *make_args):
    # An outer `make test` passes its flags through MAKEFLAGS; PYTHON from the caller's
    # environment would override the choice under test.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MAKE") and key != "PYTHON"}
    env["PATH"] = str(bin_dir)
    return subprocess.run([MAKE, "-n", "--no-print-directory", "-C", REPO_ROOT, "venv",
                           f"VENV={tmp_path / 'venv'}", *make_args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_python3_too_new_is_passed_over_for_python311(tmp_path):
    bin_dir = _fake_pythons(tmp_path, python3="3.12.3", python3_11="3.11.9")
    result = _make_venv_dry_run(tmp_path, bin_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == \
        f"{bin_dir / 'python3.11'} -m venv {tmp_path / 'venv'}"


def test_a_suitable_python3_is_used_as_it_is(tmp_path):
    bin_dir = _fake_pythons(tmp_path, python3="3.10.12", python3_11="3.11.9")
    result = _make_venv_dry_run(tmp_path, bin_dir)
    assert result.stdout.splitlines()[0] == f"{bin_dir / 'python3'} -m venv {tmp_path / 'venv'}"


def test_no_suitable_python_stops_with_one_line(tmp_path):
    bin_dir = _fake_pythons(tmp_path, python3="3.12.3", python3_8="3.8.10")
    result = _make_venv_dry_run(tmp_path, bin_dir)
    assert result.returncode != 0
    assert result.stdout == ""                       # not even the venv command
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "python3 is Python 3.12.3" in lines[0]                        # found
    assert "needs Python 3.9, 3.10 or 3.11" in lines[0]                  # needed
    assert "install one" in lines[0] and "make PYTHON=" in lines[0]      # what to do


def test_python_given_on_the_command_line_is_checked_not_replaced(tmp_path):
    bin_dir = _fake_pythons(tmp_path, python3="3.11.9", python3_12="3.12.3",
                            python3_9="3.9.18")
    result = _make_venv_dry_run(tmp_path, bin_dir, "PYTHON=python3.9")
    assert result.stdout.splitlines()[0] == \
        f"{bin_dir / 'python3.9'} -m venv {tmp_path / 'venv'}"
    result = _make_venv_dry_run(tmp_path, bin_dir, "PYTHON=python3.12")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PYTHON=python3.12 is Python 3.12.3" in lines[0], lines
