"""TensorBoard summaries of a training step (DESIGN.md section 4.8).

Scalars: rpn/cls_loss, rpn/loc_loss, fast_rcnn/cls_loss, fast_rcnn/loc_loss,
l2_regularisation, learning_rate, total_loss, plus minibatch counts and the largest
clipped gradient norm. Images (first image of the batch): gt, proposals, detections.
Written by the first tower only, so each tag appears once per step.
"""
from libs.base.tf_compat import tf

MAX_PROPOSALS_DRAWN = 50


def is_first_tower():
    """True outside a strategy and in the first replica of one."""
    context = tf.distribute.get_replica_context()
    if context is None:          # cross-replica context: not inside a tower
        return True
    replica_id = tf.get_static_value(context.replica_id_in_sync_group)
    return replica_id is None or int(replica_id) == 0


def _draw(image, boxes, side):
    """float image [S, S, 3] in 0..255, boxes [N, 4] pixels -> [1, S, S, 3] in 0..1."""
    normalised = tf.cast(boxes, tf.float32) / float(side)
    canvas = tf.clip_by_value(image / 255.0, 0.0, 1.0)[tf.newaxis]
    return tf.image.draw_bounding_boxes(canvas, normalised[tf.newaxis])


def add_training_summaries(loss, parts, lr, clipped_grads, graph, features, labels, cfg,
                           class_names=None):
    del class_names  # boxes are drawn without text; colours come from TensorBoard
    for name, value in parts.items():
        tf.summary.scalar(name, value)
    tf.summary.scalar("total_loss", loss)
    tf.summary.scalar("learning_rate", lr)
    if clipped_grads:
        norms = [tf.norm(grad) for grad, _ in clipped_grads]
        tf.summary.scalar("train/max_gradient_norm", tf.reduce_max(tf.stack(norms)))
    frcnn = graph["fast_rcnn"]
    if frcnn.roi_labels is not None:
        tf.summary.scalar("fast_rcnn/positive_rois",
                          tf.reduce_sum(tf.cast(frcnn.roi_labels > 0, tf.int32)))
    if labels is not None and "rpn_labels" in labels:
        tf.summary.scalar("rpn/positive_anchors",
                          tf.reduce_sum(tf.cast(tf.equal(labels["rpn_labels"], 1),
                                                tf.int32)))
    side = cfg.TARGET_SIDE
    image = features["image"][0]
    if labels is not None and "gt_boxes" in labels:
        tf.summary.image("gt", _draw(image, labels["gt_boxes"][0], side))
    tf.summary.image("proposals",
                     _draw(image, graph["proposals"][0][:MAX_PROPOSALS_DRAWN], side))
    detections = frcnn.fast_rcnn_detection(cfg.DETECTION_MIN_CONFIDENCE)
    tf.summary.image("detections", _draw(image, detections[0, :, :4], side))
