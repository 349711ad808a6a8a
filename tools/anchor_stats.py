"""Box statistics of a converted split, and how well a config's anchors cover them.

    python tools/anchor_stats.py --cfg cfgs/deeppcb_cpu.py --data_dir output/deeppcb/data

Reads the boxes of a split's TFRecords (no image is decoded), scales them as the input
pipeline does (long side -> TARGET_SIDE), and prints their sizes (sqrt of the area,
network pixels) and aspect ratios, then for the config's anchors (BASE_ANCHOR_SIZE_LIST
x ANCHOR_RATIOS on P2..P6) the share of boxes with at least one anchor of IoU >=
RPN_POSITIVE_IOU (the RPN's positives; a box without one is learned through its single
best anchor only), the positive anchors per box, and the same for the anchor sizes
scaled by 0.75, 1.5 and 2 - the first thing to check when a dataset's objects are
small or large. Example (DeepPCB at side 512): the sizes 16..256 gave 32% of the
defects a positive anchor, 24..384 gave 61%.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from libs.base import cli  # noqa: E402
from libs.configs import load_config_from_flags  # noqa: E402

FLAGS = flags.FLAGS
SCALES = (0.75, 1.0, 1.5, 2.0)


def _define_flags():
    flags.DEFINE_string("cfg", None, "Config file, e.g. cfgs/bccd_cpu.py.")
    flags.DEFINE_string("data_dir", None, "TFRecords + label_map.json (default: DATA_DIR).")
    flags.DEFINE_string("split", None, "Split (default: TRAIN_SPLIT).")
    flags.DEFINE_multi_string("set", [], "Config override FIELD=VALUE.")


def main(argv):
    error = cli.usage_error(argv, FLAGS.cfg)
    if error is not None:
        return error
    return cli.guarded(_stats)


def _stats():
    import numpy as np

    # Here, not at the top: these import TensorFlow (seconds), which must come after
    # the flags are parsed and --verbose has set the console (libs/base/console.py).
    from data.io import input_fn
    from libs.box_utils.anchors import anchor_coverage, generate_pyramid_anchors

    cfg = load_config_from_flags(FLAGS.cfg, FLAGS.set)
    data_dir = FLAGS.data_dir or cfg.DATA_DIR
    split = FLAGS.split or cfg.TRAIN_SPLIT
    boxes = []
    for record in input_fn.read_records(data_dir, split):
        # resize_and_pad: long side -> TARGET_SIDE, centred in the square
        scale = cfg.TARGET_SIDE / max(record["height"], record["width"])
        top = (cfg.TARGET_SIDE - round(record["height"] * scale)) // 2
        left = (cfg.TARGET_SIDE - round(record["width"] * scale)) // 2
        boxes.append(record["boxes"] * scale + np.array([top, left, top, left]))
    boxes = np.concatenate(boxes) if boxes else np.zeros([0, 4])
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes = np.sqrt(np.maximum(heights * widths, 0))
    ratios = widths / np.maximum(heights, 1e-9)
    percentiles = (5, 25, 50, 75, 95)

    def row(values):
        return "  ".join(f"{v:7.2f}" for v in np.percentile(values, percentiles))

    print(f"{len(boxes)} boxes in {split} of {data_dir}, side {cfg.TARGET_SIDE}")
    print("percentile           " + "  ".join(f"{p:>6d}%" for p in percentiles))
    print(f"size (sqrt area, px) {row(sizes)}")
    print(f"aspect (w / h)       {row(ratios)}")
    print(f"anchors: ratios {cfg.ANCHOR_RATIOS}, positive IoU {cfg.RPN_POSITIVE_IOU}")
    for scale in SCALES:
        anchor_sizes = [s * scale for s in cfg.BASE_ANCHOR_SIZE_LIST]
        anchors = generate_pyramid_anchors(anchor_sizes, cfg.ANCHOR_RATIOS,
                                           cfg.BACKBONE_SHAPES, cfg.BACKBONE_STRIDES,
                                           cfg.ANCHOR_STRIDE)
        cover = anchor_coverage(boxes, anchors, cfg.RPN_POSITIVE_IOU)
        label = "config" if scale == 1.0 else f"x{scale:g}"
        print(f"  sizes {[round(s, 1) for s in anchor_sizes]} ({label}): "
              f"{np.mean(cover['positives'] > 0):.0%} of boxes with a positive anchor, "
              f"{np.mean(cover['positives']):.1f} per box, median best IoU "
              f"{np.median(cover['best_iou']):.2f}")


def run():
    cli.run_tool(_define_flags, main)


if __name__ == "__main__":
    run()
