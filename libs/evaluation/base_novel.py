"""Base and novel classes of the few-shot protocol (DESIGN.md section 9): which
classes are which, and the mean VOC AP@0.5 over each set (bAP50, nAP50).

    base, novel = split_base_novel(class_names, ["RBC"])      # both in class order
    base_novel_ap(results, class_names, ["RBC"]) -> {BASE_AP: ..., NOVEL_AP: ...}

results: a dict of DetectionEvaluator.evaluate (libs/evaluation/detection_evaluator.py).
"""
import numpy as np

from libs.base.errors import UserError

BASE_AP = "voc/bAP@0.5"
NOVEL_AP = "voc/nAP@0.5"


class UnknownClassError(UserError):
    """A class named (--novel_classes) that the class list does not hold; the message
    is one line for the user."""


def split_base_novel(class_names, novel_classes):
    """(base names, novel names), both in class_names order; base = every other class.

    Raises UnknownClassError naming the known classes when a novel name is not one of
    them (a typo would otherwise silently count the class as base).
    """
    class_names = list(class_names)
    novel = set(novel_classes or [])
    unknown = [name for name in dict.fromkeys(novel_classes or []) if name not in class_names]
    if unknown:
        raise UnknownClassError(f"--novel_classes: unknown class(es) "
                                f"{', '.join(repr(n) for n in unknown)}; known: "
                                f"{', '.join(class_names)}")
    return ([name for name in class_names if name not in novel],
            [name for name in class_names if name in novel])


def mean_ap(results, class_names):
    """Mean VOC AP@0.5 of `class_names` in `results`, classes with an undefined (NaN) AP
    left out as voc/mAP@0.5 does; NaN when none is defined."""
    aps = [results.get(f"voc/AP@0.5/{name}", float("nan")) for name in class_names]
    aps = [ap for ap in aps if not np.isnan(ap)]
    return float(np.mean(aps)) if aps else float("nan")


def base_novel_ap(results, class_names, novel_classes):
    """bAP50 and nAP50 of the few-shot protocol (DESIGN.md section 9).

    {BASE_AP: mean AP@0.5 over the base classes (every class of class_names not in
    novel_classes), NOVEL_AP: mean over the novel classes}, each by mean_ap. Raises
    UnknownClassError (one line, naming the known classes) for a novel name not in
    class_names.
    """
    base, novel = split_base_novel(class_names, novel_classes)
    return {BASE_AP: mean_ap(results, base), NOVEL_AP: mean_ap(results, novel)}
