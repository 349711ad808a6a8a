"""Backbone networks: build_backbone(NET_NAME, images) -> C2..C5 (see backbones.py)."""
from libs.networks.backbones import (BACKBONES, FEATURE_LEVELS, FEATURE_STRIDES,
                                     backbone_channels, build_backbone)

__all__ = ["BACKBONES", "FEATURE_LEVELS", "FEATURE_STRIDES", "backbone_channels",
           "build_backbone"]
