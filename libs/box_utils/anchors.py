"""Anchor generation in numpy: anchors depend only on the config, so they are built once
and enter the graph as constants.

Order (the RPN head relies on it): levels P2..P6, then rows (y), then columns (x), then
ratios innermost -- the order in which a [B, H, W, A * k] conv output reshapes to
[B, H * W * A, k].

A ratio r is width / height, and every anchor of one level keeps the area size**2:
height = size / sqrt(r), width = size * sqrt(r). An anchor's centre for row i, column j
is ((i + 0.5) * stride, (j + 0.5) * stride): the centre of the input pixels the feature
cell covers.
"""
import numpy as np


def _anchor_grid_positions(feature_size, feature_stride, anchor_stride):
    """Pixel coordinates of the anchor centres along one axis."""
    cells = np.arange(0, feature_size, anchor_stride, dtype=np.float64)
    return (cells + 0.5) * feature_stride


def generate_anchors(size, ratios, feature_shape, feature_stride, anchor_stride=1):
    """Anchors of one pyramid level.

    Args:
        size: anchor side in pixels for ratio 1 (all ratios keep the area size**2).
        ratios: list of width / height ratios.
        feature_shape: (H, W) of the feature map.
        feature_stride: pixels of input per feature cell.
        anchor_stride: place anchors on every `anchor_stride`-th cell.

    Returns:
        float32 [ceil(H/anchor_stride) * ceil(W/anchor_stride) * len(ratios), 4]
        boxes [y1, x1, y2, x2], row-major over positions, ratios innermost.
    """
    ratios = np.asarray(ratios, dtype=np.float64).reshape(-1)
    if ratios.size == 0 or np.any(ratios <= 0):
        raise ValueError(f"ratios must be positive and non-empty, got {ratios.tolist()}")
    if size <= 0 or feature_stride <= 0 or anchor_stride <= 0:
        raise ValueError("size, feature_stride and anchor_stride must be positive, got "
                         f"{size}, {feature_stride}, {anchor_stride}")
    height, width = int(feature_shape[0]), int(feature_shape[1])

    anchor_heights = size / np.sqrt(ratios)          # [A]
    anchor_widths = size * np.sqrt(ratios)           # [A]
    centres_y = _anchor_grid_positions(height, feature_stride, anchor_stride)  # [H']
    centres_x = _anchor_grid_positions(width, feature_stride, anchor_stride)   # [W']

    # Broadcast to [H', W', A] so that a C-order reshape gives y, then x, then ratio.
    cy = centres_y[:, None, None]
    cx = centres_x[None, :, None]
    half_h = 0.5 * anchor_heights[None, None, :]
    half_w = 0.5 * anchor_widths[None, None, :]
    shape = (centres_y.size, centres_x.size, ratios.size)
    boxes = np.stack([np.broadcast_to(cy - half_h, shape),
                      np.broadcast_to(cx - half_w, shape),
                      np.broadcast_to(cy + half_h, shape),
                      np.broadcast_to(cx + half_w, shape)], axis=-1)
    return boxes.reshape(-1, 4).astype(np.float32)


def pyramid_anchor_counts(ratios, feature_shapes, anchor_stride=1):
    """Number of anchors of each level, in the order generate_pyramid_anchors uses."""
    counts = []
    for feature_height, feature_width in feature_shapes:
        rows = -(-int(feature_height) // anchor_stride)  # ceil division
        cols = -(-int(feature_width) // anchor_stride)
        counts.append(rows * cols * len(ratios))
    return counts


def generate_pyramid_anchors(sizes, ratios, feature_shapes, feature_strides,
                             anchor_stride=1):
    """Anchors of every pyramid level (P2..P6), concatenated level by level.

    Args:
        sizes: one anchor size per level.
        ratios: width / height ratios, shared by all levels.
        feature_shapes: one (H, W) per level.
        feature_strides: one stride per level.
        anchor_stride: see generate_anchors.

    Returns:
        float32 [sum(pyramid_anchor_counts(...)), 4].
    """
    if not len(sizes) == len(feature_shapes) == len(feature_strides):
        raise ValueError(
            f"need one size, shape and stride per level, got {len(sizes)} sizes, "
            f"{len(feature_shapes)} shapes and {len(feature_strides)} strides")
    per_level = [generate_anchors(size, ratios, shape, stride, anchor_stride)
                 for size, shape, stride in zip(sizes, feature_shapes, feature_strides)]
    return np.concatenate(per_level, axis=0).astype(np.float32)


def config_anchors(cfg):
    """The pyramid anchors of a config, float32 [A, 4], in the RPN head's output order.

    The one place both the input pipeline (RPN targets) and the model (proposals) get
    their anchors from, so the two can never disagree.
    """
    return generate_pyramid_anchors(cfg.BASE_ANCHOR_SIZE_LIST, cfg.ANCHOR_RATIOS,
                                    cfg.BACKBONE_SHAPES, cfg.BACKBONE_STRIDES,
                                    cfg.ANCHOR_STRIDE)


def anchor_coverage(gt_boxes, anchors, positive_iou, chunk=512):
    """How well anchors cover ground-truth boxes (numpy, network pixels [y1, x1, y2, x2]).

    Returns {"best_iou": [N] each box's best anchor IoU, "positives": [N] anchors at or
    above positive_iou per box, "near": [N] anchors at or above 0.5 per box}. The RPN
    learns a box from its positive anchors: a box without one is learned only through
    its single best anchor (bench of tools/anchor_stats.py).
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    anchors = np.asarray(anchors, np.float64)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    best, positives, near = [], [], []
    for start in range(0, len(gt_boxes), chunk):
        boxes = gt_boxes[start:start + chunk]
        top = np.maximum(boxes[:, None, 0], anchors[None, :, 0])
        left = np.maximum(boxes[:, None, 1], anchors[None, :, 1])
        bottom = np.minimum(boxes[:, None, 2], anchors[None, :, 2])
        right = np.minimum(boxes[:, None, 3], anchors[None, :, 3])
        inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
        box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        iou = inter / np.maximum(box_area[:, None] + area[None, :] - inter, 1e-9)
        best.append(iou.max(axis=1))
        positives.append((iou >= positive_iou).sum(axis=1))
        near.append((iou >= 0.5).sum(axis=1))
    empty = np.zeros(0)
    return {"best_iou": np.concatenate(best) if best else empty,
            "positives": np.concatenate(positives) if positives else empty,
            "near": np.concatenate(near) if near else empty}
