"""Second-stage classifiers: one module each, behind this registry.

    from libs.model import classifiers
    classifier = classifiers.build(cfg, bn_training)    # the CLASSIFIER's Classifier
    logits = classifier.logits(roi_features, box_features, prototypes)   # [M, K]

    classifiers.names()          -> ("comparison", "fc")     CLASSIFIER's choices
    classifiers.score_names()    -> ("learned", "distance")  COMPARISON_SCORE's choices
    classifiers.uses_prototypes("fc") -> False               needs the reference branch?

A Classifier (below) turns the M ROIs of a batch into class logits [M, K], column 0
the background: from roi_features [M, S, S, F] (the pooled ROIs), box_features
[M, HEAD_CHANNELS] (the box branch's) and prototypes [K, S, S, F] (row 0 the
background; None for a classifier without prototypes). Registered here:

    "comparison"  comparison.py  the Comparison Detector: one learned way of comparing
                                 an ROI with each class's prototype, scored by
                                 COMPARISON_SCORE, one ComparisonScore each:
                  "learned"      comparison.py (the notebook's conv3d + batch norm)
                  "distance"     distance.py (minus a weighted squared distance)
    "fc"          fc.py          the FPN baseline: a linear (FC) layer, one output per
                                 class, no prototypes

A new classifier is one module in this folder defining a Classifier subclass, and
one register(...) line below; config validation (libs/configs) offers its name, and
FastRCNN (libs/model/build_fast_rcnn.py) builds it.

This module does not import TensorFlow: config validation reads the names here, and
must stay cheap. The modules a name points to (which do) are imported by build.
"""
import abc
import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Registered:
    """A name a config may choose, and where its implementation lives."""
    name: str                       # the config value: "comparison"
    target: str                     # "module:Class", imported by build
    uses_prototypes: bool = False   # classifiers: whether it needs the reference branch


_CLASSIFIERS = {}   # CLASSIFIER value -> Registered, in registration order
_SCORES = {}        # COMPARISON_SCORE value -> Registered


class Classifier(abc.ABC):
    """Class logits of the second stage; one subclass per CLASSIFIER value.

    Built once per head (FastRCNN) with the config and whether the head's batch norm
    trains (HEAD_TRAIN_BATCH_NORM in TRAIN); its variables go in the caller's scope
    (fast_rcnn/), under a scope of the classifier's own, reused (tf.AUTO_REUSE) by the
    other views of test-time flip merging.
    """

    def __init__(self, cfg, bn_training):
        self.cfg = cfg
        self.bn_training = bn_training

    @abc.abstractmethod
    def logits(self, roi_features, box_features, prototypes):
        """Logits [M, K]; see the module docstring for the arguments."""


def register(name, target, uses_prototypes):
    """Makes `name` a CLASSIFIER choice implemented by `target` ("module:Class")."""
    _add(_CLASSIFIERS, Registered(name, target, uses_prototypes))


def register_score(name, target):
    """Makes `name` a COMPARISON_SCORE choice implemented by `target` ("module:Class",
    a comparison.ComparisonScore)."""
    _add(_SCORES, Registered(name, target))


def _add(table, entry):
    if entry.name in table:
        raise ValueError(f"{entry.name!r} is already registered")
    table[entry.name] = entry


def names():
    """The CLASSIFIER choices, in registration order."""
    return tuple(_CLASSIFIERS)


def score_names():
    """The COMPARISON_SCORE choices, in registration order."""
    return tuple(_SCORES)


def uses_prototypes(name):
    """Whether CLASSIFIER `name` compares with prototypes (the reference branch)."""
    return _entry(_CLASSIFIERS, "CLASSIFIER", name).uses_prototypes


def build(cfg, bn_training):
    """The Classifier that cfg.CLASSIFIER names."""
    return _load(_entry(_CLASSIFIERS, "CLASSIFIER", cfg.CLASSIFIER))(cfg, bn_training)


def build_score(cfg, bn_training):
    """The comparison classifier's ComparisonScore that cfg.COMPARISON_SCORE names."""
    return _load(_entry(_SCORES, "COMPARISON_SCORE", cfg.COMPARISON_SCORE))(
        cfg, bn_training)


def _entry(table, field, name):
    if name not in table:
        raise ValueError(f"{field} must be one of {tuple(table)}, got {name!r}")
    return table[name]


def _load(entry):
    # Imported here, not at the top: the implementations import TensorFlow, which
    # config validation (a reader of names()) must not pay for.
    module, attribute = entry.target.split(":")
    return getattr(importlib.import_module(module), attribute)


register("comparison", "libs.model.classifiers.comparison:ComparisonClassifier",
         uses_prototypes=True)
register("fc", "libs.model.classifiers.fc:FCClassifier", uses_prototypes=False)

register_score("learned", "libs.model.classifiers.comparison:LearnedScore")
register_score("distance", "libs.model.classifiers.distance:DistanceScore")
