"""ROI pooling from the feature pyramid: each ROI's S x S features (ROI_POOLING).

"by_size" (roi_align): from the level P2..P5 that suits the ROI's size (assign_levels);
"all_levels" (roi_align_all_levels): the mean over P2..P5, as the references are pooled
(libs/model/reference.py).
"""
import math

from libs.base.tf_compat import tf

ROI_LEVELS = (2, 3, 4, 5)


def assign_levels(rois, canonical_size=224.0, canonical_level=4):
    """FPN level of each ROI: clamp(round(4 + log2(sqrt(wh) / canonical)), 2, 5)."""
    heights = rois[:, 2] - rois[:, 0]
    widths = rois[:, 3] - rois[:, 1]
    # Zero-area rows (padding) get log2(0) = -inf and land on the lowest level.
    scale = tf.sqrt(tf.maximum(heights * widths, 0.0))
    level = canonical_level + tf.math.log(scale / canonical_size) / math.log(2.0)
    level = tf.clip_by_value(tf.round(level), ROI_LEVELS[0], ROI_LEVELS[-1])
    return tf.cast(level, tf.int32)


def feature_boxes(boxes, stride, image_side):
    """Image-pixel boxes -> crop_and_resize's coordinates on a stride-s feature map.

    Pixel centres of a stride-s feature map sit at (i + 0.5) * s in the image, so an
    image coordinate y maps to feature coordinate y / s - 0.5, normalised by (H_f - 1)
    as crop_and_resize expects.
    """
    feature_side = image_side // stride
    return (boxes / stride - 0.5) / float(max(feature_side - 1, 1))


def clamped_feature_boxes(boxes, stride, image_side):
    """feature_boxes, clamped to the map's cell centres.

    crop_and_resize samples nothing beyond the outermost cell centres: it returns 0
    there. On a coarse level of a small image (P5 of a 64-pixel reference is 2 x 2
    cells, centred 16 px from each border) most of an object's box lies out there;
    clamping the box to the centres samples the edge cells instead.
    """
    return tf.clip_by_value(feature_boxes(boxes, stride, image_side), 0.0, 1.0)


def roi_align_all_levels(pyramid, rois, batch_size, rois_per_image, crop_size,
                         image_side):
    """Pools each ROI [M, 4] (image pixels) from every level P2..P5: the mean of the four
    S x S crops (ROI_POOLING "all_levels"; the references are pooled the same way).
    Boxes are clamped to each map's cell centres (clamped_feature_boxes).

    Padding rows (all-zero boxes: the minibatch's filler, label -1) pool zeros, as in
    roi_align: clamped, [0, 0, 0, 0] would sample the image's top-left cell on every
    level, and those rows (most of a training minibatch while the RPN finds few
    positives) enter the head's batch-norm statistics with the corner's content.
    """
    with tf.name_scope("roi_align_all_levels"):
        if batch_size is None:
            batch_size = tf.shape(pyramid["P2"])[0]
        box_indices = tf.repeat(tf.range(batch_size), rois_per_image)
        crops = [tf.image.crop_and_resize(
            pyramid[f"P{level}"], tf.stop_gradient(clamped_feature_boxes(
                rois, 2 ** level, image_side)),
            box_indices, [crop_size, crop_size], method="bilinear")
                 for level in ROI_LEVELS]
        is_real = tf.cast(tf.reduce_any(tf.not_equal(rois, 0.0), axis=1), crops[0].dtype)
        return tf.multiply(tf.reduce_mean(tf.stack(crops, axis=0), axis=0),
                           is_real[:, tf.newaxis, tf.newaxis, tf.newaxis],
                           name="roi_features")


def roi_align(pyramid, rois, levels, batch_size, rois_per_image, crop_size, image_side):
    """Pools each ROI [M, 4] (image pixels) from its level: crop_and_resize to S x S."""
    with tf.name_scope("roi_align"):
        if batch_size is None:
            batch_size = tf.shape(pyramid["P2"])[0]
        box_indices = tf.repeat(tf.range(batch_size), rois_per_image)
        order, crops = [], []
        for level in ROI_LEVELS:
            stride = 2 ** level
            chosen = tf.where(tf.equal(levels, level))[:, 0]
            boxes = feature_boxes(tf.gather(rois, chosen), stride, image_side)
            crops.append(tf.image.crop_and_resize(
                pyramid[f"P{level}"], tf.stop_gradient(boxes),
                tf.gather(box_indices, chosen), [crop_size, crop_size],
                method="bilinear"))
            order.append(chosen)
        order = tf.concat(order, axis=0)
        crops = tf.concat(crops, axis=0)
        # Back to the ROIs' order: row i of the result is the crop of rois[i].
        return tf.gather(crops, tf.argsort(order), name="roi_features")
