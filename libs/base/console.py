"""What the tools print: their own lines by default, TensorFlow's logs with --verbose.

By default (quiet) a tool shows the lines of this project only:

- log records from the project's own files (libs/, data/, tools/, cfgs/, bench/), as
  plain lines ("message", "warning: message", "error: message");
- errors (ERROR and above) from anywhere, TensorFlow's included;
- the live progress lines of libs.base.io_utils.Progress and what the tools print.

Hidden: TensorFlow's Python logs below ERROR (deprecation warnings, the Estimator's
"Calling model_fn", its hooks' "loss = ..., step = ..." and "global_step/sec" lines),
Python warnings raised inside TensorFlow / Keras / tf-slim, and the C++ plugin
registration lines that `import tensorflow` prints even with TF_CPP_MIN_LOG_LEVEL=2
("Unable to register cuDNN factory ..."): those are written by C++ straight to file
descriptor 2 while TensorFlow loads, so hidden_import_noise() captures that descriptor
for the import only, drops the known lines and passes every other line through.

`--verbose` (libs.base.cli.run_tool defines it for every tool) calls set_verbose(True): the
absl log format with timestamps and source files, every TensorFlow log record, Python
warnings and the import lines are back. TensorFlow's C++ logs below ERROR still follow
TF_CPP_MIN_LOG_LEVEL (2 unless set; libs/base/tf_compat.py).

This module imports no TensorFlow, so a tool can set the mode before TensorFlow loads.
"""
import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

from libs.base import io_utils

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROJECT_DIRS = tuple(os.path.join(_ROOT, name) + os.sep
                     for name in ("libs", "data", "tools", "cfgs", "bench"))

# Printed by TensorFlow's C++ runtime while `import tensorflow` runs, on every machine
# (GPU or not): plugin registration, CPU-feature and TensorRT notices.
IMPORT_NOISE = re.compile(
    r"Unable to register cu\w+ factory"
    r"|TF-TRT Warning"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags")

# Python warnings whose source is one of these packages are hidden when quiet.
_THIRD_PARTY_WARNINGS = r"(tensorflow|tensorflow_estimator|tf_keras|keras|tf_slim)(\.|$)"

_verbose = False
_warnings_filter = None


def is_verbose():
    return _verbose


def set_verbose(verbose):
    """Switches between the quiet console (default) and TensorFlow's own logs."""
    global _verbose
    _verbose = bool(verbose)
    apply()


def is_project_record(record):
    return os.path.abspath(record.pathname).startswith(PROJECT_DIRS)


class OwnLinesFilter(logging.Filter):
    """Quiet: passes the project's records and errors from anywhere; verbose: all.

    It also clears a live progress line on the terminal before a record is written
    (filters run just before the handler writes), so the record does not land in the
    middle of that line; the progress line is redrawn at its next update.
    """

    def filter(self, record):
        keep = _verbose or record.levelno >= logging.ERROR or is_project_record(record)
        if keep:
            io_utils.clear_live_progress()
        return keep


class PlainFormatter(logging.Formatter):
    """"message" for INFO, "warning: message", "error: message": lines for people."""

    def format(self, record):
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


_FILTER = OwnLinesFilter()


def apply():
    """Puts the current mode into effect: log levels, absl's handler, warnings.

    Called by set_verbose and by libs/base/tf_compat.py once TensorFlow is imported (which
    creates the "tensorflow" logger); safe to call any number of times.
    """
    global _warnings_filter
    logging.getLogger("tensorflow").setLevel(logging.INFO if _verbose else logging.ERROR)
    from absl import logging as absl_logging
    from absl.logging import PythonFormatter
    handler = absl_logging.get_absl_handler()
    if _FILTER not in handler.filters:
        handler.addFilter(_FILTER)
    handler.setFormatter(PythonFormatter() if _verbose else PlainFormatter())
    if _verbose and _warnings_filter is not None:
        if _warnings_filter in warnings.filters:
            warnings.filters.remove(_warnings_filter)
            # Python caches "ignore" decisions per call site until told the filters
            # changed; filterwarnings() does this itself, a removal does not.
            getattr(warnings, "_filters_mutated", lambda: None)()
        _warnings_filter = None
    elif not _verbose and _warnings_filter is None:
        warnings.filterwarnings("ignore", module=_THIRD_PARTY_WARNINGS)
        _warnings_filter = warnings.filters[0]


@contextlib.contextmanager
def hidden_import_noise(stream=None):
    """Captures file descriptor 2 during the block; writes back all but IMPORT_NOISE.

    Quiet mode only (verbose: nothing is captured). The captured text goes to `stream`
    (default sys.stderr) when the block ends, also when it raises, so an import error's
    own output is never lost.
    """
    if _verbose:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):   # no usable descriptor 2 (embedded interpreters)
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not IMPORT_NOISE.search(line)]
            if kept:
                out = stream if stream is not None else sys.stderr
                out.write("".join(kept))
                out.flush()
