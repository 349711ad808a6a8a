"""Shared plumbing of the command lines: config flags and one-line error reporting."""
import ast
import sys

from absl import logging

from libs.base import console
from libs.configs import ConfigError, load_config


def parse_overrides(items):
    """['LR=0.01', 'GPU_GROUPS=["/cpu:0"]'] -> {'LR': 0.01, 'GPU_GROUPS': ['/cpu:0']}."""
    overrides = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected FIELD=VALUE")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text          # a bare word: keep it as a string
        overrides[key.strip()] = value
    return overrides


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
    # (define_annotation_flags) or in the tool's module under a console script would be
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


def define_annotation_flags(split_help):
    """--format, --image_dir, --annotations, --split_file: where annotations come from."""
    from absl import flags

    # Here, not at the top: the formats import OpenCV (~0.1 s), which most tools skip.
    from data.io import formats
    flags.DEFINE_enum("format", None, list(formats.names()), "Annotation format.")
    flags.DEFINE_string("image_dir", None, "Folder of the images.")
    flags.DEFINE_string("annotations", None, " ".join(
        f"{f.label}: {f.annotations_help}." for f in formats.registered()))
    flags.DEFINE_string("split_file", None, split_help)


def define_yolo_names_flag():
    """--class_names: the names of YOLO's class ids, the same flag in every tool that
    reads YOLO labels (--classes, where a tool has it, chooses classes; it never names
    YOLO ids)."""
    from absl import flags
    flags.DEFINE_string("class_names", None,
                        "YOLO only: comma-separated names of class ids 0, 1, ... . "
                        "Default: `names` of data.yaml or the lines of classes.txt, "
                        "looked for in the labels folder, its parent and the dataset "
                        "root (DATA/labels/train -> DATA); this flag overrides such a "
                        "file (a warning names it).")


def load_config_from_flags(cfg_path, set_items=()):
    return load_config(cfg_path, parse_overrides(set_items))


def user_errors():
    """The exception types that mean bad input, reported as one line, not a traceback."""
    from data.io.input_fn import DataError
    from data.io.label_map import LabelMapError
    from data.io.reference_set import ReferenceSetError
    from libs.serving.export import ExportError
    from libs.serving.prediction import PredictionError
    from libs.train.hooks import NonFiniteLossError
    from libs.train.time_budget import BudgetError
    from libs.train.training import TrainingError
    from libs.train.warm_start import WarmStartError
    return (ConfigError, DataError, LabelMapError, ReferenceSetError, TrainingError,
            ExportError, PredictionError, NonFiniteLossError, BudgetError,
            WarmStartError)


def guarded(fn):
    """Runs fn(); a user error prints `error: ...` on one line and returns exit code 1."""
    try:
        result = fn()
    except user_errors() as exc:
        logging.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if result is None else result
