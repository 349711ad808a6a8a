"""Every field a config may set: its default and what it means.

A config file (cfgs/*.py) is a Python module whose `Config` class starts from these:

    from libs.configs.defaults import Defaults

    class Config(Defaults):
        NAME = "my_run"
        MODEL_DIR = "output/my_run"
        NUM_CLASS = 4                 # only what differs from the defaults

The defaults are the notebook's Comparison Detector (ResNet-101 v1, side 1024; DESIGN.md
section 5): cfgs/res101_fewshot.py is this class with a name. Where a field departs from
the notebook, the notebook's value is the default and the comment says so. A field that
is not here is refused when a config is loaded (libs/configs/config_loader.py, which
also checks the values). Derived values (towers, batch size, LR boundaries in steps,
backbone shapes) are computed by libs.configs.load_config, never set here.
"""


class Defaults:
    # ---- run -------------------------------------------------------------------------
    # Every config names itself and its run directory (both required; the tools'
    # --model_dir replaces MODEL_DIR for one command).
    NAME = None
    MODEL_DIR = None                          # checkpoints + TensorBoard events
    DATA_DIR = "output/data"                  # TFRecords + label_map.json (converter)
    REFERENCE_DIR = "output/references"       # one folder of images per class name
    TRAIN_SPLIT = "train"
    EVAL_SPLIT = "val"
    BACKBONE_CHECKPOINT = None                     # pretrained TF-slim checkpoint, or None
    # Fine-tuning: start from another run of this project (a checkpoint or a run
    # folder): every variable of the same name; class-sized ones matched by class name
    # (libs/train/warm_start.py); BACKBONE_CHECKPOINT is then ignored (the run holds its backbone).
    # TRAINABLE_VARIABLES: regexes of the variables to train (None: all); the others
    # stay frozen.
    INIT_CHECKPOINT = None
    TRAINABLE_VARIABLES = None
    SEED = 0
    # Named variants of a config: PRESETS maps a name to {FIELD: value}; --set
    # PRESET=name applies that variant when the config is loaded (before the other
    # --set overrides), e.g. the from-scratch variant of the real-data configs.
    PRESET = None
    PRESETS = {}
    SAVE_CHECKPOINTS_STEPS = 500
    SAVE_SUMMARY_STEPS = 50
    LOG_EVERY_N_STEPS = 10
    KEEP_CHECKPOINT_MAX = 5

    # ---- classes -----------------------------------------------------------------------
    NUM_CLASS = 12                            # counts background (class 0): 11 cell types
    NUM_TRAIN_IMAGES = None                   # None: read from the data's label_map.json

    # ---- backbone ----------------------------------------------------------------------
    NET_NAME = "resnet_v1_101"
    # The notebook builds the backbone with is_training=False: batch-norm statistics
    # frozen (weights still trainable). True lets the query branch's batch norm train
    # (from scratch); the reference branch always uses the moving statistics.
    TRAIN_BATCH_NORM = False
    PIXEL_MEANS = [115.2, 118.8, 123.0]       # RGB
    # The backbone sees (RGB - PIXEL_MEANS) / PIXEL_STD: the normalisation its weights
    # were trained with (slim's ResNets: means only; EfficientNet-Lite: 127 and 128).
    PIXEL_STD = [1.0, 1.0, 1.0]
    # k > 0: the stem and the first k stages keep their (pretrained) weights, with no
    # gradient through them - a faster step (efficientnet_lite* only; docs/results.md).
    BACKBONE_FROZEN_STAGES = 0
    TARGET_SIDE = 1024                        # long side after resize; padded square
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]     # P2..P6
    FPN_CHANNELS = 256

    # ---- references (few-shot prototypes) ------------------------------------------------
    NUM_SUPPORTS = 3                          # reference images per class
    REFERENCE_SIDE = 224
    REFERENCE_MARGIN = 0.1                    # context around the object in a reference
    REFERENCE_RANDOM = False                  # notebook: the first NUM_SUPPORTS per class
    # Training only: each step averages a random n of each class's NUM_SUPPORTS
    # references (None: all of them, the notebook). The reference branch then costs
    # n / NUM_SUPPORTS as much (libs/model/reference.py).
    REFERENCE_SUPPORTS_PER_STEP = None
    # True (the notebook): the backbone also learns through the reference branch. False
    # stops those gradients (the prototypes still follow the shared weights): cheaper.
    REFERENCE_GRADIENTS = True
    # "stacked" (the notebook): a conv over the C positive prototypes stacked along
    # channels, sized by the number of classes. "pooled": one conv per prototype,
    # averaged over classes - with BOX_REGRESSION = "class_agnostic" a checkpoint then
    # runs with any number of classes (new classes from references, no retraining).
    BACKGROUND_PROTOTYPE = "stacked"

    # ---- anchors and RPN --------------------------------------------------------------
    BASE_ANCHOR_SIZE_LIST = [32, 64, 128, 256, 512]   # one size per level P2..P6
    ANCHOR_RATIOS = [0.5, 1.0, 2.0]                   # width / height
    ANCHOR_STRIDE = 1
    RPN_CHANNELS = 512
    RPN_POSITIVE_IOU = 0.7
    RPN_NEGATIVE_IOU = 0.3
    RPN_MINIBATCH_SIZE = 256
    RPN_POSITIVE_RATIO = 0.5
    RPN_TOP_K_NMS = 6000
    RPN_NMS_IOU_THRESHOLD = 0.7
    RPN_PROPOSALS_TRAIN = 2000
    RPN_PROPOSALS_INFERENCE = 1000
    RPN_BBOX_STD_DEV = [0.1, 0.1, 0.25, 0.27]

    # ---- Fast R-CNN ----------------------------------------------------------------------
    CLASSIFIER = "comparison"                 # "comparison" (paper) | "fc" (FPN baseline)
    # The notebook passes is_training=False to FastRCNN in every mode: the head's batch
    # norms run on their initial moving statistics. True trains them.
    HEAD_TRAIN_BATCH_NORM = False
    HEAD_BATCH_NORM_DECAY = 0.997             # the notebook's moving-average decay
    # The notebook puts a ReLU on the comparison logits. A class whose normalised score
    # is negative for every ROI then has logit 0 and no gradient, for good: trained
    # from scratch on BCCD every object class died this way (docs/results.md). False
    # keeps the logits linear.
    COMPARISON_RELU = True
    # "learned" (the notebook): conv3d weights of either sign + batch norm over the
    # squared differences. "distance": minus a weighted squared distance (weights >= 0,
    # learned scale), so the nearest prototype wins - also for classes added from
    # references after training (libs/model/classifiers/, docs/fewshot.md).
    COMPARISON_SCORE = "learned"
    ROI_SIZE = 7
    # "by_size" (the notebook): an ROI is pooled from the one level its size picks; a
    # reference's levels are each resized whole and averaged. "all_levels": ROIs and
    # the references' objects (their box inside the crop, REFERENCE_MARGIN) are pooled
    # alike from every level P2..P5 and averaged, so an object and its reference give
    # the same feature whatever the class - also one the model never saw.
    ROI_POOLING = "by_size"
    ROI_CANONICAL_SIZE = 224                  # an ROI of this side is pooled from P4
    # The notebook trains the second stage on RPN proposals only. True also adds the
    # GT boxes to them (Detectron-style), which helps a from-scratch run start.
    ADD_GT_TO_PROPOSALS = False
    HEAD_CHANNELS = 1024
    # "per_class" (the notebook): NUM_CLASS x 4 deltas, the predicted class's are used.
    # "class_agnostic": 4 deltas per ROI, for any class (see BACKGROUND_PROTOTYPE).
    BOX_REGRESSION = "per_class"
    BBOX_STD_DEV = [0.13, 0.13, 0.27, 0.26]
    FAST_RCNN_POSITIVE_IOU = 0.5
    FAST_RCNN_MINIBATCH_SIZE = 200
    FAST_RCNN_POSITIVE_RATIO = 0.33
    # Which ROIs train the second stage (libs/model/sampling.py): "balanced" (the
    # notebook's) takes at most RATIO * MINIBATCH positives and int(1 / RATIO) - 1
    # negatives per positive (1:2), so an image with 10 positive ROIs trains on 30;
    # "fill" (Detectron's and torchvision's rule) tops the positives up with negatives
    # to the full minibatch (an image without positives trains on negatives only).
    FAST_RCNN_SAMPLER = "balanced"
    FAST_RCNN_MAX_INSTANCES = 100             # GT boxes per image after padding/truncation
    # Ignore regions (objects flagged `ignore` in the records: COCO crowds, mined
    # doubtful boxes, VOC difficult with convert's --difficult_as_ignore) train nothing:
    # an anchor or ROI with at least this fraction of its area inside one is no
    # negative (nor positive, unless a real object makes it one).
    IGNORE_OVERLAP = 0.5
    IGNORE_MAX_REGIONS = 100                  # ignore regions per image kept in training
    FRCNN_CLS_LOSS_WEIGHT = 5.0
    MIN_GT_SIZE = 5                           # GT smaller than this (px, after resize) dropped

    # ---- detection ---------------------------------------------------------------------
    DETECTION_NMS_THRESHOLD = 0.3
    DETECTION_MAX_INSTANCES = 200
    # "best" (the notebook): one detection per ROI, its most probable class, none when
    # that is background. "every": one per ROI and object class whose probability
    # passes the threshold (Detectron, torchvision): an ROI the head is unsure of still
    # counts for each class it might be, at its probability.
    DETECTION_CLASSES = "best"
    DETECTION_MIN_CONFIDENCE = 0.5            # display / export threshold
    EVAL_SCORE_THRESHOLD = 0.05               # evaluation keeps low-score detections
    # Test-time flip merging (libs/model/flip_merging.py): () off, or any of "horizontal",
    # "vertical"; each adds a backbone and head pass at evaluation and export.
    TEST_FLIPS = ()

    # ---- mining a new class's unlabelled objects (tools/mine_labels.py) ---------------------
    # Candidates: detections of the new classes with at least MINE_MIN_SCORE, at most
    # MINE_MAX_PER_IMAGE per image (highest first). Each is verified by its MINE_NEIGHBOURS
    # nearest crops in a frozen feature space (libs/mining/verify.py): accepted with a
    # vote >= MINE_ACCEPT_VOTE and a score >= MINE_ACCEPT_SCORE, rejected below
    # MINE_REJECT_VOTE, an ignore region in between. The bank holds the references,
    # MINE_BASE_CROPS per base class and MINE_BACKGROUND_CROPS background boxes.
    MINE_MIN_SCORE = 0.1
    MINE_MAX_PER_IMAGE = 20
    MINE_NEIGHBOURS = 5
    MINE_ACCEPT_VOTE = 0.6
    MINE_ACCEPT_SCORE = 0.5
    MINE_REJECT_VOTE = 0.2
    MINE_BASE_CROPS = 20
    MINE_BACKGROUND_CROPS = 60

    # ---- optimisation --------------------------------------------------------------------
    LR = 0.001
    MOMENTUM = 0.9
    WEIGHT_DECAY = 1e-4
    EPOCH = 60
    EPOCH_BOUNDARY = [35, 50]                 # LR -> LR/10 -> LR/100 at these epochs
    # None: EPOCH epochs. A number of steps runs the same schedule shortened or
    # stretched: every LR boundary keeps its fraction of the run (tools/train.py
    # --max_minutes sets it to fit a time budget; libs/train/time_budget.py).
    SCHEDULE_STEPS = None
    # None: EPOCH epochs whatever the dataset's size. A number: at least this many steps,
    # the LR drops at the same fractions: a dataset of 25 images would otherwise train
    # 500 steps at 20 epochs (docs/small_data.md measured what that costs).
    MIN_STEPS = None
    CLIP_GRADIENT_NORM = 5.0                  # per gradient tensor (clip_by_norm)
    GPU_GROUPS = ["/gpu:0", "/gpu:1"]         # one tower each; CPU devices without GPUs
    PER_GPU_IMAGE = 1
    FLIP_HORIZONTAL = True
    FLIP_VERTICAL = False                     # not in the notebook; for microscopy images
