"""Box operations as TF graph ops (tf.compat.v1).

Boxes are float32 ``[..., 4]`` tensors of ``[y1, x1, y2, x2]`` in pixels; height is
``y2 - y1`` and width ``x2 - x1`` (no +1). An all-zero row is padding.

Deltas follow the Faster R-CNN parameterisation, divided by per-coordinate standard
deviations so the regression targets have roughly unit scale:

    [(gt_cy - cy) / h, (gt_cx - cx) / w, log(gt_h / h), log(gt_w / w)] / std_dev
"""
import math

from libs.base.tf_compat import tf

# Upper bound for the log-scale deltas dh, dw before exp() in decode_boxes: a box may
# grow at most 1000/16 = 62.5 times (the bound Detectron uses). A freshly initialised
# or diverging head can emit deltas of hundreds; exp() of those is inf in float32, and
# inf - inf = NaN box coordinates would poison NMS, the losses and every gradient.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

# Smallest height/width used as a divisor or a log argument in encode_boxes, so that a
# degenerate box gives large finite deltas instead of inf/NaN.
_MIN_SIDE = 1e-8


def _sides_and_centres(boxes):
    """(height, width, centre_y, centre_x), each [...] from boxes [..., 4]."""
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    height = y2 - y1
    width = x2 - x1
    return height, width, y1 + 0.5 * height, x1 + 0.5 * width


def _as_std_dev(std_dev):
    """std_dev (list, array or tensor of 4 numbers) as a float32 [4] tensor."""
    return tf.reshape(tf.convert_to_tensor(std_dev, tf.float32), [4])


def _intersections_and_areas(boxes1, boxes2):
    """(intersection [N, M], area1 [N, 1], area2 [M]) of two box lists."""
    boxes1 = tf.convert_to_tensor(boxes1, tf.float32)
    boxes2 = tf.convert_to_tensor(boxes2, tf.float32)
    # Columns [N, 1] against rows [M] broadcast to [N, M].
    y1a, x1a, y2a, x2a = tf.split(boxes1, 4, axis=1)
    y1b, x1b, y2b, x2b = tf.unstack(boxes2, num=4, axis=1)
    inter_h = tf.maximum(tf.minimum(y2a, y2b) - tf.maximum(y1a, y1b), 0.0)
    inter_w = tf.maximum(tf.minimum(x2a, x2b) - tf.maximum(x1a, x1b), 0.0)
    # Inverted boxes (y2 < y1) count as empty rather than as negative area.
    area1 = tf.maximum(y2a - y1a, 0.0) * tf.maximum(x2a - x1a, 0.0)
    area2 = tf.maximum(y2b - y1b, 0.0) * tf.maximum(x2b - x1b, 0.0)
    return inter_h * inter_w, area1, area2


def iou_matrix(boxes1, boxes2, name=None):
    """Pairwise intersection-over-union.

    Args:
        boxes1: float32 [N, 4].
        boxes2: float32 [M, 4].

    Returns:
        float32 [N, M]; entry (i, j) is IoU(boxes1[i], boxes2[j]). Pairs whose union is
        empty (two zero-area boxes, e.g. padding rows) give 0, not NaN; a zero-area box
        against any box gives 0 because the intersection is empty.
    """
    with tf.name_scope(name, "iou_matrix", [boxes1, boxes2]):
        intersection, area1, area2 = _intersections_and_areas(boxes1, boxes2)
        union = area1 + area2 - intersection
        return tf.math.divide_no_nan(intersection, union)


def covered_by(boxes, regions, min_fraction, name=None):
    """bool [N]: at least `min_fraction` of box i's area lies inside one of `regions`.

    The ignore-region test of the samplers (Detectron's crowd rule): an anchor or ROI
    mostly inside an ignored box is no negative, however small it is beside the box
    (IoU would call a proposal on half an unlabelled object background). Zero-area
    regions (padding rows) and zero-area boxes cover nothing; M = 0 gives all False.
    """
    with tf.name_scope(name, "covered_by", [boxes, regions]):
        intersection, area1, _ = _intersections_and_areas(boxes, regions)
        fraction = tf.math.divide_no_nan(intersection, area1)
        covered = fraction >= min_fraction
        return tf.reduce_any(tf.logical_and(covered, intersection > 0), axis=1)


def encode_boxes(boxes, gt_boxes, std_dev, name=None):
    """Regression targets that move `boxes` onto `gt_boxes`.

    Args:
        boxes: float32 [..., 4] reference boxes (anchors or proposals).
        gt_boxes: float32 [..., 4] target boxes, same shape as `boxes`.
        std_dev: 4 numbers; the raw deltas are divided by them.

    Returns:
        float32 [..., 4] deltas
        [(gcy - cy) / h, (gcx - cx) / w, log(gh / h), log(gw / w)] / std_dev.
        Heights and widths below 1e-8 are raised to 1e-8 so degenerate boxes give finite
        values.
    """
    with tf.name_scope(name, "encode_boxes", [boxes, gt_boxes]):
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
        height, width, centre_y, centre_x = _sides_and_centres(boxes)
        gt_height, gt_width, gt_centre_y, gt_centre_x = _sides_and_centres(gt_boxes)
        height = tf.maximum(height, _MIN_SIDE)
        width = tf.maximum(width, _MIN_SIDE)
        gt_height = tf.maximum(gt_height, _MIN_SIDE)
        gt_width = tf.maximum(gt_width, _MIN_SIDE)
        deltas = tf.stack([(gt_centre_y - centre_y) / height,
                           (gt_centre_x - centre_x) / width,
                           tf.log(gt_height / height),
                           tf.log(gt_width / width)], axis=-1)
        return deltas / _as_std_dev(std_dev)


def decode_boxes(boxes, deltas, std_dev, name=None):
    """Applies `deltas` (as made by encode_boxes) to `boxes`.

    Args:
        boxes: float32 [..., 4] reference boxes.
        deltas: float32 [..., 4], same shape as `boxes`.
        std_dev: 4 numbers; deltas are multiplied by them first.

    Returns:
        float32 [..., 4] decoded boxes. The log-scale deltas dh, dw are clamped from
        above to log(1000 / 16) before exp(): without the clamp an untrained head's
        large deltas overflow exp() to inf and the box becomes NaN (see BBOX_XFORM_CLIP).
    """
    with tf.name_scope(name, "decode_boxes", [boxes, deltas]):
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        deltas = tf.convert_to_tensor(deltas, tf.float32)
        deltas = deltas * _as_std_dev(std_dev)
        delta_y, delta_x, delta_h, delta_w = tf.unstack(deltas, num=4, axis=-1)
        delta_h = tf.minimum(delta_h, BBOX_XFORM_CLIP)
        delta_w = tf.minimum(delta_w, BBOX_XFORM_CLIP)
        height, width, centre_y, centre_x = _sides_and_centres(boxes)
        centre_y = centre_y + delta_y * height
        centre_x = centre_x + delta_x * width
        height = height * tf.exp(delta_h)
        width = width * tf.exp(delta_w)
        return tf.stack([centre_y - 0.5 * height, centre_x - 0.5 * width,
                         centre_y + 0.5 * height, centre_x + 0.5 * width], axis=-1)


def clip_boxes(boxes, window, name=None):
    """Clips boxes into a window.

    Args:
        boxes: float32 [..., 4].
        window: float32 [4] tensor or list, [y1, x1, y2, x2] of the allowed region.

    Returns:
        float32 [..., 4]: every y coordinate clamped to [wy1, wy2], every x to
        [wx1, wx2]. A box entirely outside collapses onto the window's border (zero
        area); callers that care drop it.
    """
    with tf.name_scope(name, "clip_boxes", [boxes, window]):
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        window = tf.convert_to_tensor(window, tf.float32)
        win_y1, win_x1, win_y2, win_x2 = tf.unstack(window, num=4)
        y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
        y1 = tf.maximum(tf.minimum(y1, win_y2), win_y1)
        x1 = tf.maximum(tf.minimum(x1, win_x2), win_x1)
        y2 = tf.maximum(tf.minimum(y2, win_y2), win_y1)
        x2 = tf.maximum(tf.minimum(x2, win_x2), win_x1)
        return tf.stack([y1, x1, y2, x2], axis=-1)


def trim_zeros(boxes, name=None):
    """Drops padding rows.

    Args:
        boxes: float32 [N, 4] (or any [N, K]) with all-zero padding rows.

    Returns:
        (kept float32 [N', 4], keep bool [N]) where keep marks rows with any non-zero
        coordinate; kept = boxes[keep], order preserved.
    """
    with tf.name_scope(name, "trim_zeros", [boxes]):
        boxes = tf.convert_to_tensor(boxes)
        keep = tf.reduce_any(tf.not_equal(boxes, 0), axis=1)
        return tf.boolean_mask(boxes, keep), keep


def nms_padded(boxes, scores, max_output_size, iou_threshold,
               score_threshold=float("-inf"), name=None):
    """Greedy non-maximum suppression with fixed-size, padded outputs.

    Wraps tf.image.non_max_suppression: a box is dropped when its IoU with a kept,
    higher-scoring box is strictly greater than `iou_threshold`, or when its score is
    not strictly greater than `score_threshold`. Kept boxes come in decreasing score.

    Args:
        boxes: float32 [N, 4].
        scores: float32 [N].
        max_output_size: python int, the fixed output length.
        iou_threshold: float (or scalar tensor).
        score_threshold: float (or scalar tensor); default keeps every score.

    Returns:
        boxes float32 [max_output_size, 4] zero-padded,
        scores float32 [max_output_size] zero-padded,
        indices int32 [max_output_size] into the inputs, padded with -1,
        num_valid int32 scalar, the number of real rows at the top.
    """
    if not isinstance(max_output_size, int) or max_output_size < 0:
        raise ValueError("max_output_size must be a non-negative python int (it fixes "
                         f"the static output shape), got {max_output_size!r}")
    with tf.name_scope(name, "nms_padded", [boxes, scores]):
        boxes = tf.convert_to_tensor(boxes, tf.float32)
        scores = tf.convert_to_tensor(scores, tf.float32)
        selected = tf.image.non_max_suppression(
            boxes, scores, max_output_size, iou_threshold=iou_threshold,
            score_threshold=score_threshold)
        selected = tf.cast(selected, tf.int32)
        num_valid = tf.shape(selected)[0]
        padding = max_output_size - num_valid

        kept_boxes = tf.pad(tf.gather(boxes, selected), [[0, padding], [0, 0]])
        kept_scores = tf.pad(tf.gather(scores, selected), [[0, padding]])
        kept_indices = tf.pad(selected, [[0, padding]], constant_values=-1)
        kept_boxes.set_shape([max_output_size, 4])
        kept_scores.set_shape([max_output_size])
        kept_indices.set_shape([max_output_size])
        return kept_boxes, kept_scores, kept_indices, num_valid


def batch_slice(inputs, graph_fn, batch_size, names=None, output_dtypes=None):
    """Runs a per-image graph function over a batch and stacks the results.

    For ops that only exist for one image (NMS, boolean masks with per-image counts),
    the batch is unrolled in python: item i of every tensor in `inputs` is passed to
    `graph_fn`, and each of its outputs is stacked over the batch. So every output of
    `graph_fn` must have the same shape for every item.

    Args:
        inputs: a tensor or a list of tensors, each with batch_size rows on dim 0.
        graph_fn: called as graph_fn(*[x[i] for x in inputs]); returns a tensor or a
            list/tuple of tensors.
        batch_size: python int, the number of items to unroll; or None when the batch
            size is only known at run time (the exported model takes any number of
            images): then a tf.map_fn loops over the items and `output_dtypes` is
            required.
        names: optional list of names, one per output of graph_fn, for the stacks.
        output_dtypes: the dtype of each output of graph_fn (dynamic batch only).

    Returns:
        One tensor [batch_size, ...] if graph_fn returns one output, else a list.
    """
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    if batch_size is None:
        return _map_slices(inputs, graph_fn, names, output_dtypes)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive python int, got {batch_size!r}")

    per_item = []
    for i in range(batch_size):
        outputs = graph_fn(*[x[i] for x in inputs])
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        if per_item and len(outputs) != len(per_item[0]):
            raise ValueError(f"graph_fn returned {len(outputs)} outputs for item {i} "
                             f"but {len(per_item[0])} for item 0")
        per_item.append(list(outputs))

    per_output = list(zip(*per_item))
    if names is None:
        names = [None] * len(per_output)
    if len(names) != len(per_output):
        raise ValueError(f"got {len(names)} names for {len(per_output)} outputs")
    stacked = [tf.stack(list(items), axis=0, name=name)
               for items, name in zip(per_output, names)]
    return stacked[0] if len(stacked) == 1 else stacked


def _map_slices(inputs, graph_fn, names, output_dtypes):
    """batch_slice for a run-time batch size: the same per-item graph in a tf.map_fn."""
    if output_dtypes is None:
        raise ValueError("batch_slice with a dynamic batch size needs output_dtypes")
    single = not isinstance(output_dtypes, (list, tuple))
    dtypes = [output_dtypes] if single else list(output_dtypes)

    def one_item(items):
        outputs = graph_fn(*items)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        if len(outputs) != len(dtypes):
            raise ValueError(f"graph_fn returned {len(outputs)} outputs but "
                             f"{len(dtypes)} output_dtypes were given")
        return list(outputs)

    stacked = tf.map_fn(one_item, list(inputs), dtype=dtypes, back_prop=False)
    if names is not None:
        if len(names) != len(stacked):
            raise ValueError(f"got {len(names)} names for {len(stacked)} outputs")
        stacked = [tf.identity(t, name=n) if n else t for t, n in zip(stacked, names)]
    return stacked[0] if single else stacked
