"""Fine-tuning from another run: warm start by variable name, classes matched by name.

    python tools/train.py --cfg C --set 'INIT_CHECKPOINT="output/base"' \
        --set 'TRAINABLE_VARIABLES=["fast_rcnn/"]' --data_dir kshot/data ...

A run with INIT_CHECKPOINT starts (step 0, fresh optimizer) from the weights of another
run of this project: every model variable whose name and shape the source checkpoint
also has. Variables sized by the number of classes (CLASS_SIZED_VARIABLES: the FC
classifier, the per-class box regressor, the notebook's stacked background conv) are
remapped row by row BY CLASS NAME from the source run's classes (its classes.json,
written by every training run) to this run's: a class both runs know keeps its
trained rows, a new class gets freshly initialised ones (normal, std 0.01 as the FC
classifier's initialiser; zero biases). That is how the FC baseline adds novel classes
in the few-shot literature (TFA: "Frustratingly Simple Few-Shot Object Detection").

TRAINABLE_VARIABLES (regular expressions searched in variable names; None = all)
freezes everything else: no gradient, no batch-norm statistics update.

The remapped weights are written once, as a checkpoint in <model_dir>/warm_start/, and
loaded with tf.train.init_from_checkpoint; a rerun resumes from the run's own
checkpoints as always.
"""
import json
import os
import re

import numpy as np
from absl import logging

from libs.base.errors import UserError
from libs.base.io_utils import atomic_write
from libs.base.tf_compat import seeded_graph, tf

CLASSES_FILE = "classes.json"
WARM_START_DIR = "warm_start"

# name pattern -> (axis, values per class, whether index 0 is the background)
CLASS_SIZED_VARIABLES = {
    r"fc_classifier/class_logits/weights$": (1, 1, True),
    r"fc_classifier/class_logits/biases$": (0, 1, True),
    r"box_regressor/bbox_pred/weights$": (1, 4, True),
    r"box_regressor/bbox_pred/biases$": (0, 4, True),
    r"background_prototype/conv3x3/weights$": (2, None, False),   # per class: F inputs
}
NEW_ROW_STDDEV = 0.01


class WarmStartError(UserError):
    """A warm start that cannot be done; the message is one line for the user."""


def write_class_names(model_dir, class_names):
    """Records a run's classes (id order) so a later fine-tuning can match them by name."""
    os.makedirs(model_dir, exist_ok=True)
    with atomic_write(os.path.join(model_dir, CLASSES_FILE), "w") as handle:
        json.dump({"class_names": list(class_names)}, handle, indent=2)
        handle.write("\n")


def read_class_names(model_dir):
    path = os.path.join(model_dir, CLASSES_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            return list(json.load(handle)["class_names"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_source(init_checkpoint):
    """(checkpoint prefix, folder holding it) of INIT_CHECKPOINT (a prefix or a run)."""
    if tf.io.gfile.isdir(init_checkpoint):
        latest = tf.train.latest_checkpoint(init_checkpoint)
        if latest is None:
            raise WarmStartError(f"INIT_CHECKPOINT {init_checkpoint}: no checkpoint in "
                                 f"this folder")
        return latest, init_checkpoint
    if not tf.io.gfile.exists(init_checkpoint + ".index"):
        raise WarmStartError(f"INIT_CHECKPOINT {init_checkpoint}: no such checkpoint "
                             f"({init_checkpoint}.index is missing)")
    return init_checkpoint, os.path.dirname(init_checkpoint)


def class_layout(name):
    for pattern, layout in CLASS_SIZED_VARIABLES.items():
        if re.search(pattern, name):
            return layout
    return None


def remap_classes(array, axis, per_class, has_background, source_classes, target_classes,
                  rng, fill="normal"):
    """Moves the per-class blocks of `array` along `axis` from source to target classes.

    Blocks are `per_class` wide (None: array's size along axis / number of source
    classes); with has_background the first block is the background's and stays first.
    A class of target_classes found in source_classes (by name) gets its block; a new
    one gets normal(0, NEW_ROW_STDDEV) values (zeros for fill="zeros").
    """
    source_rows = (["<background>"] if has_background else []) + list(source_classes)
    target_rows = (["<background>"] if has_background else []) + list(target_classes)
    if per_class is None:
        per_class = array.shape[axis] // len(source_rows)
    if array.shape[axis] != per_class * len(source_rows):
        raise WarmStartError(f"a class-sized variable of shape {array.shape} does not "
                             f"match {len(source_classes)} source classes")
    blocks = np.split(array, len(source_rows), axis=axis)
    position = {name: i for i, name in enumerate(source_rows)}
    out = []
    for name in target_rows:
        if name in position:
            out.append(blocks[position[name]])
        elif fill == "zeros":
            out.append(np.zeros_like(blocks[0]))
        else:
            out.append(rng.normal(0.0, NEW_ROW_STDDEV, blocks[0].shape).astype(array.dtype))
    return np.concatenate(out, axis=axis)


def warm_start_values(source_checkpoint, source_classes, target_classes, seed=0):
    """{variable name: numpy value} of the source checkpoint, class-sized ones remapped.

    Optimizer slots and the global step are left out (fine-tuning starts afresh).
    """
    reader = tf.train.load_checkpoint(source_checkpoint)
    rng = np.random.default_rng(seed)
    values = {}
    for name in sorted(reader.get_variable_to_shape_map()):
        if name == "global_step" or name.endswith("/Momentum") or "/Momentum_" in name:
            continue
        value = reader.get_tensor(name)
        layout = class_layout(name)
        # A class-agnostic box regressor is one block: nothing to remap.
        single_block = layout is not None and layout[1] == value.shape[layout[0]]
        if layout is not None and not single_block and \
                list(source_classes or []) != list(target_classes):
            if source_classes is None:
                raise WarmStartError(
                    f"INIT_CHECKPOINT {source_checkpoint}: its run has no {CLASSES_FILE}, "
                    f"so its classes cannot be matched by name to this run's")
            axis, per_class, has_background = layout
            fill = "zeros" if name.endswith("biases") else "normal"
            value = remap_classes(value, axis, per_class, has_background, source_classes,
                                  target_classes, rng, fill)
        values[name] = value
    return values


def write_warm_start_checkpoint(values, prefix, seed=0):
    """Saves {name: value} as a checkpoint at `prefix`; returns the prefix."""
    graph = seeded_graph(seed)
    with graph.as_default():
        variables = [tf.Variable(value, name=name, trainable=False)
                     for name, value in values.items()]
        with tf.Session(graph=graph) as session:
            session.run(tf.variables_initializer(variables))
            tf.train.Saver(variables).save(session, prefix, write_meta_graph=False)
    return prefix


def prepare_warm_start(cfg, model_dir, class_names):
    """The checkpoint model_fn starts from (remapped classes), or None.

    Only when the run starts afresh: a run resuming from its own checkpoint ignores
    INIT_CHECKPOINT.
    """
    if not cfg.INIT_CHECKPOINT:
        return None
    if os.path.isdir(model_dir) and tf.train.latest_checkpoint(model_dir):
        return None
    source, source_dir = resolve_source(cfg.INIT_CHECKPOINT)
    source_classes = read_class_names(source_dir)
    values = warm_start_values(source, source_classes, class_names, cfg.SEED)
    prefix = os.path.join(model_dir, WARM_START_DIR, "model.ckpt")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    write_warm_start_checkpoint(values, prefix, cfg.SEED)
    logging.info("fine-tuning from %s (classes %s -> %s)", source, source_classes,
                 list(class_names))
    return prefix


def init_from_warm_start(prefix, variables):
    """init_from_checkpoint for every variable the warm-start checkpoint holds with the
    same shape; returns (loaded names, names left to their initializer)."""
    shapes = dict(tf.train.list_variables(prefix))
    assignment, skipped = {}, []
    for var in variables:
        name = var.op.name
        if name in shapes and list(shapes[name]) == var.shape.as_list():
            assignment[name] = var
        else:
            skipped.append(name)
    if assignment:
        tf.train.init_from_checkpoint(prefix, assignment)
    return sorted(assignment), skipped


def trainable_filter(patterns):
    """A predicate on variable / op names: True when any pattern matches (None: all)."""
    if not patterns:
        return lambda name: True
    compiled = [re.compile(p) for p in patterns]
    return lambda name: any(p.search(name) for p in compiled)
