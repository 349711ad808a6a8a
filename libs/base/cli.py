"""Shared plumbing of the command lines: flags, console mode, one-line error reporting."""
import sys

from absl import logging

from libs.base import console
from libs.base.errors import UserError


def run_tool(define_flags, main):
    """Defines a tool's flags and --verbose, then runs main under absl.

    Flags are defined at run time, not at import, so that importing several tools in
    one process (tests, console scripts) never clashes on the flag names they share.
    The console mode (libs/base/console.py) is set from --verbose before main runs, so
    before any tool imports TensorFlow.
    """
    from absl import app, flags
    already_defined = set(flags.FLAGS)
    define_flags()
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Show TensorFlow's own logs too (deprecation "
                          "warnings, Estimator and hook lines, C++ messages at import), "
                          "in absl's format with times and source files.")
    # --help lists the flags of the main module only: a flag defined here, in a helper
    # (data/io/annotation_flags.py) or in the tool's module under a console script would be
    # missing from it.
    for name in set(flags.FLAGS) - already_defined:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

    def main_in_console_mode(argv):
        console.set_verbose(flags.FLAGS.verbose)
        return main(argv)

    app.run(main_in_console_mode)


def usage_error(argv, cfg_path):
    """Exit code 2 with one line for stray arguments or a missing --cfg, else None."""
    if len(argv) > 1:
        print(f"error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    if not cfg_path:
        print("error: --cfg is required (e.g. --cfg cfgs/tiny_cpu.py)", file=sys.stderr)
        return 2
    return None


def guarded(fn):
    """Runs fn(); a user error prints `error: ...` on one line and returns exit code 1."""
    try:
        result = fn()
    except UserError as exc:
        logging.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if result is None else result
