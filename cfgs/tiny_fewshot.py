"""Tiny few-shot configuration: add a class from references, on ImageNet features.

The tiny demo (tiny_cpu) on the ImageNet EfficientNet-Lite0 instead of a from-scratch
ResNet, with the head that runs with classes it never saw (docs/fewshot.md): trained on
some classes of the generated sample, a checkpoint exported with references of another
class detects it without retraining (tests/test_fewshot_e2e.py; measured figures in
docs/fewshot.md). What differs from tiny_cpu, and why:

- Backbone: Lite0 from BACKBONE_CHECKPOINT (python tools/import_backbone.py --name
  efficientnet_lite0), every stage frozen: 72 toy images would otherwise pull the
  features towards "the base classes or background", the premise that failed from
  scratch; only the FPN and the heads train.
- Side 256: the sample's objects (10-40 px) become 20-80 px, the sizes the stride-4..32
  ImageNet features resolve.
- The new-class head: no weight sized by the number of classes (pooled background
  prototype, class-agnostic boxes), a nearer prototype scores higher (distance), and
  ROIs and references pooled alike from every level (all_levels). With by-size pooling
  the same model found the new class at AP 0.16, with all-levels pooling at 0.80.
"""
from cfgs.imagenet_backbone import EfficientNetLite0
from cfgs.tiny_cpu import Config as TinyCpu


class Config(EfficientNetLite0, TinyCpu):
    NAME = "tiny_fewshot"
    MODEL_DIR = "output/tiny_fewshot"
    BACKBONE_FROZEN_STAGES = 7                # the whole backbone (Lite0 has 7 stages)
    TARGET_SIDE = 256

    COMPARISON_SCORE = "distance"
    BACKGROUND_PROTOTYPE = "pooled"
    BOX_REGRESSION = "class_agnostic"
    ROI_POOLING = "all_levels"

    NUM_SUPPORTS = 3                          # make fewshot-demo crops 3 per class

    EPOCH = 20
    EPOCH_BOUNDARY = [15, 18]
