"""TensorFlow 1 compatibility, set up once for every entry point.

Every module of the project imports TensorFlow as::

    from libs.base.tf_compat import tf, slim

which gives ``tensorflow.compat.v1`` in graph mode and ``tf_slim`` with its batch norm
working. Importing TensorFlow any other way in product code is a bug: this module is the
only place that knows the three traps below.

1. Graph mode. The port is TF1-style (placeholders, collections, ``tf.estimator``), so
   v2 behaviour is disabled before anything builds a graph.
2. The tf-slim batch-norm trap. ``tf_slim.batch_norm`` calls
   ``tensorflow.python.layers.normalization``, a lazy loader pointing at
   ``tf_keras.legacy_tf_layers.normalization``. tf-keras 2.15 ships that package only as
   ``tf_keras.src.legacy_tf_layers``, so the first batch norm raises
   ``ModuleNotFoundError: No module named 'tf_keras.legacy_tf_layers'``. We register the
   real package under the name TensorFlow looks for.
3. A racy gradient. On the CPU, ``CropAndResizeGradImage`` (the backward pass of
   ROI-align, which carries the second stage's gradient into the FPN) splits the ROIs
   over threads that add into the same feature cells without a lock: overlapping ROIs
   lose updates (3-5% of that gradient on most runs of 512 overlapping ROIs), and two
   runs with the same seed differ. With op determinism on, TensorFlow runs it on one
   thread; no measurable cost in a training step here (docs/reliability.md). Tested by
   tests/test_model_blocks.py::test_roi_align_gradient_equals_numpy_on_every_run.
"""
import importlib
import os
import sys

from libs.base import console

# TensorFlow's C++ banner and grappler cost-model warnings bury the real log lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
    # The C++ plugin-registration lines ("Unable to register cuDNN factory") are printed
    # at ERROR level during the import whatever TF_CPP_MIN_LOG_LEVEL allows below 3, and
    # level 3 would hide real errors for the whole process: libs/base/console.py filters them.
    with console.hidden_import_noise():
        import tensorflow as _tf2
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise ImportError(
        "TensorFlow is not installed: run `make venv` or "
        "`pip install -e '.[test]'` (add '[gpu]' for the CUDA build)") from exc

_LEGACY_NAME = "tf_keras.legacy_tf_layers"
_LEGACY_REAL = "tf_keras.src.legacy_tf_layers"
_LEGACY_SUBMODULES = ("base", "convolutional", "core", "normalization", "pooling",
                      "variable_scope_shim", "migration_utils")


def install_legacy_layers_alias():
    """Makes ``tf_keras.legacy_tf_layers[.X]`` importable on tf-keras 2.15.

    Returns True when the alias was needed and installed, False when the installed
    tf-keras already provides the module (newer or older releases).
    """
    try:
        importlib.import_module(_LEGACY_NAME + ".normalization")
        return False
    except ModuleNotFoundError:
        pass
    real = importlib.import_module(_LEGACY_REAL)
    sys.modules[_LEGACY_NAME] = real
    for name in _LEGACY_SUBMODULES:
        try:
            module = importlib.import_module(f"{_LEGACY_REAL}.{name}")
        except ModuleNotFoundError:
            continue
        sys.modules[f"{_LEGACY_NAME}.{name}"] = module
    import tf_keras  # the parent package must expose the attribute too
    tf_keras.legacy_tf_layers = real
    return True


LEGACY_ALIAS_INSTALLED = install_legacy_layers_alias()


def skip_autograph_for_tf_keras():
    """Tells autograph not to convert tf_keras code.

    Every slim.batch_norm goes through tf_keras's legacy layer, which autograph converts
    because its skip list names `keras` but not `tf_keras`: about 0.1-0.2 s per batch
    norm, 10x slower graph builds for a ResNet-101 (16 s -> 1.5 s for resnet_v1_50 in
    training mode). The converted and unconverted graphs are the same.
    """
    from tensorflow.python.autograph.core import config as autograph_config
    rule = autograph_config.DoNotConvert("tf_keras")
    if rule not in autograph_config.CONVERSION_RULES:
        autograph_config.CONVERSION_RULES = (rule,) + tuple(
            autograph_config.CONVERSION_RULES)


skip_autograph_for_tf_keras()

tf = _tf2.compat.v1
# The quiet console (or --verbose) applies to TensorFlow's logger from here on; before
# disable_v2_behavior, whose deprecation warning is the first of many.
console.apply()
tf.disable_v2_behavior()
# Trap 3 in the module docstring: without this the ROI-align gradient is wrong.
_tf2.config.experimental.enable_op_determinism()

import tf_slim as slim  # noqa: E402  (after the alias, by design)


def seeded_graph(seed=0):
    """A new graph with a graph-level seed.

    With op determinism on, TensorFlow refuses to build a random op (every variable
    initializer) in a graph without a seed, so every graph that creates variables
    outside an Estimator (which seeds its own from RunConfig.tf_random_seed) starts here.
    """
    graph = tf.Graph()
    graph.seed = seed
    return graph


__all__ = ["tf", "slim", "seeded_graph", "LEGACY_ALIAS_INSTALLED",
           "install_legacy_layers_alias"]
