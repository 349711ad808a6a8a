"""A run: a config, a dataset and a run directory, resolved once for every command.

    run = prepare_run(cfg, dataset, model_dir)     # dataset: libs.train.dataset.Dataset

Reads the dataset's classes and reference images, checks NUM_CLASS and fills the
data-dependent settings (NUM_TRAIN_IMAGES, so the LR boundaries in steps) into a new
config, run.cfg (the config passed in is left as it was loaded); tools/train.py,
tools/eval.py, the export and the tests all go through here, so a run is set up the same
way whichever door it comes in by. model_params(run) is the model_fn's params of every
command (the keys: libs/train/model_fn.py).
"""
import os

from absl import logging

from libs.base.errors import UserError
from libs.base.tf_compat import tf
from libs.model import classifiers
from libs.train import warm_start
from libs.train.model_fn import class_count_dependent_parts


class TrainingError(UserError):
    """A run that cannot start; the message is one line for the user."""


def apply_dataset_info(cfg, class_names, num_train_images, adopt_classes=False):
    """Checks NUM_CLASS against the classes; the config with NUM_TRAIN_IMAGES filled in
    (so the LR boundaries in steps): a new one when a field changes, `cfg` is unchanged.

    adopt_classes (evaluation, export, prediction): a model whose head does not depend
    on the number of classes takes NUM_CLASS from `class_names` instead (prototypes of
    other classes than it was trained on); any other model must match.
    """
    fields = {}
    if cfg.NUM_CLASS != len(class_names) + 1:
        blockers = class_count_dependent_parts(cfg)
        if not adopt_classes or blockers:
            hint = (f"; config {cfg.NAME} cannot run with other classes than it was "
                    f"trained on: {', '.join(blockers)}" if adopt_classes else "")
            raise TrainingError(
                f"config {cfg.NAME}: NUM_CLASS = {cfg.NUM_CLASS} but there are "
                f"{len(class_names)} classes {list(class_names)} (+ background = "
                f"{len(class_names) + 1}){hint}")
        logging.info("config %s: NUM_CLASS %d -> %d for the classes %s (the head does "
                     "not depend on the number of classes)", cfg.NAME, cfg.NUM_CLASS,
                     len(class_names) + 1, list(class_names))
        fields["NUM_CLASS"] = len(class_names) + 1
    if cfg.NUM_TRAIN_IMAGES is None:
        fields["NUM_TRAIN_IMAGES"] = int(num_train_images)
    return cfg.replace(**fields) if fields else cfg


def checkpoint_step(model_dir):
    """The global step of model_dir's latest checkpoint; None when it has none."""
    latest = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
    return int(tf.train.load_variable(latest, "global_step")) if latest else None


class Run:
    """Everything a train/eval/export command needs, resolved from config + flags.

    cfg: the run's config (a LoadedConfig with the dataset's values, prepare_run); a
    time budget's schedule replaces it with the fitted one (libs/train/training.py), so
    read run.cfg, not the config the run was prepared from. dataset: a
    libs.train.dataset.Dataset (None for a run built without data, e.g. a benchmark's
    random references)."""

    def __init__(self, cfg, dataset, model_dir, class_names, reference_images,
                 reference_paths=None):
        self.cfg = cfg
        self.dataset = dataset
        self.model_dir = model_dir
        self.class_names = class_names
        self.reference_images = reference_images
        self.reference_paths = reference_paths     # {class name: [files]} as loaded

    @property
    def data_dir(self):
        return self.dataset.data_dir if self.dataset is not None else None

    @property
    def reference_dir(self):
        return self.dataset.reference_dir if self.dataset is not None else None

    @property
    def reference_counts(self):
        """Real references per class (the rest of the NUM_SUPPORTS slots are empty)."""
        if not self.reference_paths:
            return None
        return [len(self.reference_paths[name]) for name in self.class_names]


def model_params(run, **extra):
    """The model_fn params of `run`, for every command (libs/train/model_fn.py lists the
    keys): net_config (run.cfg), class_names, reference_images, reference_counts, then
    `extra`, which adds keys (warm_start_checkpoint, evaluation_sink, prototypes) or
    replaces these (reference_images=None when prototypes are given)."""
    params = {"net_config": run.cfg,
              "class_names": list(run.class_names),
              "reference_images": run.reference_images,
              "reference_counts": run.reference_counts}
    params.update(extra)
    return params


def prepare_run(cfg, dataset, model_dir=None, need_references=True, inference=False,
                classes_from_references=False):
    """Reads the dataset's classes, loads the reference images; the Run, whose cfg is
    `cfg` with the dataset's values filled in (apply_dataset_info; `cfg` is unchanged).

    dataset: a libs.train.dataset.Dataset (data/io/dataset.py makes one from a data
    dir and a reference dir). inference (evaluation, export, prediction): a model whose
    head does not depend on the number of classes runs with the classes of the
    dataset (see apply_dataset_info). classes_from_references (export, prediction, when
    the user named a reference set): when the reference set's classes differ from the
    dataset's, the model detects the reference set's classes (new classes from
    references, no retraining; no label map is needed then).
    Raises UserError subclasses with one-line messages.
    """
    new_classes = bool(inference and classes_from_references and need_references
                       and classifiers.uses_prototypes(cfg.CLASSIFIER))
    model_dir = model_dir or cfg.MODEL_DIR
    comparison = need_references and classifiers.uses_prototypes(cfg.CLASSIFIER)
    class_names, num_train_images = None, 0
    try:
        class_names = dataset.class_names()
        num_train_images = dataset.split_size(cfg.TRAIN_SPLIT)
    except UserError:
        if not new_classes:
            raise
    if new_classes:
        found = dataset.reference_classes()
        if class_names is None or set(found) != set(class_names):
            class_names = found
    cfg = apply_dataset_info(cfg, class_names, num_train_images or 1,
                             adopt_classes=inference)
    images, paths = None, None
    if comparison:
        # A class with fewer references than NUM_SUPPORTS (a K-shot set of a dense
        # class) averages the ones it has, with a warning.
        images, paths = dataset.load_references(
            class_names, cfg.NUM_SUPPORTS, cfg.REFERENCE_SIDE,
            seed=cfg.SEED if cfg.REFERENCE_RANDOM else None, min_supports=1)
    return Run(cfg, dataset, model_dir, class_names, images,
               {name: list(files) for name, files in paths.items()} if paths else None)


def training_params(run):
    """model_params of a training run: records the run's classes (a later fine-tuning
    matches them by name) and prepares INIT_CHECKPOINT's warm start
    (libs/train/warm_start.py), whose checkpoint it adds."""
    warm_start.write_class_names(run.model_dir, run.class_names)
    prefix = warm_start.prepare_warm_start(run.cfg, run.model_dir, run.class_names)
    return model_params(run, warm_start_checkpoint=prefix)


def check_run_split(run, split):
    """A UserError now, not an hour into the run, if the files of `split` are cut short
    or do not hold the images the dataset counted; returns the number of images."""
    return run.dataset.check_split(split)


def resolve_checkpoint(model_dir, checkpoint=None):
    """The checkpoint to use: `checkpoint` if given, else the latest in model_dir."""
    if checkpoint:
        if not tf.io.gfile.exists(checkpoint + ".index"):
            raise TrainingError(f"--checkpoint {checkpoint}: no such checkpoint "
                                f"({checkpoint}.index is missing)")
        return checkpoint
    latest = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
    if latest is None:
        raise TrainingError(f"no checkpoint in {model_dir}: train first, or pass "
                            f"--checkpoint")
    return latest
