"""BCCD (blood cells: RBC, WBC, Platelets) on a 2-core CPU, from ImageNet weights.

    make bccd          # import the weights, convert, crop references, train, evaluate

The model is the Comparison Detector of res101_fewshot (every value not set here is
the library's default, the notebook's: libs/configs/defaults.py). What differs, and
why, for a short run on a CPU:

- Backbone: EfficientNet-Lite0 with ImageNet weights (cfgs/imagenet_backbone.py:
  tools/import_backbone.py writes them to BACKBONE_CHECKPOINT from the package setup.py
  installs), input (RGB - 127) / 128 as it was trained, batch norm frozen to the
  checkpoint's statistics (one image per step), stem and stages 1-3 frozen. From
  scratch, as before the weights could be had (a half-width group-norm ResNet-18):
  --set PRESET=scratch.
- The head's batch norms train (HEAD_TRAIN_BATCH_NORM): frozen at their initial
  statistics the comparison logits ReLU(w . d^2) start dead (see tiny_cpu.py).
- Side 512 (BCCD is 640x480): cells are then Platelets ~32 px, RBC ~81 px, WBC ~152
  px (medians of the train split), inside the anchors 16..256 of P2..P6. At side 384
  (the from-scratch model's) pretrained platelets scored 0.755 against 0.802 here
  (docs/results.md, trials P1 and P4).
- Proposals and detections sized for at most 30 objects per image.
- Detection NMS 0.5 instead of the notebook's 0.3: red cells touch and overlap; at 0.3
  NMS removes real neighbouring cells.
- Cells have no up or down: vertical flips double the augmentation of horizontal ones.
- Linear comparison logits (COMPARISON_RELU = False), see below.
- Speed (docs/training.md): each step builds the prototypes from 2 of each class's 5
  references (REFERENCE_SUPPORTS_PER_STEP; all 5 at evaluation and export), and the
  RPN's 3x3 conv has 64 channels (the FPN's width) instead of 128.
- make bccd fits the schedule into its budget (--max_minutes scales every LR stage
  down together on a slower CPU); figures in docs/results.md.
"""
from cfgs.imagenet_backbone import SCRATCH_BACKBONE, EfficientNetLite0
from libs.configs.defaults import Defaults


class Config(EfficientNetLite0, Defaults):
    NAME = "bccd_cpu"
    MODEL_DIR = "output/bccd_cpu"
    DATA_DIR = "output/bccd/data"
    REFERENCE_DIR = "output/bccd/references"
    SAVE_CHECKPOINTS_STEPS = 1000
    SAVE_SUMMARY_STEPS = 100
    LOG_EVERY_N_STEPS = 100

    NUM_CLASS = 4                             # background + Platelets, RBC, WBC

    # NET_NAME, BACKBONE_CHECKPOINT, PIXEL_MEANS / PIXEL_STD, frozen batch norm and stages:
    # EfficientNetLite0 (cfgs/imagenet_backbone.py).
    HEAD_TRAIN_BATCH_NORM = True
    HEAD_BATCH_NORM_DECAY = 0.99
    # With the notebook's ReLU every object class's logit went to 0 for good within
    # 1000 steps here (fast R-CNN loss flat at the class prior through 8000 steps, no
    # detection on val); linear logits keep every class trainable.
    COMPARISON_RELU = False
    TARGET_SIDE = 512
    FPN_CHANNELS = 64

    NUM_SUPPORTS = 5                          # tools/make_references.py --per_class 5
    REFERENCE_SUPPORTS_PER_STEP = 2
    REFERENCE_SIDE = 96

    BASE_ANCHOR_SIZE_LIST = [16, 32, 64, 128, 256]
    RPN_CHANNELS = 64
    RPN_TOP_K_NMS = 2000
    RPN_PROPOSALS_TRAIN = 600
    RPN_PROPOSALS_INFERENCE = 300

    HEAD_CHANNELS = 256
    ROI_CANONICAL_SIZE = 112                  # 224 scaled by 512 / 1024
    ADD_GT_TO_PROPOSALS = True
    FAST_RCNN_MINIBATCH_SIZE = 128
    FAST_RCNN_MAX_INSTANCES = 40
    MIN_GT_SIZE = 4
    DETECTION_NMS_THRESHOLD = 0.5
    DETECTION_MAX_INSTANCES = 100

    LR = 0.005
    EPOCH = 20
    EPOCH_BOUNDARY = [15, 18]
    GPU_GROUPS = ["/cpu:0"]
    PER_GPU_IMAGE = 1
    FLIP_VERTICAL = True

    # The from-scratch model of the last release (docs/results.md: val 0.853 in 55
    # minutes): --set PRESET=scratch.
    PRESETS = {"scratch": dict(
        SCRATCH_BACKBONE, PIXEL_MEANS=[115.2, 118.8, 123.0], TARGET_SIDE=384,
        ROI_CANONICAL_SIZE=84,
        LR=0.01, EPOCH=80, EPOCH_BOUNDARY=[60, 72])}
