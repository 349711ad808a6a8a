"""Backbone settings shared by the real-data configs (mixins, not configs: no `Config`).

    class Config(EfficientNetLite0, Defaults): ...

EfficientNetLite0: the ImageNet-trained EfficientNet-Lite0 that setup.py installs and
tools/import_backbone.py writes to BACKBONE_CHECKPOINT (make bccd / make deeppcb import it
first), fed as it was trained, batch norm frozen to the checkpoint's statistics (one
image per step), the stem and stages 1-3 (strides 2-8) kept as imported: 1.6x faster
steps (docs/results.md). SCRATCH_BACKBONE: the fields of a config's from-scratch preset
(the small group-norm ResNet of the last release); each config adds its own means and
schedule (PRESETS = {"scratch": {...}}, --set PRESET=scratch).
"""


class EfficientNetLite0:
    NET_NAME = "efficientnet_lite0"
    BACKBONE_CHECKPOINT = "output/pretrained/efficientnet_lite0"
    PIXEL_MEANS = [127.0, 127.0, 127.0]       # (RGB - 127) / 128, as on ImageNet
    PIXEL_STD = [128.0, 128.0, 128.0]
    TRAIN_BATCH_NORM = False                  # the checkpoint's statistics
    BACKBONE_FROZEN_STAGES = 3


SCRATCH_BACKBONE = {
    "NET_NAME": "small_resnet_gn", "BACKBONE_CHECKPOINT": None, "PIXEL_STD": [1.0, 1.0, 1.0],
    "TRAIN_BATCH_NORM": True,                 # (no effect on group norm)
    "BACKBONE_FROZEN_STAGES": 0,
}
