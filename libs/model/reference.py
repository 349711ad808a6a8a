"""Reference branch: per-class prototypes from a few reference images (DESIGN.md 4.4).

Reference images [C, K, R, R, 3] (C = NUM_CLASS - 1 classes, K = NUM_SUPPORTS) go
through the SAME backbone and FPN as the query (shared variables). Each pyramid level
P2..P5 is resized bilinearly to ROI_SIZE x ROI_SIZE, averaged over the K supports of a
class, then averaged over the levels -> positives [C, S, S, F]. A learned background
prototype is a 3x3 conv over the positives stacked along channels. Row 0 of the result
is the background:

    prototypes = build_prototypes(reference_images, backbone_fn, cfg)  # [C+1, S, S, F]

The background prototype is chosen by BACKGROUND_PROTOTYPE from BACKGROUND_PROTOTYPES:
  "stacked" (the notebook): a 3x3 conv over the C positives laid side by side along
            channels; its kernel has C*F input channels, so a checkpoint only runs with
            the C classes it was trained on;
  "pooled": the same 3x3 conv (F -> F) applied to each positive prototype, then the
            mean over classes; nothing depends on C, so a checkpoint trained with C
            classes runs with any number of prototypes (new classes from references).

With REFERENCE_SUPPORTS_PER_STEP = n (training only), each step builds every class's
prototype from a random n of its NUM_SUPPORTS references instead of all of them: the
reference branch costs n / NUM_SUPPORTS as much, and the classifier learns to compare
against prototypes from few, varying supports (what it meets with new classes).
"""
from libs.base.tf_compat import slim, tf
from libs.model import preprocessing
from libs.model.roi_pooling import clamped_feature_boxes

PROTOTYPE_LEVELS = ("P2", "P3", "P4", "P5")


def object_box(side, margin):
    """[y1, x1, y2, x2] of the object inside a reference of side x side pixels cropped
    with `margin` of context on each side (tools/make_references.py --margin)."""
    low = side * margin / (1.0 + 2.0 * margin)
    return [low, low, side - low, side - low]


def support_features(reference_pyramid, num_classes, num_supports, roi_size,
                     pooled_box=None, reference_side=None):
    """Pyramid of the C*K reference images -> each reference's feature [C, K, S, S, F].

    Each level is resized whole to S x S (the notebook), or, with pooled_box
    ([y1, x1, y2, x2] in reference pixels; ROI_POOLING "all_levels"), the object's box
    is pooled from it as a query ROI is (crop_and_resize, the same coordinates); the
    levels are averaged.
    """
    if pooled_box is not None:
        return box_features(reference_pyramid, num_classes, num_supports, roi_size,
                            [pooled_box], reference_side)[:, :, 0]
    per_level = [tf.image.resize_bilinear(reference_pyramid[level], [roi_size, roi_size])
                 for level in PROTOTYPE_LEVELS]
    features = tf.reduce_mean(tf.stack(per_level, axis=0), axis=0)
    return tf.reshape(features, [num_classes, num_supports, roi_size, roi_size,
                                 int(features.shape[-1])], name="support_features")


def box_features(reference_pyramid, num_classes, num_supports, roi_size, boxes,
                 reference_side):
    """The V boxes ([y1, x1, y2, x2] reference pixels) pooled from every reference as a
    query ROI is (every level, averaged): [C, K, V, S, S, F]."""
    count, views = num_classes * num_supports, len(boxes)
    per_level = []
    for stride_log2, level in enumerate(PROTOTYPE_LEVELS, 2):
        scaled = clamped_feature_boxes(tf.constant(list(boxes) * count, tf.float32),
                                       2 ** stride_log2, reference_side)
        image_of_box = tf.repeat(tf.range(count), views)
        per_level.append(tf.image.crop_and_resize(reference_pyramid[level], scaled,
                                                  image_of_box, [roi_size, roi_size]))
    features = tf.reduce_mean(tf.stack(per_level, axis=0), axis=0)
    return tf.reshape(features, [num_classes, num_supports, views, roi_size, roi_size,
                                 int(features.shape[-1])], name="box_features")


def average_supports(supports, mask=None):
    """Positive prototypes [C, S, S, F]: each class's mean over its supports [C, K, ...].

    mask (float [C, K], optional): 1 for a real support, 0 for an empty slot (a class
    with fewer references than K); each class averages its real supports only.
    """
    if mask is None:
        return tf.reduce_mean(supports, axis=1, name="positive_prototypes")
    weights = mask / tf.reduce_sum(mask, axis=1, keepdims=True)
    weights = weights[:, :, tf.newaxis, tf.newaxis, tf.newaxis]
    return tf.reduce_sum(supports * weights, axis=1, name="positive_prototypes")


def class_prototypes(reference_pyramid, num_classes, num_supports, roi_size, mask=None,
                     pooled_box=None, reference_side=None):
    """Pyramid of the C*K reference images -> positive prototypes [C, S, S, F]: the
    mean over a class's supports of support_features (the arguments are theirs)."""
    return average_supports(support_features(reference_pyramid, num_classes,
                                             num_supports, roi_size, pooled_box,
                                             reference_side), mask)


def background_prototype(positives, channels, scope="background_prototype"):
    """The notebook's learned background prototype [1, S, S, F] from positives [C, S, S, F].

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


def pooled_background_prototype(positives, channels, scope="background_prototype"):
    """A background prototype [1, S, S, F] that does not depend on the number of classes.

    One 3x3 conv (F -> F, linear) maps each positive prototype to a background guess;
    the guesses are averaged over classes. The conv being linear, that is the conv of
    the mean prototype, but written per class it reads as what it is: a class-count-
    independent summary of what the classes look like.
    """
    with tf.variable_scope(scope, reuse=tf.AUTO_REUSE):
        per_class = slim.conv2d(positives, channels, [3, 3], activation_fn=None,
                                normalizer_fn=None, scope="conv3x3_per_class")
    return tf.reduce_mean(per_class, axis=0, keepdims=True)


BACKGROUND_PROTOTYPES = {"stacked": background_prototype,
                         "pooled": pooled_background_prototype}


def support_mask(counts, num_classes, num_supports):
    """float [C, K]: 1 for the first counts[c] slots of class c (None: every slot)."""
    if counts is None:
        return tf.ones([num_classes, num_supports])
    counts = tf.constant([int(c) for c in counts], tf.int32)
    return tf.sequence_mask(counts, num_supports, dtype=tf.float32)


def sample_supports(images, per_step, seed, mask=None):
    """[C, K, ...] -> [C, per_step, ...]: a random per_step of each class's K supports.

    Stateless: the same seed (model_fn passes SEED and the global step) picks the same
    supports in every tower and on every rerun. With a mask (float [C, K], 0 for empty
    slots) real supports are drawn first; returns (images, mask of the drawn slots).
    """
    num_classes, num_supports = int(images.shape[0]), int(images.shape[1])
    if mask is None:
        mask = tf.ones([num_classes, num_supports])
    keys = tf.random.stateless_uniform([num_classes, num_supports], seed=seed)
    chosen = tf.argsort(keys + 2.0 * (1.0 - mask), axis=1)[:, :per_step]
    return (tf.gather(images, chosen, axis=1, batch_dims=1),
            tf.gather(mask, chosen, axis=1, batch_dims=1))


def build_prototypes(reference_images, pyramid_fn, cfg, support_seed=None, counts=None):
    """reference_images: uint8/float [C, K, R, R, 3] RGB. pyramid_fn: images -> P-dict.

    counts (optional, [C] ints): real references per class, the rest of its K slots
    being empty. support_seed (int64 [2]), in training only: build each prototype from
    a random REFERENCE_SUPPORTS_PER_STEP of the supports (all of them when None).
    Returns prototypes [C + 1, ROI_SIZE, ROI_SIZE, FPN_CHANNELS], background first.
    """
    with tf.name_scope("reference_branch"):
        shape = reference_images.shape.as_list()
        num_classes = shape[0]
        if num_classes != cfg.NUM_CLASS - 1:
            raise ValueError(f"reference images hold {num_classes} classes but NUM_CLASS "
                             f"is {cfg.NUM_CLASS} (background + {cfg.NUM_CLASS - 1})")
        mask = support_mask(counts, num_classes, shape[1])
        per_step = cfg.REFERENCE_SUPPORTS_PER_STEP
        if support_seed is not None and per_step and per_step < shape[1]:
            reference_images, mask = sample_supports(reference_images, per_step,
                                                     support_seed, mask)
        num_supports = int(reference_images.shape[1])
        images = tf.reshape(tf.cast(reference_images, tf.float32),
                            [num_classes * num_supports] + shape[2:])
        images = preprocessing.normalize_pixels(images, cfg.PIXEL_MEANS, cfg.PIXEL_STD)
        pyramid = pyramid_fn(images)
        if not cfg.REFERENCE_GRADIENTS:
            # The backbone then learns from the query branch only: the reference
            # branch's backward pass (two thirds of its cost) is not computed.
            pyramid = {level: tf.stop_gradient(value) for level, value in pyramid.items()}
        pooled_box = (object_box(cfg.REFERENCE_SIDE, cfg.REFERENCE_MARGIN)
                      if cfg.ROI_POOLING == "all_levels" else None)
        supports = support_features(pyramid, num_classes, num_supports, cfg.ROI_SIZE,
                                    pooled_box, cfg.REFERENCE_SIDE)
        positives = average_supports(supports, mask)
        background = BACKGROUND_PROTOTYPES[cfg.BACKGROUND_PROTOTYPE](positives,
                                                                    cfg.FPN_CHANNELS)
        prototypes = tf.concat([background, positives], axis=0, name="prototypes")
        return prototypes
