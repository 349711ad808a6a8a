"""libs.box_utils.anchors against brute-force numpy loops.

The expected anchors are rebuilt cell by cell with python loops, independently of the
vectorised implementation, so order (level, row, column, ratio), centres, sizes and
counts are all checked.
"""
import math
import os

import numpy as np
import pytest

from libs.box_utils import anchors as anchor_ops
from tests.conftest import REPO_ROOT

RATIOS = [0.5, 1.0, 2.0]
SIZES = [8, 16, 32, 64, 128]
STRIDES = [4, 8, 16, 32, 64]


def _shapes_for_side(side):
    """Feature shapes of P2..P6 for a square input, as the config derives them."""
    return [[int(math.ceil(side / s))] * 2 for s in STRIDES]


def _brute_force_level(size, ratios, feature_shape, stride, anchor_stride):
    rows = []
    for i in range(0, feature_shape[0], anchor_stride):
        for j in range(0, feature_shape[1], anchor_stride):
            centre_y = (i + 0.5) * stride
            centre_x = (j + 0.5) * stride
            for ratio in ratios:
                height = size / math.sqrt(ratio)
                width = size * math.sqrt(ratio)
                rows.append([centre_y - height / 2, centre_x - width / 2,
                             centre_y + height / 2, centre_x + width / 2])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


@pytest.mark.parametrize("feature_shape,anchor_stride",
                         [((4, 4), 1), ((3, 5), 1), ((5, 7), 2), ((1, 1), 1)])
def test_level_matches_brute_force(feature_shape, anchor_stride):
    got = anchor_ops.generate_anchors(32, RATIOS, feature_shape, 8, anchor_stride)
    want = _brute_force_level(32, RATIOS, feature_shape, 8, anchor_stride)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_level_count_and_order_match_head_reshape():
    # The RPN head reshapes a [H, W, A * 4] map to [H * W * A, 4]: row i, column j,
    # ratio a lands at index (i * W + j) * A + a.
    height, width, stride = 3, 5, 16
    got = anchor_ops.generate_anchors(64, RATIOS, (height, width), stride)
    assert got.shape == (height * width * len(RATIOS), 4)
    grid = got.reshape(height, width, len(RATIOS), 4)
    centre_y = (grid[..., 0] + grid[..., 2]) / 2
    centre_x = (grid[..., 1] + grid[..., 3]) / 2
    for i in range(height):
        for j in range(width):
            np.testing.assert_allclose(centre_y[i, j], (i + 0.5) * stride, atol=1e-4)
            np.testing.assert_allclose(centre_x[i, j], (j + 0.5) * stride, atol=1e-4)


def test_ratio_and_area_per_anchor():
    ratios = [0.25, 0.5, 1.0, 2.0, 3.0]
    for size in SIZES:
        boxes = anchor_ops.generate_anchors(size, ratios, (2, 3), 16).astype(np.float64)
        heights = boxes[:, 2] - boxes[:, 0]
        widths = boxes[:, 3] - boxes[:, 1]
        expected_ratio = np.tile(ratios, 2 * 3)
        np.testing.assert_allclose(widths / heights, expected_ratio, rtol=1e-5)
        np.testing.assert_allclose(widths * heights, size * size, rtol=1e-5)


@pytest.mark.parametrize("side,anchor_stride", [(64, 1), (100, 1), (96, 2)])
def test_pyramid_count_order_and_levels(side, anchor_stride):
    shapes = _shapes_for_side(side)
    pyramid = anchor_ops.generate_pyramid_anchors(SIZES, RATIOS, shapes, STRIDES,
                                                  anchor_stride)
    counts = anchor_ops.pyramid_anchor_counts(RATIOS, shapes, anchor_stride)

    expected_counts = [len(range(0, h, anchor_stride)) * len(range(0, w, anchor_stride))
                       * len(RATIOS) for h, w in shapes]
    assert counts == expected_counts
    assert pyramid.shape == (sum(expected_counts), 4)
    assert pyramid.dtype == np.float32

    # Levels are concatenated P2..P6, each one equal to its brute-force anchors.
    start = 0
    for size, shape, stride, count in zip(SIZES, shapes, STRIDES, counts):
        level = pyramid[start:start + count]
        want = _brute_force_level(size, RATIOS, shape, stride, anchor_stride)
        np.testing.assert_allclose(level, want, rtol=0, atol=1e-3)
        start += count


def test_anchor_stride_one_count_is_h_w_a():
    shapes = [[256, 256], [128, 128], [64, 64], [32, 32], [16, 16]]
    counts = anchor_ops.pyramid_anchor_counts(RATIOS, shapes)
    assert counts == [h * w * 3 for h, w in shapes]
    assert sum(counts) == 261888


@pytest.mark.parametrize("kwargs", [
    dict(size=32, ratios=[], feature_shape=(2, 2), feature_stride=4),
    dict(size=32, ratios=[1.0, -1.0], feature_shape=(2, 2), feature_stride=4),
    dict(size=0, ratios=[1.0], feature_shape=(2, 2), feature_stride=4),
    dict(size=32, ratios=[1.0], feature_shape=(2, 2), feature_stride=4, anchor_stride=0),
])
def test_bad_level_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        anchor_ops.generate_anchors(**kwargs)


def test_mismatched_level_lists_raise():
    with pytest.raises(ValueError, match="one size, shape and stride per level"):
        anchor_ops.generate_pyramid_anchors(SIZES[:4], RATIOS, _shapes_for_side(64),
                                            STRIDES)


def test_anchor_coverage_counts_positive_anchors_per_box():
    from libs.box_utils.anchors import anchor_coverage
    anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 15, 15]], np.float32)
    boxes = np.array([[0, 0, 10, 10],        # = anchor 0; IoU 0.25 with 1, 1/7 with 2
                      [0, 0, 18, 18],        # IoU 0.81 with anchor 1
                      [100, 100, 110, 110]], np.float32)
    cover = anchor_coverage(boxes, anchors, positive_iou=0.7, chunk=2)
    np.testing.assert_allclose(cover["best_iou"], [1.0, 0.81, 0.0], atol=1e-6)
    assert cover["positives"].tolist() == [1, 1, 0]
    assert cover["near"].tolist() == [1, 1, 0]


def test_anchor_stats_tool_prints_sizes_and_coverage(sample_data):
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "anchor_stats.py"), "--cfg",
         os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py"), "--data_dir",
         sample_data["data_dir"]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "boxes in train" in lines[0]
    assert any(line.startswith("size (sqrt area, px)") for line in lines)
    coverage = [line for line in lines if "of boxes with a positive anchor" in line]
    assert len(coverage) == 4 and "(config)" in coverage[1]
