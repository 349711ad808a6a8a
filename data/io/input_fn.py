"""Estimator input_fns: TFRecords -> the tensors model_fn receives (DESIGN.md section 6).

    make_input_fn(cfg, mode, data_dir=None, split=None) -> input_fn(input_context=None)

features (batched):
    image          float32 [B, S, S, 3]  RGB, resized + padded (means NOT subtracted)
    image_window   float32 [B, 4]        real image inside the padding, [y1, x1, y2, x2]
    image_scale    float32 [B, 2]        resized / original, per axis [sy, sx]
    original_size  int32   [B, 2]        original [height, width]
    image_id       int64   [B]
    filename       string  [B]
labels (TRAIN and EVAL):
    gt_boxes       float32 [B, MAX, 4]   network-input pixels, zero-padded
    gt_labels      int32   [B, MAX]      1..NUM_CLASS-1, 0 = padding
    ignore_boxes   float32 [B, IGNORE_MAX_REGIONS, 4]  ignore regions (records' `ignore`
                                         objects), network-input pixels, zero-padded
    rpn_labels     int32   [B, A]        1 positive, 0 negative, -1 not sampled
    rpn_bbox       float32 [B, RPN_MINIBATCH_SIZE, 4]
labels (EVAL only, for the metrics: every GT, unfiltered, in ORIGINAL pixels):
    eval_gt_boxes      float32 [B, EVAL_MAX_GT, 4]  zero-padded
    eval_gt_labels     int32   [B, EVAL_MAX_GT]     0 = padding
    eval_gt_difficult  int32   [B, EVAL_MAX_GT]     1 = VOC difficult / COCO crowd
    eval_num_gt        int32   [B]

Randomness (shuffle, flip, GT order, RPN sampling) is drawn from stateless ops seeded by
(cfg.SEED, element index), so a run is reproducible whatever the map's parallelism.
Every step runs in parallel tf.data maps with prefetch, so the pipeline keeps ahead of
a training step.
"""
import os

from absl import logging

from data.io import rpn_targets, tfrecord_format
from libs.base.errors import UserError
from libs.base.tf_compat import tf
from libs.box_utils.anchors import config_anchors
from libs.model import preprocessing

# Ground truth kept per image for evaluation (more objects than this: an error, never a
# silent truncation of the recall denominator).
EVAL_MAX_GT = 1000

TRAIN = tf.estimator.ModeKeys.TRAIN
EVAL = tf.estimator.ModeKeys.EVAL
PREDICT = tf.estimator.ModeKeys.PREDICT


class DataError(UserError):
    """Missing or unusable data; the message is one line for the user."""


def tfrecord_files(data_dir, split):
    """The sorted shard files of `split` in `data_dir`; DataError when there are none."""
    if not os.path.isdir(data_dir):
        raise DataError(f"data dir {data_dir} does not exist: convert a dataset first "
                        f"(tools/convert_to_tfrecord.py --output_dir {data_dir})")
    files = sorted(os.path.join(data_dir, name) for name in tf.io.gfile.listdir(data_dir)
                   if tfrecord_format.is_shard_of(name, split))
    if not files:
        raise DataError(f"no {split}-*.tfrecord files in {data_dir}: convert the "
                        f"'{split}' split first")
    return files


def read_records(data_dir, split):
    """Every record of `split` in `data_dir`, in shard order, decoded to numpy
    (tfrecord_format.decode_example: no graph, for tools and benches)."""
    for path in tfrecord_files(data_dir, split):
        for serialized in tf.compat.v1.io.tf_record_iterator(path):
            yield tfrecord_format.decode_example(serialized)


def check_split(data_dir, split, expected_images=None):
    """Refuses, before a run starts, a split whose TFRecords are cut short or do not
    hold the number of images the label map recorded at conversion. Returns the count.
    """
    total = 0
    for path in tfrecord_files(data_dir, split):
        try:
            total += tfrecord_format.count_records(path)
        except tfrecord_format.TruncatedRecordError as exc:
            raise DataError(str(exc)) from exc
    if expected_images is not None and total != expected_images:
        raise DataError(f"{data_dir}: the '{split}' TFRecords hold {total} images but "
                        f"label_map.json recorded {expected_images} at conversion; convert "
                        f"the split again")
    if total == 0:
        raise DataError(f"{data_dir}: the '{split}' TFRecords hold no image")
    return total


def _element_seed(cfg, index, salt):
    return tf.stack([tf.cast(cfg.SEED, tf.int64) * 1000 + salt,
                     tf.cast(index, tf.int64)])


def preprocess_record(cfg, record, mode, index, anchors):
    """One parsed record -> (features, labels) of one image."""
    image = preprocessing.decode_image(record["image"])
    original_size = tf.shape(image)[:2]
    image, window, scale = preprocessing.resize_and_pad(image, cfg.TARGET_SIDE)
    features = {"image_scale": scale, "original_size": original_size,
                "image_id": record["image_id"], "filename": record["filename"]}
    if mode == PREDICT:
        features.update(image=image, image_window=window)
        return features

    if mode == EVAL:
        num_gt = tf.shape(record["boxes"])[0]
        check = tf.debugging.assert_less_equal(
            num_gt, EVAL_MAX_GT, message=f"an image has more than {EVAL_MAX_GT} objects")
        with tf.control_dependencies([check]):
            eval_gt = {
                "eval_gt_boxes": preprocessing.pad_or_truncate(record["boxes"], EVAL_MAX_GT),
                "eval_gt_labels": preprocessing.pad_or_truncate(
                    tf.cast(record["labels"], tf.int32), EVAL_MAX_GT),
                "eval_gt_difficult": preprocessing.pad_or_truncate(
                    tf.cast(record["difficult"], tf.int32), EVAL_MAX_GT),
                "eval_num_gt": tf.identity(num_gt),
            }
    boxes = preprocessing.transform_boxes(record["boxes"], window, scale)
    labels = tf.cast(record["labels"], tf.int32)
    flips = [(cfg.FLIP_HORIZONTAL, preprocessing.flip_horizontal, 1),
             (cfg.FLIP_VERTICAL, preprocessing.flip_vertical, 4)]
    for enabled, flip, salt in flips:
        if mode != TRAIN or not enabled:
            continue
        coin = tf.random.stateless_uniform([], seed=_element_seed(cfg, index, salt))
        image, boxes, window = tf.cond(
            coin < 0.5,
            lambda flip=flip: flip(image, boxes, window),
            lambda: (image, boxes, window))
    # Ignore regions go their own way: never objects, only what the samplers avoid.
    is_ignore = tf.cast(record["ignore"], tf.bool)
    ignore_boxes = tf.boolean_mask(boxes, is_ignore)[:cfg.IGNORE_MAX_REGIONS]
    boxes = tf.boolean_mask(boxes, tf.logical_not(is_ignore))
    labels = tf.boolean_mask(labels, tf.logical_not(is_ignore))
    boxes, labels = preprocessing.filter_small_boxes(boxes, labels, cfg.MIN_GT_SIZE)
    if mode == TRAIN:
        # Truncation keeps a random subset when an image has more than MAX objects.
        order = preprocessing.stateless_permutation(tf.shape(boxes)[0],
                                                    _element_seed(cfg, index, 2))
        boxes, labels = tf.gather(boxes, order), tf.gather(labels, order)
    boxes = boxes[:cfg.FAST_RCNN_MAX_INSTANCES]
    labels = labels[:cfg.FAST_RCNN_MAX_INSTANCES]
    rpn_labels, rpn_bbox = rpn_targets.build_rpn_targets(
        anchors, boxes, cfg.RPN_POSITIVE_IOU, cfg.RPN_NEGATIVE_IOU,
        cfg.RPN_MINIBATCH_SIZE, cfg.RPN_POSITIVE_RATIO, cfg.RPN_BBOX_STD_DEV,
        seed=_element_seed(cfg, index, 3), ignore_boxes=ignore_boxes,
        ignore_overlap=cfg.IGNORE_OVERLAP)
    features.update(image=image, image_window=window)
    targets = {
        "gt_boxes": preprocessing.pad_or_truncate(boxes, cfg.FAST_RCNN_MAX_INSTANCES),
        "gt_labels": preprocessing.pad_or_truncate(labels, cfg.FAST_RCNN_MAX_INSTANCES),
        "ignore_boxes": preprocessing.pad_or_truncate(ignore_boxes, cfg.IGNORE_MAX_REGIONS),
        "rpn_labels": rpn_labels,
        "rpn_bbox": rpn_bbox,
    }
    if mode == EVAL:
        targets.update(eval_gt)
    return features, targets


def make_input_fn(cfg, mode, data_dir=None, split=None, batch_size=None,
                  num_epochs=None):
    """An Estimator input_fn for `mode` reading `split` from `data_dir`.

    TRAIN repeats forever (the Estimator stops at max_steps) unless num_epochs is given;
    EVAL and PREDICT read the split once, in file order. batch_size defaults to
    PER_GPU_IMAGE in TRAIN (each tower takes its own batch) and 1 otherwise.
    """
    data_dir = data_dir or cfg.DATA_DIR
    split = split or (cfg.TRAIN_SPLIT if mode == TRAIN else cfg.EVAL_SPLIT)
    files = tfrecord_files(data_dir, split)
    if batch_size is None:
        batch_size = cfg.PER_GPU_IMAGE if mode == TRAIN else 1
    anchors = config_anchors(cfg)

    def input_fn(input_context=None):
        dataset = tf.data.Dataset.from_tensor_slices(files)
        dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=len(files),
                                     num_parallel_calls=tf.data.AUTOTUNE,
                                     deterministic=True)
        if input_context is not None and input_context.num_input_pipelines > 1:
            # Multi-worker: each worker takes every n-th record, so any number of
            # shard files (even one) splits evenly across workers.
            dataset = dataset.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
            logging.info("input pipeline %d of %d: this worker reads one record in %d "
                         "of '%s'", input_context.input_pipeline_id,
                         input_context.num_input_pipelines,
                         input_context.num_input_pipelines, split)
        if mode == TRAIN:
            dataset = dataset.shuffle(1024, seed=cfg.SEED, reshuffle_each_iteration=True)
            dataset = dataset.repeat(num_epochs)
        dataset = dataset.enumerate()
        # Graph code throughout (tf.cond, not Python branches on tensors): autograph's
        # conversion would only cost start-up time.
        dataset = dataset.map(
            tf.autograph.experimental.do_not_convert(
                lambda index, serialized: preprocess_record(
                    cfg, tfrecord_format.parse_example(serialized), mode, index, anchors)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A static batch dimension lets the model slice per image; batches of one lose
        # nothing to drop_remainder.
        dataset = dataset.batch(batch_size, drop_remainder=(mode == TRAIN or batch_size == 1))
        return dataset.prefetch(tf.data.AUTOTUNE)

    return input_fn
