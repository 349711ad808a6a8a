"""EfficientNet-Lite0/1/2 in tf-slim, with the variable names the importer writes.

EfficientNet-Lite (Tan & Le's EfficientNet, the variant for mobile accelerators): a
3x3 stride-2 stem, seven stages of MBConv blocks (1x1 expand -> kxk depthwise -> 1x1
project, residual when the shape allows), a 1x1 head conv to 1280 channels and the
classifier. What makes it "Lite": no squeeze-excitation, ReLU6 instead of swish, and
the stem (32 channels), head (1280), first and last stages are not scaled with the
variant. Batch norm has epsilon 1e-3; convolutions pad TF "SAME"; the ImageNet weights
expect (RGB - 127) / 128.

Variables (scope = variant name, e.g. ``efficientnet_lite0``):

    <scope>/stem/{weights, BatchNorm/*}
    <scope>/stage<s>/unit_<u>/{expand, depthwise, project}/...   (s = 1..7, u = 1..)
    <scope>/head/...  <scope>/logits/{weights, biases}          (classifier only)

``efficientnet_lite(images, variant)`` returns (net, end_points) like tf-slim's nets:
end points "<scope>/stem", "<scope>/stage1".."stage7", "<scope>/head", "<scope>/logits".
The detector uses the stage outputs at strides 4, 8, 16, 32 (stages 2, 3, 5, 7) as
C2..C5 (backbones.py); the classifier exists to prove an import right on ImageNet.

``frozen_stages`` k > 0 freezes the stem and stages 1..k: their variables are not
trainable and no gradient flows back through them (k = 3 freezes everything above
stride 16, the part that costs most per pixel).
"""
import collections
import math

from libs.base.tf_compat import slim, tf

# One stage: `repeats` blocks of kernel `kernel`; the first has stride `stride`, input
# channels `inputs` and expansion `expand`; every block outputs `outputs` channels.
StageSpec = collections.namedtuple("StageSpec", "repeats kernel stride expand inputs outputs")

# EfficientNet-B0's stages (the Lite variants use the same, scaled below).
BASE_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BATCH_NORM_EPSILON = 1e-3
NUM_IMAGENET_CLASSES = 1000
# The input normalisation the ImageNet weights were trained with: (RGB - mean) / std.
INPUT_MEAN = 127.0
INPUT_STD = 128.0

# (width multiplier, depth multiplier, ImageNet training resolution)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
# Stride of each stage's output (stem: 2).
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)
# The detector's C-levels: the last stage of each stride 4, 8, 16, 32.
FEATURE_STAGES = {"C2": 2, "C3": 3, "C4": 5, "C5": 7}


def round_filters(channels, width, divisor=8):
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (as trained).

    Rounds to the nearest multiple, but never more than 10% down.
    """
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats, depth):
    return int(math.ceil(depth * repeats))


def stage_specs(variant):
    """The seven StageSpecs of ``variant``, scaled as its weights were trained.

    Lite keeps the stem and head fixed, and the first and last stages' repeats too
    (the first stage's input is the fixed 32-channel stem).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: "
                         f"{', '.join(sorted(VARIANTS))}")
    width, depth, _ = VARIANTS[variant]
    specs = []
    last = len(BASE_STAGES) - 1
    for index, spec in enumerate(BASE_STAGES):
        fixed_depth = index in (0, last)
        specs.append(spec._replace(
            repeats=spec.repeats if fixed_depth else round_repeats(spec.repeats, depth),
            inputs=STEM_CHANNELS if index == 0 else round_filters(spec.inputs, width),
            outputs=round_filters(spec.outputs, width)))
    return tuple(specs)


def feature_channels(variant):
    """Channels of C2..C5 for ``variant`` (no graph needed)."""
    specs = stage_specs(variant)
    return {level: specs[stage - 1].outputs for level, stage in FEATURE_STAGES.items()}


def block_names(variant):
    """[(stage, unit)] of every MBConv block, in network order (the importer's index)."""
    return [(stage, unit) for stage, spec in enumerate(stage_specs(variant), 1)
            for unit in range(1, spec.repeats + 1)]


def efficientnet_lite_arg_scope(weight_decay=1e-5):
    """conv -> batch norm (epsilon 1e-3, frozen by the caller) -> ReLU6, "SAME" padding."""
    batch_norm_params = {"epsilon": BATCH_NORM_EPSILON, "scale": True, "decay": 0.99,
                         "updates_collections": tf.GraphKeys.UPDATE_OPS}
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d],
                        weights_regularizer=slim.l2_regularizer(weight_decay),
                        weights_initializer=slim.variance_scaling_initializer(),
                        normalizer_fn=slim.batch_norm, activation_fn=tf.nn.relu6,
                        padding="SAME", biases_initializer=None):
        with slim.arg_scope([slim.batch_norm], **batch_norm_params) as scope:
            return scope


def mbconv_block(inputs, spec, stride, input_channels, scope):
    """One MBConv block without squeeze-excitation; residual when shapes allow."""
    with tf.variable_scope(scope, values=[inputs]):
        net = inputs
        if spec.expand != 1:
            net = slim.conv2d(net, input_channels * spec.expand, [1, 1], scope="expand")
        net = slim.separable_conv2d(net, None, [spec.kernel, spec.kernel],
                                    depth_multiplier=1, stride=stride, scope="depthwise")
        net = slim.conv2d(net, spec.outputs, [1, 1], activation_fn=None, scope="project")
        if stride == 1 and input_channels == spec.outputs:
            net = net + inputs
        return net


def efficientnet_lite(images, variant="efficientnet_lite0", is_training=False,
                      frozen_stages=0, include_classifier=False,
                      reuse=None, scope=None):
    """EfficientNet-Lite on images already normalised ((RGB - 127) / 128 for ImageNet).

    include_classifier: add the head conv, global average pool and the 1000 ImageNet
      logits (end point "<scope>/logits", [B, 1000]).
    is_training: batch-norm mode; the pretrained detector keeps it False (moving
      statistics of the checkpoint, one image per tower).
    """
    specs = stage_specs(variant)
    if not 0 <= frozen_stages <= len(specs):
        raise ValueError(f"frozen_stages must be in 0..{len(specs)}, got {frozen_stages}")
    scope = scope or variant
    with tf.variable_scope(scope, values=[images], reuse=reuse) as sc:
        end_points = collections.OrderedDict()
        with slim.arg_scope([slim.batch_norm], is_training=is_training):
            with slim.arg_scope([slim.conv2d, slim.separable_conv2d, slim.batch_norm],
                                trainable=frozen_stages == 0):
                net = slim.conv2d(images, STEM_CHANNELS, [3, 3], stride=2, scope="stem")
            end_points[f"{sc.name}/stem"] = net
            channels = STEM_CHANNELS
            for stage, spec in enumerate(specs, 1):
                with slim.arg_scope([slim.conv2d, slim.separable_conv2d, slim.batch_norm],
                                    trainable=stage > frozen_stages):
                    for unit in range(1, spec.repeats + 1):
                        net = mbconv_block(net, spec, spec.stride if unit == 1 else 1,
                                           channels, scope=f"stage{stage}/unit_{unit}")
                        channels = spec.outputs
                if stage <= frozen_stages:   # also for C2, C3 taken from here
                    net = tf.stop_gradient(net)
                end_points[f"{sc.name}/stage{stage}"] = net
            if include_classifier:
                net = slim.conv2d(net, HEAD_CHANNELS, [1, 1], scope="head")
                end_points[f"{sc.name}/head"] = net
                net = tf.reduce_mean(net, axis=[1, 2], keepdims=True)
                net = slim.conv2d(net, NUM_IMAGENET_CLASSES, [1, 1], activation_fn=None,
                                  normalizer_fn=None,
                                  biases_initializer=tf.zeros_initializer(), scope="logits")
                net = tf.squeeze(net, axis=[1, 2])
                end_points[f"{sc.name}/logits"] = net
        return net, end_points


def classify(images, variant="efficientnet_lite0", reuse=None):
    """ImageNet logits [B, 1000] of uint8/float RGB images (normalised here)."""
    images = (tf.cast(images, tf.float32) - INPUT_MEAN) / INPUT_STD
    with slim.arg_scope(efficientnet_lite_arg_scope()):
        logits, _ = efficientnet_lite(images, variant, include_classifier=True,
                                      reuse=reuse)
    return logits
