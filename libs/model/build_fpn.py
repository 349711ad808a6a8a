"""Feature pyramid (DESIGN.md section 4.2): C2..C5 -> P2..P6, FPN_CHANNELS channels each.

1x1 lateral convs, top-down nearest-neighbour upsampling + add, 3x3 smoothing; P6 is a
stride-2 max-pool of P5 (only the RPN uses it). Built under the scope `build_pyramid`
with reuse=AUTO_REUSE so the reference branch shares the query branch's weights.
"""
from libs.base.tf_compat import slim, tf


def _upsample_like(small, large):
    size = tf.shape(large)[1:3]
    return tf.image.resize_nearest_neighbor(small, size, name="upsample")


def build_feature_pyramid(share_net, channels=256, scope="build_pyramid",
                          reuse=tf.AUTO_REUSE):
    """share_net: dict with C2..C5. Returns dict P2..P6 (strides 4..64)."""
    pyramid = {}
    with tf.variable_scope(scope, reuse=reuse):
        # Weight decay is applied in model_fn over all trainable weights (the notebook's
        # size-normalised L2), not through per-layer regularizers.
        with slim.arg_scope([slim.conv2d], activation_fn=None, normalizer_fn=None):
            pyramid["P5"] = slim.conv2d(share_net["C5"], channels, [1, 1], scope="C5")
            for level in (4, 3, 2):
                lateral = slim.conv2d(share_net[f"C{level}"], channels, [1, 1],
                                      scope=f"build_P{level}/reduce_dimension")
                upper = pyramid[f"P{level + 1}"]
                pyramid[f"P{level}"] = tf.add(_upsample_like(upper, lateral), lateral,
                                              name=f"build_P{level}/add")
            for level in (2, 3, 4, 5):
                pyramid[f"P{level}"] = slim.conv2d(pyramid[f"P{level}"], channels, [3, 3],
                                                   scope=f"fuse_P{level}")
            pyramid["P6"] = slim.max_pool2d(pyramid["P5"], [2, 2], stride=2,
                                            scope="P6_subsampling")
    return pyramid
