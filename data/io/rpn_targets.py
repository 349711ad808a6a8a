"""RPN training targets, computed in the input pipeline (DESIGN.md section 4.3).

For one image: label every anchor positive (IoU >= positive_iou with some GT, or the
best anchor of a GT), negative (max IoU < negative_iou, and less than `ignore_overlap`
of it inside an ignore region: box_ops.covered_by) or neither; sample a minibatch
of at most `minibatch_size` anchors with at most `positive_ratio` positives; encode the
positives' GT boxes as deltas divided by the RPN std-devs.

Outputs:
    rpn_labels  int32 [A]: 1 positive, 0 negative, -1 not in the minibatch
    rpn_bbox    float32 [minibatch_size, 4]: deltas of the positives, in increasing
                anchor order (the order tf.where(rpn_labels == 1) gives), zero-padded
"""
from libs.base.tf_compat import tf
from libs.box_utils import box_ops
from libs.model.preprocessing import stateless_permutation


def _sample(indices, max_count, seed):
    """At most `max_count` of `indices`, chosen uniformly at random from the seed."""
    order = stateless_permutation(tf.shape(indices)[0], seed)
    return tf.gather(indices, order)[:max_count]


def build_rpn_targets(anchors, gt_boxes, positive_iou, negative_iou, minibatch_size,
                      positive_ratio, std_dev, seed, ignore_boxes=None, ignore_overlap=0.5):
    """Targets for one image. `gt_boxes` [G, 4] holds only real boxes (G may be 0);
    `ignore_boxes` [I, 4] the image's ignore regions (zero rows allowed; None: none):
    they make no positive, and the anchors they cover make no negative.

    `anchors` is a float32 [A, 4] constant; `seed` an int32 [2] tensor.
    """
    with tf.name_scope("rpn_targets"):
        anchors = tf.convert_to_tensor(anchors, tf.float32)
        num_anchors = tf.shape(anchors)[0]
        num_gt = tf.shape(gt_boxes)[0]
        # With no GT every anchor is a negative candidate; the [A, 1] zero column keeps
        # the reductions defined.
        iou = tf.cond(num_gt > 0,
                      lambda: box_ops.iou_matrix(anchors, gt_boxes),
                      lambda: tf.zeros([num_anchors, 1], tf.float32))
        best_iou = tf.reduce_max(iou, axis=1)
        best_gt = tf.argmax(iou, axis=1, output_type=tf.int32)

        # A GT's best anchor is positive whatever its IoU, so that every GT (even one no
        # anchor overlaps at 0.7) has at least one positive; ties all count.
        gt_best_iou = tf.reduce_max(iou, axis=0)
        is_gt_best = tf.logical_and(tf.equal(iou, gt_best_iou[tf.newaxis, :]), iou > 0)
        is_gt_best = tf.logical_and(tf.reduce_any(is_gt_best, axis=1), num_gt > 0)

        positive = tf.logical_or(best_iou >= positive_iou, is_gt_best)
        negative = tf.logical_and(best_iou < negative_iou, tf.logical_not(positive))
        if ignore_boxes is not None:
            ignored = box_ops.covered_by(anchors, ignore_boxes, ignore_overlap)
            negative = tf.logical_and(negative, tf.logical_not(ignored))

        seed_pos = seed
        seed_neg = seed + tf.constant([0, 1], seed.dtype)
        max_positive = int(minibatch_size * positive_ratio)
        pos_idx = _sample(tf.where(positive)[:, 0], max_positive, seed_pos)
        max_negative = minibatch_size - tf.shape(pos_idx)[0]
        neg_idx = _sample(tf.where(negative)[:, 0], max_negative, seed_neg)
        pos_idx = tf.sort(pos_idx)

        labels = -tf.ones([num_anchors], tf.int32)
        labels = tf.tensor_scatter_nd_update(
            labels, pos_idx[:, tf.newaxis], tf.ones_like(pos_idx, tf.int32))
        labels = tf.tensor_scatter_nd_update(
            labels, neg_idx[:, tf.newaxis], tf.zeros_like(neg_idx, tf.int32))

        pos_anchors = tf.gather(anchors, pos_idx)
        pos_gt = tf.cond(num_gt > 0,
                         lambda: tf.gather(gt_boxes, tf.gather(best_gt, pos_idx)),
                         lambda: tf.zeros_like(pos_anchors))
        deltas = box_ops.encode_boxes(pos_anchors, pos_gt, std_dev)
        pad = minibatch_size - tf.shape(deltas)[0]
        deltas = tf.pad(deltas, [[0, pad], [0, 0]])
        deltas.set_shape([minibatch_size, 4])
        labels.set_shape(anchors.shape[:1])
        return labels, deltas
