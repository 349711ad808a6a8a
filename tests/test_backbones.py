"""Backbones (libs/model/backbones.py): strides, channels, checkpoint names, reuse, BN."""
import numpy as np
import pytest
from tf_slim.nets import resnet_v1, resnet_v2

from libs.base.tf_compat import seeded_graph, slim, tf
from libs.model import backbones
from libs.model.backbones import (
    BACKBONES,
    FEATURE_LEVELS,
    backbone_channels,
    build_backbone,
)

SLIM_RESNETS = ("resnet_v1_50", "resnet_v1_101", "resnet_v2_50", "resnet_v2_101")
ALL_NETS = SLIM_RESNETS + ("tiny_resnet", "tiny_resnet_gn", "small_resnet_gn",
                           "efficientnet_lite0")
RESNET_CHANNELS = {"C2": 256, "C3": 512, "C4": 1024, "C5": 2048}
TINY_CHANNELS = {"C2": 16, "C3": 32, "C4": 64, "C5": 128}
SMALL_CHANNELS = {"C2": 32, "C3": 64, "C4": 128, "C5": 256}
EXPECTED_CHANNELS = {"tiny_resnet": TINY_CHANNELS, "tiny_resnet_gn": TINY_CHANNELS,
                     "small_resnet_gn": SMALL_CHANNELS,
                     "efficientnet_lite0": {"C2": 24, "C3": 40, "C4": 112, "C5": 320}}
SIDE = 128
REFERENCE_SIDE = 64


# The reuse test covers the notebook's net, the v2 path (its C-levels come from a
# per-call collection) and the tiny net; the other ResNets share their code paths.
REUSE_CHECKED = ("resnet_v1_101", "resnet_v2_50", "tiny_resnet", "small_resnet_gn",
                 "efficientnet_lite0")


class BuiltBackbone:
    """One graph per net: a query call on [1, 128, 128, 3], then a reference call (reuse).

    Static shapes suffice for the strides (TF's shape inference of conv/pool is exact);
    initialising and running the big ResNets would only cost time.
    """

    def __init__(self, net_name):
        self.graph = seeded_graph()
        with self.graph.as_default():
            self.images = tf.placeholder(tf.float32, [1, SIDE, SIDE, 3], name="images")
            self.features = build_backbone(net_name, self.images)
            self.variables_after_query = list(tf.global_variables())
            self.update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
            if net_name in REUSE_CHECKED:
                self.references = tf.zeros([3, REFERENCE_SIDE, REFERENCE_SIDE, 3])
                self.reference_features = build_backbone(net_name, self.references)
                self.variables_after_reference = list(tf.global_variables())


def _moving_means(variables):
    return [v for v in variables if v.op.name.endswith("/moving_mean")]


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(net_name):
        if net_name not in cache:
            cache[net_name] = BuiltBackbone(net_name)
        return cache[net_name]
    return get


def test_registry_lists_every_backbone_and_their_channels():
    assert set(ALL_NETS) <= set(BACKBONES)
    for name in ALL_NETS:
        expected = EXPECTED_CHANNELS.get(name, RESNET_CHANNELS)
        assert backbone_channels(name) == expected


def test_unknown_backbone_is_a_value_error_naming_the_known_ones():
    with seeded_graph().as_default():
        images = tf.zeros([1, 64, 64, 3])
        with pytest.raises(ValueError, match="resnet_v1_101.*tiny_resnet"):
            build_backbone("resnet_v9_7", images)
    with pytest.raises(ValueError, match="known backbones"):
        backbone_channels("vgg16")


@pytest.mark.parametrize("net_name", ALL_NETS)
def test_feature_levels_have_strides_4_to_32_and_documented_channels(built, net_name):
    features = built(net_name).features
    channels = backbone_channels(net_name)
    for level, stride in zip(FEATURE_LEVELS, (4, 8, 16, 32)):
        side = SIDE // stride
        assert features[level].shape.as_list() == [1, side, side, channels[level]], level


def test_tiny_resnet_strides_at_run_time_on_a_non_square_image():
    with seeded_graph().as_default():
        images = tf.placeholder(tf.float32, [1, None, None, 3])
        features = build_backbone("tiny_resnet", images)
        image = np.random.RandomState(0).normal(size=[1, 192, 128, 3])
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = sess.run(features, {images: image})
    for level, stride in zip(FEATURE_LEVELS, (4, 8, 16, 32)):
        assert values[level].shape == (1, 192 // stride, 128 // stride,
                                       TINY_CHANNELS[level]), level
        assert np.all(np.isfinite(values[level]))


@pytest.mark.parametrize("net_name", REUSE_CHECKED)
def test_second_call_shares_variables_and_returns_its_own_features(built, net_name):
    net = built(net_name)
    assert [v.name for v in net.variables_after_reference] == \
        [v.name for v in net.variables_after_query]
    for level, stride in zip(FEATURE_LEVELS, (4, 8, 16, 32)):
        reference = net.reference_features[level]
        assert reference is not net.features[level]
        side = REFERENCE_SIDE // stride
        assert reference.shape.as_list()[:3] == [3, side, side], level


@pytest.mark.parametrize("net_name", ALL_NETS)
def test_frozen_batch_norm_registers_no_update_ops(built, net_name):
    assert built(net_name).update_ops == []


@pytest.mark.parametrize("net_name", SLIM_RESNETS)
@pytest.mark.parametrize("is_training", [False, True])
def test_slim_resnets_get_is_training_and_detector_settings(monkeypatch, net_name,
                                                            is_training):
    # A spy instead of a real training-mode build: slim batch norms in training mode
    # take ~0.2 s each to build on TF 2.15 (tf_keras layers go through autograph), and
    # what matters here is the wiring. Real graphs: the frozen test above (slim's own
    # default is is_training=True, so missing wiring would add UPDATE_OPS) and the
    # tiny_resnet run below (training mode updates the moving statistics).
    class StopBuilding(Exception):
        pass
    received = {}

    def spy(images, **kwargs):
        received.update(kwargs)
        raise StopBuilding

    monkeypatch.setattr(resnet_v1 if "_v1_" in net_name else resnet_v2, net_name, spy)
    with seeded_graph().as_default():
        with pytest.raises(StopBuilding):
            build_backbone(net_name, tf.zeros([1, 64, 64, 3]), is_training=is_training)
    assert received["is_training"] is is_training
    assert received["global_pool"] is False and received["num_classes"] is None
    assert received["scope"] == net_name  # checkpoint variable names start with it
    assert received["reuse"] is tf.AUTO_REUSE


def test_resnet_v1_101_variable_names_match_the_slim_checkpoint(built):
    names = {v.op.name for v in built("resnet_v1_101").variables_after_query}
    assert all(name.startswith("resnet_v1_101/") for name in names)
    for known in ("resnet_v1_101/conv1/weights",
                  "resnet_v1_101/conv1/BatchNorm/moving_mean",
                  "resnet_v1_101/block1/unit_1/bottleneck_v1/shortcut/weights",
                  "resnet_v1_101/block1/unit_1/bottleneck_v1/conv1/BatchNorm/gamma",
                  "resnet_v1_101/block3/unit_23/bottleneck_v1/conv3/weights",
                  "resnet_v1_101/block3/unit_23/bottleneck_v1/conv3/BatchNorm/moving_variance",
                  "resnet_v1_101/block4/unit_3/bottleneck_v1/conv3/BatchNorm/beta"):
        assert known in names, known


@pytest.mark.parametrize("net_name", ["resnet_v1_50", "resnet_v2_50"])
def test_variables_are_those_of_slims_imagenet_classifier(built, net_name):
    # The public checkpoints were written by slim's classifiers: the backbone must hold
    # the same variables, minus the logits layer the detector does not build. (The 101
    # nets differ only in their unit counts; the 50s keep this test fast.)
    names = {v.op.name for v in built(net_name).variables_after_query}
    net_fn = getattr(resnet_v1 if "_v1_" in net_name else resnet_v2, net_name)
    arg_scope = (resnet_v1 if "_v1_" in net_name else resnet_v2).resnet_arg_scope
    with seeded_graph().as_default():
        with slim.arg_scope(arg_scope()):
            # is_training only changes the graph, not the variables (and builds faster).
            net_fn(tf.zeros([1, 224, 224, 3]), num_classes=1000, is_training=False)
        classifier = {v.op.name for v in tf.global_variables()}
    assert names == {name for name in classifier if "/logits/" not in name}


@pytest.mark.parametrize("is_training", [False, True])
def test_is_training_switches_batch_norm_statistics_only(is_training):
    net_name = "tiny_resnet"
    with seeded_graph().as_default():
        images = tf.constant(np.random.RandomState(1).normal(
            2.0, 3.0, size=[2, 64, 64, 3]).astype(np.float32))
        features = build_backbone(net_name, images, is_training=is_training)
        loss = tf.add_n([tf.reduce_mean(tf.square(f)) for f in features.values()])
        update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            train_op = tf.train.GradientDescentOptimizer(1e-6).minimize(loss)
        moving_means = _moving_means(tf.global_variables())
        trainable = {v.op.name for v in tf.trainable_variables()}
        first_conv = [v for v in tf.trainable_variables()
                      if v.op.name == f"{net_name}/conv1/weights"][0]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            means_before, weights_before = sess.run([moving_means, first_conv])
            sess.run(train_op)
            means_after, weights_after = sess.run([moving_means, first_conv])
    assert moving_means
    # The weights train in both modes, batch-norm gamma/beta included ...
    assert not np.array_equal(weights_before, weights_after)
    assert f"{net_name}/conv1/BatchNorm/gamma" in trainable
    assert f"{net_name}/conv1/BatchNorm/beta" in trainable
    # ... but only training mode touches the moving statistics.
    changed = [not np.array_equal(b, a) for b, a in zip(means_before, means_after)]
    if is_training:
        assert len(update_ops) == 2 * len(moving_means)  # mean and variance per BN
        assert all(changed)
    else:
        assert update_ops == []
        assert not any(changed)


@pytest.mark.parametrize("is_training", [False, True])
def test_tiny_resnet_trains_from_scratch(is_training):
    # Regress the mean intensity of each image quadrant (each has its own random
    # offset) from C5: the net must learn, and keep "where" through all its strides.
    rng = np.random.RandomState(2)
    offsets = rng.uniform(-2, 2, size=[4, 2, 1, 2, 1, 1])
    images_np = (rng.normal(size=[4, 2, 64, 2, 64, 3]) + offsets).reshape(4, 128, 128, 3)
    images_np = images_np.astype(np.float32)
    targets_np = images_np.reshape(4, 2, 64, 2, 64, 3).mean(axis=(2, 4, 5))
    with seeded_graph().as_default():
        tf.set_random_seed(0)
        features = build_backbone("tiny_resnet", tf.constant(images_np),
                                  is_training=is_training)
        pooled = tf.nn.avg_pool2d(features["C5"], ksize=2, strides=2, padding="VALID")
        prediction = tf.squeeze(slim.conv2d(pooled, 1, [1, 1], activation_fn=None,
                                            scope="head"), axis=-1)
        loss = tf.reduce_mean(tf.square(prediction - targets_np))
        with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
            train_op = tf.train.AdamOptimizer(1e-2).minimize(loss)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            losses = [sess.run([train_op, loss])[1] for _ in range(30)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.25 * losses[0], losses


def test_group_norm_equals_numpy_and_keeps_slims_variables():
    """backbones.group_norm: slim.group_norm's result and variable names, computed with
    plain NHWC reductions (faster on the CPU)."""
    rng = np.random.RandomState(0)
    x = rng.normal(2.0, 3.0, size=[2, 5, 6, 16]).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    beta = rng.normal(size=16).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    with seeded_graph().as_default(), tf.Session() as sess:
        inputs = tf.constant(x)
        with tf.variable_scope("ours"):
            ours = backbones.group_norm(inputs, groups=4, epsilon=1e-5)
        with tf.variable_scope("slim"):
            theirs = slim.group_norm(inputs, groups=4, epsilon=1e-5)
        names = sorted(v.op.name for v in tf.global_variables())
        for v in tf.global_variables():
            sess.run(v.assign(gamma if v.op.name.endswith("gamma") else beta))
        grads = [tf.gradients(tf.reduce_sum(t * upstream), inputs)[0] for t in (ours, theirs)]
        got, slim_out, (our_grad, slim_grad) = sess.run([ours, theirs, grads])
    assert names == ["ours/GroupNorm/beta", "ours/GroupNorm/gamma",
                     "slim/GroupNorm/beta", "slim/GroupNorm/gamma"]
    grouped = x.reshape(2, 5, 6, 4, 4)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    expected = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * gamma + beta
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, slim_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(our_grad, slim_grad, rtol=1e-3, atol=1e-4)
