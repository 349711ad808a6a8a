"""Reference configuration: the notebook's Comparison Detector, ResNet-101 v1, side 1024.

The notebook's values are the library's defaults (libs/configs/defaults.py, where every
field is documented), so this config only names itself. Derived values (towers, batch
size, LR boundaries in steps, backbone shapes) are computed by
libs.configs.load_config, never here.
"""
from libs.configs.defaults import Defaults


class Config(Defaults):
    NAME = "res101_fewshot"
    MODEL_DIR = "output/res101_fewshot"
