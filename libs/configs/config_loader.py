"""Turns a config module into a validated config object with its derived values.

A config file is a Python module defining a class ``Config`` whose UPPER_CASE attributes
are the settings; it starts from ``libs.configs.defaults.Defaults``, which lists every
field a config may set, with its default and what it means. ``load_config`` imports it,
copies the settings onto a fresh object, applies overrides, computes the derived values
in one place and validates everything. Every problem is a ``ConfigError`` whose message
is one line naming the file and the field.

The object is read-only (a ``LoadedConfig``). A value learnt later (the data's
NUM_TRAIN_IMAGES, a time budget's SCHEDULE_STEPS) makes a new one, validated and with
its derived values recomputed; the old one is left as it was:

    cfg = load_config("cfgs/tiny_cpu.py", {"LR": 0.01})
    fitted = cfg.replace(NUM_TRAIN_IMAGES=8)      # cfg.NUM_TRAIN_IMAGES is still None

Derived values (never set by hand):
    NUM_GPUS           towers = len(GPU_GROUPS)
    BATCH_SIZE         images per step over all towers = NUM_GPUS * PER_GPU_IMAGE
    STEPS_PER_EPOCH    ceil(NUM_TRAIN_IMAGES / BATCH_SIZE) (None while unknown)
    EPOCH_STEPS        the config's own schedule length: EPOCH * STEPS_PER_EPOCH, or
                       MIN_STEPS when that is more (a small dataset)
    MAX_STEPS          SCHEDULE_STEPS if set, else EPOCH_STEPS
    BOUNDARY           EPOCH_BOUNDARY converted to steps, scaled by MAX_STEPS /
                       (EPOCH * STEPS_PER_EPOCH) (each boundary keeps its fraction of
                       the run)
    LR_VALUES          [LR, LR/10, LR/100, ...] one more than BOUNDARY
    BACKBONE_SHAPES    [[ceil(TARGET_SIDE/s)]*2 for s in BACKBONE_STRIDES]
    NUM_ANCHORS_PER_LOCATION   len(ANCHOR_RATIOS)
    PYRAMID_LEVELS     ["P2", ..., "P6"] matching BACKBONE_STRIDES
"""
import ast
import difflib
import importlib.util
import math
import os
import sys
import types

from libs.base.errors import UserError
from libs.configs.defaults import Defaults
from libs.model import classifiers


class ConfigError(UserError):
    """A config that cannot be used; the message is one line for the user."""


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The mirrorings TEST_FLIPS may list (libs/model/flip_merging.py implements them).
FLIP_DIRECTIONS = ("horizontal", "vertical")
# CLASSIFIER and COMPARISON_SCORE: what libs/model/classifiers registers (TF-free).
_CHOICES = {"CLASSIFIER": classifiers.names(),
            "BACKGROUND_PROTOTYPE": ("stacked", "pooled"),
            "BOX_REGRESSION": ("per_class", "class_agnostic"),
            "COMPARISON_SCORE": classifiers.score_names(),
            "ROI_POOLING": ("by_size", "all_levels"),
            "FAST_RCNN_SAMPLER": ("balanced", "fill"),
            "DETECTION_CLASSES": ("best", "every")}


def _import_module(path):
    if not os.path.isfile(path):
        raise ConfigError(f"--cfg {path}: no such config file")
    if not path.endswith(".py"):
        raise ConfigError(f"--cfg {path}: a config is a Python file (.py)")
    # Configs import `libs.configs.defaults` and each other as `cfgs.x`; make that work
    # from any working directory.
    if _REPO_ROOT not in sys.path:
        sys.path.insert(0, _REPO_ROOT)
    name = "_cd_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a syntax or import error inside the user's file
        raise ConfigError(f"--cfg {path}: cannot be imported: "
                          f"{type(exc).__name__}: {exc}") from exc
    return module


def _settings(config_class):
    """UPPER_CASE attributes of the class and its bases, most derived last-wins."""
    settings = {}
    for klass in reversed(config_class.__mro__):
        for key, value in vars(klass).items():
            if key.isupper():
                settings[key] = value
    return settings


_KNOWN_FIELDS = frozenset(_settings(Defaults))


def known_fields():
    """Field names a config may set: those of libs.configs.defaults.Defaults."""
    return set(_KNOWN_FIELDS)


def _unknown_field_message(source, key):
    close = difflib.get_close_matches(key, sorted(known_fields()), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{source}: unknown field {key}{hint}"


# Old field name -> new: accepted in users' configs and --set, so that they keep working
# (README, "Configs"). BACKBONE_CHECKPOINT was CHECKPOINT_DIR, which read like a run's
# checkpoints beside INIT_CHECKPOINT (another run's weights).
RENAMED_FIELDS = {"CHECKPOINT_DIR": "BACKBONE_CHECKPOINT"}


def _renamed(fields, source):
    """fields with old names replaced by the new ones (a copy)."""
    fields = dict(fields)
    for old, new in RENAMED_FIELDS.items():
        if old in fields:
            value = fields.pop(old)
            if fields.get(new) is not None and fields[new] != value:
                raise ConfigError(f"{source}: {old} is the old name of {new}; give one "
                                  f"of them")
            fields[new] = value
    return fields


def _check_field_names(settings, source):
    """A misspelt field would otherwise be ignored silently and the default used."""
    known = known_fields()
    for key in sorted(settings):
        if key in _DERIVED:
            raise ConfigError(f"{source}: {key} is derived from other fields; "
                              f"set those instead")
        if key not in known:
            raise ConfigError(_unknown_field_message(source, key))


def load_config(path, overrides=None):
    """Loads the config file at `path`, applies `overrides` (dict), derives, validates.

    Overrides must name existing fields: a typo fails instead of silently doing nothing.
    """
    module = _import_module(path)
    config_class = getattr(module, "Config", None)
    if not isinstance(config_class, type):
        raise ConfigError(f"--cfg {path}: the module defines no class `Config`")
    settings = _renamed(_settings(config_class), path)
    _check_field_names(settings, path)
    overrides = _renamed(overrides or {}, "--set")
    settings.update(_preset(settings, overrides.pop("PRESET", settings.get("PRESET")),
                            path))
    settings["CONFIG_PATH"] = os.path.abspath(path)
    return _finalize(settings, overrides, source=path)


def _preset(settings, name, source):
    """The fields of preset ``name`` of the config (PRESETS), plus PRESET itself."""
    if name is None:
        return {"PRESET": None}
    presets = settings.get("PRESETS") or {}
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise ConfigError(f"{source}: PRESET: no preset {name!r} (this config has: "
                          f"{known})")
    fields = dict(presets[name])
    for key in fields:
        if key in ("PRESET", "PRESETS") or key in _DERIVED or key not in known_fields():
            raise ConfigError(f"{source}: PRESETS[{name!r}]: cannot set {key}")
    fields["PRESET"] = name
    return fields


_DERIVED = ("NUM_GPUS", "BATCH_SIZE", "STEPS_PER_EPOCH", "EPOCH_STEPS", "MAX_STEPS",
            "BOUNDARY",
            "LR_VALUES", "BACKBONE_SHAPES", "NUM_ANCHORS_PER_LOCATION", "PYRAMID_LEVELS")


class LoadedConfig(types.SimpleNamespace):
    """A validated config: its fields, CONFIG_PATH and the derived values (see the module
    docstring). Read-only: `replace` makes a changed copy."""

    def replace(self, *, source="config", **fields):
        """A new validated config: this one with `fields` set and every derived value
        recomputed (e.g. NUM_TRAIN_IMAGES once the data is known). `self` is unchanged.
        ConfigError messages start with `source`."""
        return _finalize(dict(vars(self)), fields, source)

    def __setattr__(self, name, value):
        raise AttributeError(f"a loaded config is read-only: cfg.replace({name}=...) "
                             f"makes a new one")

    def __delattr__(self, name):
        raise AttributeError(f"a loaded config is read-only (cannot delete {name})")


def _finalize(settings, overrides, source):
    """The LoadedConfig of `settings` (a dict, not changed) with `overrides` applied:
    validated, derived values computed."""
    cfg = types.SimpleNamespace(**settings)      # the draft, filled in below
    for key, value in (overrides or {}).items():
        if key in ("PRESET", "PRESETS"):
            raise ConfigError(f"{source}: {key} takes effect when the config is loaded "
                              f"(--set PRESET=name), not later")
        if key in _DERIVED:
            raise ConfigError(f"{source}: {key} is derived from other fields; "
                              f"set those instead")
        if not hasattr(cfg, key):
            raise ConfigError(_unknown_field_message(source, key))
        setattr(cfg, key, value)
    _validate(cfg, source)
    if cfg.INIT_CHECKPOINT:
        # A run of this project holds every weight, its backbone's included (a pretrained
        # config's run started from BACKBONE_CHECKPOINT and trained on): fine-tuning it must
        # not put the imported ImageNet backbone back over them.
        cfg.BACKBONE_CHECKPOINT = None

    cfg.NUM_GPUS = len(cfg.GPU_GROUPS)
    cfg.BATCH_SIZE = cfg.NUM_GPUS * cfg.PER_GPU_IMAGE
    cfg.NUM_ANCHORS_PER_LOCATION = len(cfg.ANCHOR_RATIOS)
    cfg.PYRAMID_LEVELS = [f"P{int(round(math.log2(s)))}" for s in cfg.BACKBONE_STRIDES]
    cfg.BACKBONE_SHAPES = [[int(math.ceil(cfg.TARGET_SIDE / s))] * 2
                           for s in cfg.BACKBONE_STRIDES]
    if cfg.NUM_TRAIN_IMAGES:
        cfg.STEPS_PER_EPOCH = int(math.ceil(cfg.NUM_TRAIN_IMAGES / cfg.BATCH_SIZE))
        epochs_steps = cfg.EPOCH * cfg.STEPS_PER_EPOCH
        cfg.EPOCH_STEPS = max(epochs_steps, cfg.MIN_STEPS or 0)
        cfg.MAX_STEPS = int(cfg.SCHEDULE_STEPS or cfg.EPOCH_STEPS)
        # Without SCHEDULE_STEPS or MIN_STEPS the factor is exactly 1: b * STEPS_PER_EPOCH,
        # as ever.
        cfg.BOUNDARY = [int(b * cfg.STEPS_PER_EPOCH * cfg.MAX_STEPS / epochs_steps)
                        for b in cfg.EPOCH_BOUNDARY]
        _validate_boundaries(cfg, source)
    else:
        cfg.STEPS_PER_EPOCH = cfg.EPOCH_STEPS = cfg.MAX_STEPS = cfg.BOUNDARY = None
    cfg.LR_VALUES = [cfg.LR * (0.1 ** i) for i in range(len(cfg.EPOCH_BOUNDARY) + 1)]
    return LoadedConfig(**vars(cfg))


def _fail(source, field, why):
    raise ConfigError(f"{source}: {field}: {why}")


def _validate_boundaries(cfg, source):
    """Every LR stage needs a step: a short schedule (SCHEDULE_STEPS, or few steps per
    epoch) could squeeze two boundaries onto one step, or the first onto step 0."""
    steps = [0] + list(cfg.BOUNDARY) + [cfg.MAX_STEPS]
    if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
        field = "SCHEDULE_STEPS" if cfg.SCHEDULE_STEPS else "EPOCH_BOUNDARY"
        _fail(source, field, f"{cfg.MAX_STEPS} steps are too few for EPOCH_BOUNDARY "
              f"{list(cfg.EPOCH_BOUNDARY)} of EPOCH {cfg.EPOCH}: the LR stages would "
              f"start at steps {cfg.BOUNDARY}")


def _validate(cfg, source):
    required = ("NAME", "NUM_CLASS", "NET_NAME", "TARGET_SIDE", "PIXEL_MEANS",
                "BACKBONE_STRIDES", "BASE_ANCHOR_SIZE_LIST", "ANCHOR_RATIOS",
                "GPU_GROUPS", "PER_GPU_IMAGE", "EPOCH", "EPOCH_BOUNDARY", "LR",
                "NUM_SUPPORTS", "ROI_SIZE", "CLASSIFIER")
    for field in required:
        if not hasattr(cfg, field):
            _fail(source, field, "missing (every config needs it)")
    for field in ("NAME", "MODEL_DIR"):          # None in Defaults: each config's own
        if getattr(cfg, field, None) is None:
            _fail(source, field, "missing (every config needs it)")

    if not isinstance(cfg.NUM_CLASS, int) or cfg.NUM_CLASS < 2:
        _fail(source, "NUM_CLASS", f"must be an integer >= 2 (background + at least one "
              f"class), got {cfg.NUM_CLASS!r}")
    if not cfg.GPU_GROUPS:
        _fail(source, "GPU_GROUPS", "is empty; list at least one device, e.g. ['/gpu:0']")
    if not isinstance(cfg.PER_GPU_IMAGE, int) or cfg.PER_GPU_IMAGE < 1:
        _fail(source, "PER_GPU_IMAGE", f"must be a positive integer, got {cfg.PER_GPU_IMAGE!r}")
    if len(cfg.BASE_ANCHOR_SIZE_LIST) != len(cfg.BACKBONE_STRIDES):
        _fail(source, "BASE_ANCHOR_SIZE_LIST",
              f"has {len(cfg.BASE_ANCHOR_SIZE_LIST)} sizes but BACKBONE_STRIDES has "
              f"{len(cfg.BACKBONE_STRIDES)} levels; give one anchor size per level")
    if list(cfg.BACKBONE_STRIDES) != [4, 8, 16, 32, 64]:
        _fail(source, "BACKBONE_STRIDES", "the FPN builds P2..P6, so it must be "
              f"[4, 8, 16, 32, 64], got {cfg.BACKBONE_STRIDES}")
    if any(s <= 0 for s in cfg.BASE_ANCHOR_SIZE_LIST):
        _fail(source, "BASE_ANCHOR_SIZE_LIST", "sizes must be positive")
    if cfg.ANCHOR_STRIDE != 1:
        _fail(source, "ANCHOR_STRIDE", "must be 1: the RPN head predicts at every "
              "feature-map cell")
    if not cfg.ANCHOR_RATIOS or any(r <= 0 for r in cfg.ANCHOR_RATIOS):
        _fail(source, "ANCHOR_RATIOS", "needs at least one positive ratio")
    if cfg.TARGET_SIDE % 64:
        _fail(source, "TARGET_SIDE", f"must be a multiple of 64 (the P6 stride), "
              f"got {cfg.TARGET_SIDE}")
    if len(cfg.PIXEL_MEANS) != 3:
        _fail(source, "PIXEL_MEANS", "needs three RGB means")
    if len(cfg.PIXEL_STD) != 3 or any(float(s) <= 0 for s in cfg.PIXEL_STD):
        _fail(source, "PIXEL_STD", f"needs three positive RGB values, got {cfg.PIXEL_STD!r}")
    frozen = cfg.BACKBONE_FROZEN_STAGES
    if not isinstance(frozen, int) or isinstance(frozen, bool) or frozen < 0:
        _fail(source, "BACKBONE_FROZEN_STAGES", f"must be an integer >= 0, got {frozen!r}")
    if cfg.EPOCH <= 0:
        _fail(source, "EPOCH", f"must be positive, got {cfg.EPOCH}")
    bounds = list(cfg.EPOCH_BOUNDARY)
    if any(b2 <= b1 for b1, b2 in zip(bounds, bounds[1:])):
        _fail(source, "EPOCH_BOUNDARY", f"must be strictly increasing, got {bounds}")
    if bounds and (bounds[0] <= 0 or bounds[-1] >= cfg.EPOCH):
        _fail(source, "EPOCH_BOUNDARY", f"must lie inside (0, EPOCH={cfg.EPOCH}), "
              f"got {bounds}")
    if cfg.LR <= 0:
        _fail(source, "LR", f"must be positive, got {cfg.LR}")
    for field, choices in _CHOICES.items():
        if getattr(cfg, field) not in choices:
            _fail(source, field, f"must be one of {choices}, got {getattr(cfg, field)!r}")
    flips = cfg.TEST_FLIPS
    if (isinstance(flips, str) or len(set(flips)) != len(flips)
            or any(f not in FLIP_DIRECTIONS for f in flips)):
        _fail(source, "TEST_FLIPS", f"must list distinct 'horizontal' / 'vertical' "
              f"(or be empty), got {flips!r}")
    for field in ("MINE_MIN_SCORE", "MINE_ACCEPT_VOTE", "MINE_ACCEPT_SCORE",
                  "MINE_REJECT_VOTE"):
        if not 0 <= getattr(cfg, field) <= 1:
            _fail(source, field, f"must be in [0, 1], got {getattr(cfg, field)!r}")
    if cfg.MINE_REJECT_VOTE > cfg.MINE_ACCEPT_VOTE:
        _fail(source, "MINE_REJECT_VOTE", "must not exceed MINE_ACCEPT_VOTE")
    for field in ("FAST_RCNN_MAX_INSTANCES", "IGNORE_MAX_REGIONS", "MINE_MAX_PER_IMAGE",
                  "MINE_NEIGHBOURS", "MINE_BASE_CROPS", "MINE_BACKGROUND_CROPS"):
        value = getattr(cfg, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(source, field, f"must be a positive integer, got {value!r}")
    if not isinstance(cfg.NUM_SUPPORTS, int) or cfg.NUM_SUPPORTS < 1:
        _fail(source, "NUM_SUPPORTS", f"must be a positive integer, got {cfg.NUM_SUPPORTS!r}")
    per_step = cfg.REFERENCE_SUPPORTS_PER_STEP
    if per_step is not None and (not isinstance(per_step, int) or per_step < 1):
        _fail(source, "REFERENCE_SUPPORTS_PER_STEP",
              f"must be None or a positive integer, got {per_step!r}")
    for field in ("RPN_POSITIVE_RATIO", "FAST_RCNN_POSITIVE_RATIO", "IGNORE_OVERLAP"):
        if not 0 < getattr(cfg, field) <= 1:
            _fail(source, field, "must be in (0, 1]")
    if not cfg.RPN_NEGATIVE_IOU <= cfg.RPN_POSITIVE_IOU:
        _fail(source, "RPN_NEGATIVE_IOU", "must not exceed RPN_POSITIVE_IOU")
    for field in ("RPN_BBOX_STD_DEV", "BBOX_STD_DEV"):
        if len(getattr(cfg, field)) != 4:
            _fail(source, field, "needs four values (dy, dx, dh, dw)")
    if cfg.RPN_PROPOSALS_TRAIN > cfg.RPN_TOP_K_NMS or \
            cfg.RPN_PROPOSALS_INFERENCE > cfg.RPN_TOP_K_NMS:
        _fail(source, "RPN_TOP_K_NMS", "must be at least the number of proposals kept")
    trainable = cfg.TRAINABLE_VARIABLES
    if trainable is not None and (isinstance(trainable, str) or not all(
            isinstance(p, str) for p in trainable) or not trainable):
        _fail(source, "TRAINABLE_VARIABLES", f"must be None or a non-empty list of "
              f"regular expressions, got {trainable!r}")
    if cfg.MIN_STEPS is not None and (
            not isinstance(cfg.MIN_STEPS, int) or cfg.MIN_STEPS < 1):
        _fail(source, "MIN_STEPS", f"must be a positive integer or None, got "
              f"{cfg.MIN_STEPS!r}")
    if cfg.SCHEDULE_STEPS is not None and (
            not isinstance(cfg.SCHEDULE_STEPS, int) or cfg.SCHEDULE_STEPS < 1):
        _fail(source, "SCHEDULE_STEPS", f"must be a positive integer or None, got "
              f"{cfg.SCHEDULE_STEPS!r}")
    if cfg.NUM_TRAIN_IMAGES is not None and cfg.NUM_TRAIN_IMAGES < 1:
        _fail(source, "NUM_TRAIN_IMAGES", "must be positive or None")


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


def load_config_from_flags(cfg_path, set_items=()):
    return load_config(cfg_path, parse_overrides(set_items))
