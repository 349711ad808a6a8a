"""Reference branch: per-class prototypes from a few reference images (DESIGN.md 4.4).

Reference images [C, K, R, R, 3] (C = NUM_CLASS - 1 classes, K = NUM_SUPPORTS) go
through the SAME backbone and FPN as the query (shared variables). Each pyramid level
P2..P5 is resized bilinearly to ROI_SIZE x ROI_SIZE, averaged over the K supports of a
class, then averaged over the levels -> positives [C, S, S, F]. A learned background
prototype is a 3x3 conv over the positives stacked along channels. Row 0 of the result
is the background:

    prototypes = build_prototypes(reference_images, backbone_fn, cfg)  # [C+1, S, S, F]
"""
from libs.tf_compat import slim, tf

PROTOTYPE_LEVELS = ("P2", "P3", "P4", "P5")


def class_prototypes(reference_pyramid, num_classes, num_supports, roi_size):
    """Pyramid of the C*K reference images -> positive prototypes [C, S, S, F]."""
    per_level = []
    for level in PROTOTYPE_LEVELS:
        features = tf.image.resize_bilinear(reference_pyramid[level], [roi_size, roi_size])
        channels = features.shape[-1]
        features = tf.reshape(features, [num_classes, num_supports, roi_size, roi_size,
                                         channels])
        per_level.append(tf.reduce_mean(features, axis=1))
    return tf.reduce_mean(tf.stack(per_level, axis=0), axis=0, name="positive_prototypes")


def background_prototype(positives, channels, scope="background_prototype"):
    """The learned background prototype [1, S, S, F] from positives [C, S, S, F].

    The C positive prototypes are laid side by side along channels ([1, S, S, C*F]) and
    a 3x3 conv maps them to F channels: the background is learned as a function of what
    the classes look like. Linear (no activation), like the FPN features it is compared
    with.
    """
    num_classes, size = int(positives.shape[0]), int(positives.shape[1])
    stacked = tf.transpose(positives, [1, 2, 0, 3])
    stacked = tf.reshape(stacked, [1, size, size, num_classes * int(channels)])
    with tf.variable_scope(scope, reuse=tf.AUTO_REUSE):
        return slim.conv2d(stacked, channels, [3, 3], activation_fn=None,
                           normalizer_fn=None, scope="conv3x3")


def build_prototypes(reference_images, pyramid_fn, cfg):
    """reference_images: uint8/float [C, K, R, R, 3] RGB. pyramid_fn: images -> P-dict.

    Returns prototypes [NUM_CLASS, ROI_SIZE, ROI_SIZE, FPN_CHANNELS], background first.
    """
    with tf.name_scope("reference_branch"):
        shape = reference_images.shape.as_list()
        num_classes, num_supports = shape[0], shape[1]
        if num_classes != cfg.NUM_CLASS - 1:
            raise ValueError(f"reference images hold {num_classes} classes but NUM_CLASS "
                             f"is {cfg.NUM_CLASS} (background + {cfg.NUM_CLASS - 1})")
        images = tf.reshape(tf.cast(reference_images, tf.float32),
                            [num_classes * num_supports] + shape[2:])
        images = images - tf.constant(cfg.PIXEL_MEANS, tf.float32)
        pyramid = pyramid_fn(images)
        positives = class_prototypes(pyramid, num_classes, num_supports, cfg.ROI_SIZE)
        background = background_prototype(positives, cfg.FPN_CHANNELS)
        return tf.concat([background, positives], axis=0, name="prototypes")
