"""A class the model never saw, added from references alone, end to end.

cfgs/tiny_fewshot.py (the tiny model on ImageNet EfficientNet-Lite0 features, with the
head of docs/fewshot.md: no weight sized by the number of classes, a nearer prototype
scores higher, ROIs and references pooled from every level) is trained on two classes
of the generated sample, cells and crystals; spores never appear in its training
images. The checkpoint is then exported, without retraining, with
  - references of all three classes (crops of other images): spores must be found and
    named, and the trained classes kept;
  - the same references under other names, in another order ("angular" = crystals,
    "round" = cells, "triangle" = spores): the SavedModel must name them so, which
    means classification follows the prototypes, not a weight row per trained class
    (rows 1 and 2 were cell and crystal: a head that scored by row would swap cells
    and crystals).

Measured (2026-11-29, seed 0; docs/fewshot.md): spore AP@0.5 0.80 from three reference
crops (0.75 on another sample seed); the same model pooling by size 0.16, and 0.04
from scratch (issue 14). One base class is not enough even on ImageNet features: cells
alone, then crystals or spores from references, 0.22 / 0.12 (the model only learned
"cell or not").

Objects of a class left out of the reference set are not rejected: the head ranks the
given prototypes and the background (a closed set; docs/fewshot.md). With crystals
left out, round / triangle scored 0.60 / 0.53 on this fixture, for that reason
(bench/new_class_sample.py --leave_out); a per-class distance radius did not change
that (measured in docs/fewshot.md; its code was removed after commit 42ca905).
"""
import pytest

from bench.new_class_sample import average_precision, build

TRAINED = ["cell", "crystal"]
NEW = "spore"
RENAMED = {"angular": "crystal", "round": "cell", "triangle": "spore"}  # export name: crops
# Measured on this fixture (seed 0): cell 0.70, crystal 0.91, spore 0.80, renamed the
# same; the bound leaves room for other CPUs' rounding. Without the new class's
# prototype working (by-size pooling, or features trained from scratch) spores score
# 0.16 or less.
MIN_AP = 0.5


@pytest.fixture(scope="module")
def exports(tmp_path_factory, imported_lite0):
    """bench/new_class_sample.py's recipe (the first row of its table), exported twice:
    every class under its own name, and renamed."""
    return build(tmp_path_factory.mktemp("fewshot"), TRAINED, NEW, imported_lite0[0],
                 exports={"all": {name: name for name in TRAINED + [NEW]},
                          "renamed": RENAMED})


def test_a_class_never_trained_on_is_found_from_references(exports):
    found = average_precision(exports["all"], exports["voc"],
                              {name: name for name in TRAINED + [NEW]})
    for name in TRAINED + [NEW]:
        assert found[name] >= MIN_AP, found


def test_classes_defined_by_references_are_found_and_named(exports):
    found = average_precision(exports["renamed"], exports["voc"], RENAMED)
    for name in RENAMED:
        assert found[name] >= MIN_AP, found
