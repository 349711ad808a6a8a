"""Mining: candidates of the new classes in labelled images, each verified.

    result = mine_images(detector, embedder, images, new_classes, reference_crops, cfg)

`images` are annotated images (data/io/convert.read_annotations) in which the new
classes were never labelled; `detector` (libs.serving.export.Detector) knows the new
classes from their references; `embedder` (libs/mining/embedding.py) is the frozen
feature space. One pass over the images, one image in memory at a time:

1. detect; a candidate is a detection of a new class with score >= MINE_MIN_SCORE that
   does not sit on a labelled object or ignore region (IoU >= OVERLAP_IOU: counted as
   on_labelled / on_ignored) and is not a lower-scored duplicate of another candidate
   (any new class, IoU >= OVERLAP_IOU); at most MINE_MAX_PER_IMAGE per image, best first;
2. crops (with the references' margin) of the candidates, of labelled base objects
   (MINE_BASE_CROPS per class, in image order) and of background boxes (sizes of the
   image's labelled objects, placed at random where they touch no labelled object,
   ignore region, candidate or confident detection: background_must_avoid;
   MINE_BACKGROUND_CROPS over the images), embedded at once;
3. once every image is read: the verifier's bank (the new classes' reference crops,
   the base and background crops) and a verdict per candidate (libs/mining/verify.py).

Returns a MiningResult: the candidates, best first by the verifier's confidence, with
their verdicts, and the counts. Writing them (labels, ignore regions, Label Studio
tasks) is data/io/mining/labels.py.
"""
import collections
import dataclasses
import math
import os

import numpy as np

from data.io import annotation, cleaning, reference_set
from libs.base.io_utils import Progress
from libs.mining import verify

OVERLAP_IOU = 0.5
BACKGROUND_TRIES = 50        # random placements tried per background box


@dataclasses.dataclass
class Candidate:
    image_index: int              # position in the images given
    filename: str
    class_name: str
    score: float
    box: tuple                    # (y1, x1, y2, x2), pixels of the image as loaded
    height: int
    width: int
    verdict: verify.Verdict = None


@dataclasses.dataclass
class MiningResult:
    candidates: list              # [Candidate], best first (verdict confidence, score)
    counts: dict                  # per new class: candidates, accepted, doubtful, rejected
    skipped: dict                 # why detections were not candidates: rule -> count
    bank_sizes: dict              # label -> crops in the verifier's bank
    report: annotation.Report     # the converter's rules met while loading images


def iou(box, others):
    """IoU of one box with each of `others` [N, 4] (numpy, pixels)."""
    others = np.asarray(others, np.float64).reshape(-1, 4)
    if not len(others):
        return np.zeros([0])
    y1 = np.maximum(box[0], others[:, 0])
    x1 = np.maximum(box[1], others[:, 1])
    y2 = np.minimum(box[2], others[:, 2])
    x2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def select_candidates(detections, labelled, ignored, new_classes, cfg, skipped):
    """The candidates among one image's detections: [(class, score, box)], best first."""
    chosen = []
    order = np.argsort(-np.asarray(detections["scores"], np.float64), kind="stable")
    for i in order:
        name, score = detections["class_names"][i], float(detections["scores"][i])
        box = tuple(float(v) for v in detections["boxes"][i])
        if name not in new_classes or score < cfg.MINE_MIN_SCORE:
            continue
        if (iou(box, labelled) >= OVERLAP_IOU).any():
            skipped["on_labelled"] += 1
        elif (iou(box, ignored) >= OVERLAP_IOU).any():
            skipped["on_ignored"] += 1
        elif (iou(box, [c[2] for c in chosen]) >= OVERLAP_IOU).any():
            skipped["duplicate"] += 1
        elif len(chosen) >= cfg.MINE_MAX_PER_IMAGE:
            skipped["over_max_per_image"] += 1
        else:
            chosen.append((name, score, box))
    return chosen


def background_must_avoid(detections, labelled, ignored, chosen, cfg):
    """Where an image's background crops must not be: labelled objects, ignore regions,
    the chosen candidates and detections (any class) scoring at least
    MINE_ACCEPT_SCORE. Not every low-score detection: at mining's threshold they cover
    a crowded image (BCCD: 9 background crops of 60 placed; a 45-crop bank took the
    written boxes' precision from 40 of 772 to 39 of 444, docs/fewshot.md)."""
    confident = [tuple(float(v) for v in box) for box, score
                 in zip(detections["boxes"], detections["scores"])
                 if score >= cfg.MINE_ACCEPT_SCORE]
    return list(labelled) + list(ignored) + [box for _, _, box in chosen] + confident


def background_boxes(rng, count, sizes, avoid, height, width):
    """Up to `count` boxes of the given (h, w) sizes, at random places that overlap no
    box of `avoid` and lie inside the image."""
    found = []
    avoid = [tuple(b) for b in avoid]
    for k in range(count):
        h, w = sizes[k % len(sizes)]
        h, w = min(h, height), min(w, width)
        for _ in range(BACKGROUND_TRIES):
            y1 = rng.uniform(0, height - h)
            x1 = rng.uniform(0, width - w)
            box = (y1, x1, y1 + h, x1 + w)
            if not _touches(box, avoid + found):
                found.append(box)
                break
    return found


def _touches(box, others):
    """Any overlap at all (IoU > 0 misses a zero-area intersection; this does not)."""
    for other in others:
        if box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]:
            return True
    return False


def mine_images(detector, embedder, images, new_classes, reference_crops, cfg, seed=0,
                progress_every_seconds=None):
    """See the module docstring. reference_crops: {new class: [uint8 RGB crops]}."""
    new_classes = list(new_classes)
    missing = [name for name in new_classes if not reference_crops.get(name)]
    if missing:
        raise ValueError(f"no reference crop of {missing}: the verifier compares each "
                         f"candidate with its class's references")
    report = annotation.Report()
    skipped = collections.Counter()
    candidates, features = [], []
    base = collections.defaultdict(list)
    background = []
    background_per_image = max(1, math.ceil(cfg.MINE_BACKGROUND_CROPS / max(len(images), 1)))
    margin = cfg.REFERENCE_MARGIN
    with Progress(len(images), "mining", progress_every_seconds, unit="images") as progress:
        for index, image in enumerate(images):
            loaded = cleaning.load_and_clean(image, None, report)
            if loaded is None:
                progress.update()
                continue
            loaded, objects = loaded
            labelled = [o.box for o in objects if not o.ignore]
            ignored = [o.box for o in objects if o.ignore]
            (found,) = detector.detect([loaded.encoded])
            chosen = select_candidates(found, labelled, ignored, set(new_classes), cfg,
                                       skipped)
            crops = [reference_set.crop_with_margin(loaded.rgb, box, margin)
                     for _, _, box in chosen]
            for obj in objects:
                if (obj.name not in new_classes and not obj.ignore and not obj.difficult
                        and len(base[obj.name]) < cfg.MINE_BASE_CROPS):
                    base[obj.name].append(
                        reference_set.crop_with_margin(loaded.rgb, obj.box, margin))
            sizes = [(b[2] - b[0], b[3] - b[1]) for b in labelled + [c[2] for c in chosen]]
            if sizes and len(background) < cfg.MINE_BACKGROUND_CROPS:
                rng = np.random.default_rng([seed, index])
                avoid = background_must_avoid(found, labelled, ignored, chosen, cfg)
                for box in background_boxes(rng, background_per_image, sizes, avoid,
                                            loaded.height, loaded.width):
                    background.append(reference_set.crop_with_margin(loaded.rgb, box, margin))
            if crops:
                features.append(embedder(crops))
            for name, score, box in chosen:
                candidates.append(Candidate(index, image.filename, name, score, box,
                                            loaded.height, loaded.width))
            progress.update(candidates=len(candidates))
    groups = {name: embedder(reference_crops[name]) for name in new_classes}
    groups.update({name: embedder(crops) for name, crops in sorted(base.items())})
    groups[verify.BACKGROUND] = embedder(background[:cfg.MINE_BACKGROUND_CROPS])
    bank = verify.FeatureBank.build(groups)
    if candidates:
        verdicts = verify.verify([c.class_name for c in candidates],
                                 [c.score for c in candidates], np.concatenate(features),
                                 bank, cfg)
        for candidate, verdict in zip(candidates, verdicts):
            candidate.verdict = verdict
    candidates.sort(key=lambda c: (-c.verdict.confidence, -c.score, c.image_index))
    counts = {name: collections.Counter() for name in new_classes}
    for candidate in candidates:
        counts[candidate.class_name]["candidates"] += 1
        counts[candidate.class_name][candidate.verdict.decision] += 1
    counts = {name: {key: c[key] for key in ("candidates", verify.ACCEPTED, verify.DOUBTFUL,
                                             verify.REJECTED)}
              for name, c in counts.items()}
    bank_sizes = {label: len(rows) for label, rows in groups.items()}
    return MiningResult(candidates, counts, dict(skipped), bank_sizes, report)


class MiningError(annotation.ConversionError):
    """Unusable mining input (no new class, a class without references); one line."""


def mine_to_folder(run, checkpoint, fmt, image_dir, annotations, new_classes, output_dir,
                   split_file=None, class_names=None, feature_checkpoint=None,
                   image_url_prefix="", overwrite=False, progress_every_seconds=None):
    """tools/mine_labels.py: mines `new_classes` in the annotated images with the run's
    model (its classes from its references, new ones included) and writes to
    output_dir: the annotations with the mined boxes (annotations/ for VOC,
    annotations.json for COCO), label_studio.json, candidates.json and the drawn
    review/ page (data/io/mining/review_page.py). Returns the MiningResult."""
    # Here: these import TensorFlow.
    from data.io import convert
    from data.io.mining import labels as mined_labels, review_page
    from libs.mining.embedding import CropEmbedder
    from libs.serving.export import Detector

    cfg = run.cfg
    unknown = [name for name in new_classes if name not in run.class_names]
    if not new_classes or unknown:
        raise MiningError(f"--new_classes {','.join(new_classes) or '(none)'}: each must be "
                          f"a class of the reference set {run.reference_dir} "
                          f"({', '.join(run.class_names)})")
    images, _ = convert.read_annotations(fmt, image_dir, annotations, split_file,
                                         class_names=class_names)
    target = mined_labels.annotations_target(fmt, output_dir, overwrite, annotations)
    _, crops = reference_set.select_reference_files(
        run.reference_dir, new_classes, num_supports=1 << 16, min_supports=1)
    os.makedirs(output_dir, exist_ok=True)
    with Detector.from_checkpoint(run, checkpoint) as detector, \
            CropEmbedder(cfg, feature_checkpoint) as embedder:
        result = mine_images(detector, embedder, images, new_classes, crops, cfg,
                             seed=cfg.SEED, progress_every_seconds=progress_every_seconds)
    mined_labels.write_annotations(fmt, annotations, images, result.candidates, target,
                                   overwrite=overwrite, class_names=class_names)
    version = f"{os.path.basename(os.path.normpath(run.model_dir))}@{os.path.basename(checkpoint)}"
    mined_labels.write_label_studio(result.candidates, os.path.join(output_dir, "label_studio.json"),
                               version, image_url_prefix)
    mined_labels.write_ranked_list(result, os.path.join(output_dir, "candidates.json"))
    review_page.write_review_page(os.path.join(output_dir, "review"), result, images, crops)
    return result
