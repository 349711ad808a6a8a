"""What the benchmark commands share: running the project's tools as a user would."""
import contextlib
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Variables set for the tools run_tool starts (not for this process): tool_environment.
_TOOL_ENVIRONMENT = {}


@contextlib.contextmanager
def tool_environment(**variables):
    """Within it, run_tool's tools see these environment variables; this process's own
    environment is untouched (a library already loaded here, e.g. oneDNN, keeps what it
    read)."""
    saved = dict(_TOOL_ENVIRONMENT)
    _TOOL_ENVIRONMENT.update(variables)
    try:
        yield
    finally:
        _TOOL_ENVIRONMENT.clear()
        _TOOL_ENVIRONMENT.update(saved)


def run_tool(name, *args):
    """Runs tools/<name> with this Python; its stdout, or RuntimeError with its stderr."""
    command = [sys.executable, os.path.join(REPO, "tools", name), *args]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, **_TOOL_ENVIRONMENT})
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def write_json(path, value):
    """Writes `value` as JSON atomically: a rerun after an interruption reads it whole."""
    sys.path.insert(0, REPO)
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.base.io_utils import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as handle:
        json.dump(value, handle, indent=1, sort_keys=True, default=float)
        handle.write("\n")


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default
