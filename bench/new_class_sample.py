"""A class never trained on, added from reference crops: the generated sample's table.

    python bench/new_class_sample.py --out output/new_class_sample
    python bench/new_class_sample.py --out output/new_class_sample --name by_size \
        "--set=ROI_POOLING='by_size'"
    python bench/new_class_sample.py --out output/new_class_sample --name cell_only \
        --base cell --new spore
    python bench/new_class_sample.py --out output/new_class_sample --name left_out \
        --leave_out crystal
    python bench/new_class_sample.py --out output/new_class_sample --name hidden \
        --hidden --mine --retrain all,second_stage

One row of docs/fewshot.md ("The generated sample: a new class from references"): the
config (default cfgs/tiny_fewshot.py, with --set overrides) is trained on generated
images of the --base classes only (72 train images; the --new class never appears in
them), then exported without retraining with 3 reference crops per class cropped from
other images (sample seed + 1), the new class among them, and evaluated on their 12
val images: AP@0.5 per class, through the exported SavedModel as a user serves it. The
same recipe is tests/test_fewshot_e2e.py's fixture (`build`, `average_precision`).
Each row takes about 3 minutes (2 cores); its result is <out>/<name>/result.json.
--leave_out also exports the model without one class's references: how many of that
class's objects the head names as one of the given classes (a closed set).
--hidden draws the new class in the training images too, unlabelled (learned as
background: the case of issue 32); --mine then runs tools/mine_labels.py over those
training images and scores its candidates against the hidden objects (score_mining);
--retrain retrains from the base model on the mined labels (retrain_row), one row per
choice of what trains (RETRAINABLE); --review V retrains after a simulated reviewer
checked the first V candidates (simulate_review).
"""
import argparse
import json
import os
import shutil
import sys
from xml.etree import ElementTree

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, run_tool, write_json
from bench.hidden_objects import (HIDDEN_FILE, describe_score, hide_classes,
                                   label_hidden, score_mining, simulate_review)

CFG = os.path.join(REPO, "cfgs", "tiny_fewshot.py")
NUM_BASE_IMAGES = 72
NUM_EVAL_IMAGES = 12
REFERENCES_PER_CLASS = 3


def voc_args(voc, split):
    voc = str(voc)
    return ["--format", "voc", "--image_dir", os.path.join(voc, "JPEGImages"),
            "--annotations", os.path.join(voc, "Annotations"), "--split_file",
            os.path.join(voc, "ImageSets", "Main", f"{split}.txt")]


def training_sets(base_classes, backbone_dir, sets=()):
    """The --set flags of build()'s training (and its exports)."""
    return [f"--set={s}" for s in [f"BACKBONE_CHECKPOINT='{backbone_dir}'",
                                   f"NUM_CLASS={len(base_classes) + 1}",
                                   "DETECTION_MIN_CONFIDENCE=0.05", *sets]]


def strip_class(voc, class_name):
    """Removes `class_name`'s objects from every XML of a VOC folder (the images keep
    them: objects nobody labelled); their boxes ({stem: [[y1, x1, y2, x2], ...]}) go to
    <voc>/hidden_objects.json, the truth a miner is scored against. Returns them."""
    xml_dir = os.path.join(str(voc), "Annotations")
    removed = hide_classes(xml_dir, xml_dir, [class_name])[class_name]
    write_json(os.path.join(str(voc), HIDDEN_FILE), removed)
    return removed


def build(root, base_classes, new_class, backbone_dir, sets=(), seed=0, cfg=CFG,
          exports=None, hidden=False):
    """Trains on the base classes and exports. root: an empty folder.
    hidden: the new class is drawn in the training images too, unlabelled (learned as
    background: the case tools/mine_labels.py is for); else it never appears in them.

    exports: {export name: {class name in the export: class of the sample}}; default
    one export "all" with every class under its own name. Returns {"voc": the
    evaluation images' VOC folder, <export name>: its SavedModel folder}.
    """
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.sample.generate import generate_voc_dataset

    root = str(root)
    classes = list(base_classes) + [new_class]
    exports = exports or {"all": {name: name for name in classes}}
    train_voc, voc = os.path.join(root, "train_voc"), os.path.join(root, "voc")
    generate_voc_dataset(train_voc, num_train=NUM_BASE_IMAGES, num_val=4, seed=seed,
                         classes=classes if hidden else list(base_classes))
    if hidden:
        strip_class(train_voc, new_class)
    generate_voc_dataset(voc, num_train=NUM_EVAL_IMAGES, num_val=NUM_EVAL_IMAGES,
                         seed=seed + 1, classes=classes)
    data = os.path.join(root, "data")
    run_tool("convert_to_tfrecord.py", *voc_args(train_voc, "train"), "--output_dir", data)
    run_tool("make_references.py", *voc_args(train_voc, "train"), "--output_dir",
             os.path.join(root, "refs"), "--per_class", str(REFERENCES_PER_CLASS))
    # The exports' references: crops of other images, the new class among them.
    crops = os.path.join(root, "crops")
    run_tool("make_references.py", *voc_args(voc, "train"), "--output_dir", crops,
             "--per_class", str(REFERENCES_PER_CLASS))
    # Evaluation keeps low-score detections (AP needs the ranking's tail).
    set_args = training_sets(base_classes, backbone_dir, sets)
    model_dir = os.path.join(root, "model")
    run_tool("train.py", "--cfg", cfg, "--data_dir", data, "--reference_dir",
             os.path.join(root, "refs"), "--model_dir", model_dir, *set_args)
    found = {"voc": voc, "train_voc": train_voc, "model": model_dir, "data": data}
    for name, rename in exports.items():
        found[name] = export(root, name, rename, set_args, cfg)
    return found


def export(root, name, rename, set_args, cfg=CFG, model="model", data="data"):
    """Exports build()'s model under root (or root/<model>, trained on root/<data>) with
    the crops of `rename` ({class name in the export: class of the sample}) as
    references; returns the SavedModel folder.
    set_args: the --set flags (training's, and any inference-only field)."""
    references = os.path.join(root, f"refs_{name}")
    for export_class, sample_class in rename.items():
        shutil.copytree(os.path.join(root, "crops", sample_class),
                        os.path.join(references, export_class))
    export_dir = os.path.join(root, f"export_{name}")
    run_tool("export_savedmodel.py", "--cfg", cfg, "--data_dir", os.path.join(root, data),
             "--reference_dir", references, "--model_dir", os.path.join(root, model),
             "--export_dir", export_dir, *set_args)
    return export_dir


def ground_truth(xml_path):
    """[y1, x1, y2, x2] boxes (pixels) and class names of a VOC annotation."""
    boxes, names = [], []
    for obj in ElementTree.parse(xml_path).getroot().iter("object"):
        box = obj.find("bndbox")
        x1, y1, x2, y2 = (float(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([y1, x1, y2, x2])
        names.append(obj.find("name").text)
    return np.array(boxes, np.float32).reshape(-1, 4), names


def average_precision(export_dir, voc, rename):
    """AP@0.5 per exported class over voc's val split; ground truth of the classes the
    export names (`rename`: its class -> the sample's), other objects dropped."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.evaluation.detection_evaluator import DetectionEvaluator
    from libs.serving import export

    classes = export.read_export_info(export_dir)["class_names"]
    if classes != sorted(rename):
        raise RuntimeError(f"{export_dir} names {classes}, expected {sorted(rename)}")
    sample_name = {source: name for name, source in rename.items()}
    evaluator = DetectionEvaluator(classes)
    with open(os.path.join(voc, "ImageSets", "Main", "val.txt")) as handle:
        val = handle.read().split()
    with export.Detector.from_saved_model(export_dir) as detector:
        for index, image_id in enumerate(val):
            with open(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), "rb") as handle:
                found = detector.detect([handle.read()])[0]
            boxes, names = ground_truth(os.path.join(voc, "Annotations", f"{image_id}.xml"))
            keep = [n in sample_name for n in names]
            evaluator.add_ground_truth(
                index, boxes[keep],
                np.array([classes.index(sample_name[n]) + 1 for n in names
                          if n in sample_name], np.int64))
            evaluator.add_detections(index, found["boxes"], found["scores"],
                                     found["class_ids"])
    results = evaluator.evaluate()
    return {name: results[f"voc/AP@0.5/{name}"] for name in classes}


def named_objects(export_dir, voc, sample_class, min_score=0.5):
    """(how many of voc's val objects of `sample_class` a detection of any class with
    score >= min_score covers at IoU >= 0.5, how many there are)."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.evaluation.detection_evaluator import iou_matrix
    from libs.serving import export

    with open(os.path.join(voc, "ImageSets", "Main", "val.txt")) as handle:
        val = handle.read().split()
    named = total = 0
    with export.Detector.from_saved_model(export_dir) as detector:
        for image_id in val:
            boxes, names = ground_truth(os.path.join(voc, "Annotations", f"{image_id}.xml"))
            objects = boxes[[n == sample_class for n in names]]
            if not len(objects):
                continue
            with open(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), "rb") as handle:
                found = detector.detect([handle.read()])[0]
            shown = found["boxes"][found["scores"] >= min_score]
            total += len(objects)
            if len(shown):
                named += int((iou_matrix(objects, shown).max(axis=1) >= 0.5).sum())
    return named, total


def left_out_row(row, base, new, leave_out, set_args, cfg=CFG):
    """The trained row exported without `leave_out`'s references: AP of the given
    classes (the left-out objects count as false positives when named) and how many
    left-out objects are named."""
    voc = os.path.join(row, "voc")
    given = {name: name for name in base + [new] if name != leave_out}
    found = export(row, f"without_{leave_out}", given, set_args, cfg)
    named, total = named_objects(found, voc, leave_out)
    result = {"ap50": average_precision(found, voc, given),
              f"{leave_out}_named": named, f"{leave_out}_objects": total}
    print(f"without {leave_out}: " + " ".join(
        f"{k} {v:.2f}" for k, v in result["ap50"].items())
        + f"; {leave_out} named {named} of {total}", flush=True)
    return result


def mine_row(row, found, base, new, set_args, cfg=CFG, model=None, data=None,
             name="mined"):
    """tools/mine_labels.py over build(hidden=True)'s training images into <row>/<name>,
    with the new class's reference crops (other images) beside the base classes'
    references; scored against the hidden truth (score_mining). model, data: the
    model that mines and its data (default build()'s base model: the first round)."""
    references = os.path.join(row, "refs_mining")
    if not os.path.isdir(references):
        shutil.copytree(os.path.join(row, "refs"), references)
        shutil.copytree(os.path.join(row, "crops", new), os.path.join(references, new))
    mined = os.path.join(row, name)
    train_voc = found["train_voc"]
    run_tool("mine_labels.py", "--cfg", cfg, "--model_dir", model or found["model"],
             "--data_dir", data or found["data"], "--reference_dir", references,
             "--new_classes", new,
             *voc_args(train_voc, "train"), "--output_dir", mined, "--overwrite",
             *set_args)
    with open(os.path.join(mined, "candidates.json")) as handle:
        candidates = json.load(handle)
    with open(os.path.join(train_voc, HIDDEN_FILE)) as handle:
        hidden = json.load(handle)
    scored = score_mining(candidates["candidates"], hidden)
    scored["per_class"] = candidates["per_class"]
    print(f"mining: {describe_score(scored)}", flush=True)
    return scored


# What retraining on mined labels trains (regexes of variable names; None: everything
# the config trains). Measured, not assumed: docs/fewshot.md.
RETRAINABLE = {"all": None, "second_stage": ["fast_rcnn/", "background_prototype/"]}


def retrain_row(row, found, base, new, backbone, sets, trainable, cfg=CFG,
                labels="mined", name=None):
    """Retrains build()'s model on <row>/<labels>/annotations (mine_row's: the base
    labels, accepted candidates as labels of `new`, doubtful ones as ignore regions; or
    simulate_review's), from the base model, with RETRAINABLE[trainable] training;
    exported with every class's crops. Returns AP@0.5 per class on the evaluation
    images."""
    classes = list(base) + [new]
    name = name or f"retrained_{trainable}"
    data = os.path.join(row, f"data_{name}")
    train_voc = found["train_voc"]
    run_tool("convert_to_tfrecord.py", "--format", "voc", "--image_dir",
             os.path.join(train_voc, "JPEGImages"), "--annotations",
             os.path.join(row, labels, "annotations"), "--split_file",
             os.path.join(train_voc, "ImageSets", "Main", "train.txt"),
             "--classes", ",".join(classes), "--output_dir", data)
    retrain_sets = [f"INIT_CHECKPOINT='{found['model']}'"]
    if RETRAINABLE[trainable] is not None:
        retrain_sets.append(f"TRAINABLE_VARIABLES={RETRAINABLE[trainable]}")
    set_args = training_sets(classes, backbone, [*sets, *retrain_sets])
    run_tool("train.py", "--cfg", cfg, "--data_dir", data, "--reference_dir",
             os.path.join(row, "refs_mining"), "--model_dir", os.path.join(row, name),
             *set_args)
    export_dir = export(row, name, {n: n for n in classes}, set_args, cfg, model=name,
                        data=f"data_{name}")
    ap50 = average_precision(export_dir, found["voc"], {n: n for n in classes})
    print(f"{name}: " + " ".join(f"{k} {v:.2f}" for k, v in ap50.items()), flush=True)
    return ap50


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="default", help="the row's folder in --out")
    parser.add_argument("--base", default="cell,crystal", help="classes trained on")
    parser.add_argument("--new", default="spore", help="the class added from crops")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    parser.add_argument("--cfg", default=CFG)
    parser.add_argument("--set", action="append", default=[],
                        help="config override FIELD=VALUE (repeatable)")
    parser.add_argument("--leave_out", default=None,
                        help="also export without this class's references and count "
                             "its objects named as a given class")
    parser.add_argument("--hidden", action="store_true",
                        help="the new class is in the training images, unlabelled")
    parser.add_argument("--mine", action="store_true",
                        help="with --hidden: mine it (tools/mine_labels.py) and score "
                             "the candidates against the hidden objects")
    parser.add_argument("--retrain", default=None,
                        help="with --mine: retrain from the base model on the mined "
                             "labels, training these (comma-separated: "
                             f"{', '.join(RETRAINABLE)})")
    parser.add_argument("--review", default=None,
                        help="with --retrain: also retrain after a simulated reviewer "
                             "checked this many candidates (comma-separated, e.g. 25,100), "
                             "training the first --retrain choice")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --retrain: mining rounds; round r mines with round "
                             "r-1's model retrained (the first --retrain choice) and "
                             "retrains the base model on its labels")
    parser.add_argument("--mine_set", action="append", default=[],
                        help="with --tag: a mining variant, FIELD=VALUE for the miner only "
                             "(e.g. MINE_ACCEPT_SCORE=0.6), mined and retrained (the first "
                             "--retrain choice) beside the row's own")
    parser.add_argument("--tag", default=None, help="names the --mine_set variant")
    parser.add_argument("--labelled", action="store_true",
                        help="with --retrain: also retrain with every hidden object "
                             "labelled (the ceiling: a user who labels them all)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the row's finished steps (result.json) and do the rest")
    args = parser.parse_args()
    retrain = args.retrain.split(",") if args.retrain else []
    reviews = [int(v) for v in args.review.split(",")] if args.review else []
    if (reviews or args.mine_set or args.labelled) and not retrain:
        parser.error("--review, --labelled and --mine_set need --retrain")
    if bool(args.mine_set) != bool(args.tag):
        parser.error("--mine_set makes a variant: name it with --tag (and only then)")
    if any(r not in RETRAINABLE for r in retrain):
        parser.error(f"--retrain: each one of {', '.join(RETRAINABLE)}")
    if args.mine and not args.hidden or retrain and not args.mine:
        parser.error("--mine needs --hidden (objects to find in the training images), "
                     "--retrain needs --mine")
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from libs.weights import pretrained

    row = os.path.join(args.out, args.name)
    result_file = os.path.join(row, "result.json")
    result = None
    if args.resume and os.path.exists(result_file):
        with open(result_file) as handle:
            result = json.load(handle)
    else:
        shutil.rmtree(row, ignore_errors=True)
    backbone = os.path.join(args.out, "efficientnet_lite0")
    if not os.path.exists(os.path.join(backbone, "checkpoint")):
        pretrained.import_backbone("efficientnet_lite0", backbone)
    base = args.base.split(",")
    classes = base + [args.new]
    if result is None:
        found = build(row, base, args.new, backbone, args.set, args.seed, args.cfg,
                      hidden=args.hidden)
        result = {"base": base, "new": args.new, "seed": args.seed, "sets": args.set,
                  "hidden": args.hidden,
                  "ap50": average_precision(found["all"], found["voc"],
                                            {n: n for n in classes})}
        write_json(result_file, result)
    else:                               # build()'s folders, as it names them
        found = {"voc": os.path.join(row, "voc"), "train_voc": os.path.join(row, "train_voc"),
                 "model": os.path.join(row, "model"), "data": os.path.join(row, "data")}
    if args.leave_out and "left_out" not in result:
        result["left_out"] = left_out_row(row, base, args.new, args.leave_out,
                                          training_sets(base, backbone, args.set), args.cfg)
    if args.mine and "mining" not in result:
        result["mining"] = mine_row(row, found, base, args.new,
                                    training_sets(base, backbone, args.set), args.cfg)
        write_json(result_file, result)
    for trainable in retrain:
        if trainable not in result.get("retrained", {}):
            result.setdefault("retrained", {})[trainable] = retrain_row(
                row, found, base, args.new, backbone, args.set, trainable, args.cfg)
            write_json(result_file, result)
    hidden = {}
    if args.hidden:
        with open(os.path.join(found["train_voc"], HIDDEN_FILE)) as handle:
            hidden = json.load(handle)
    for checks in reviews:
        if str(checks) in result.get("reviewed", {}):
            continue
        with open(os.path.join(row, "mined", "candidates.json")) as handle:
            candidates = json.load(handle)["candidates"]
        reviewed = f"reviewed_{checks}"
        counts = simulate_review(os.path.join(row, "mined"), os.path.join(row, reviewed),
                                 candidates, {args.new: hidden}, checks)
        print(f"review of {checks}: {counts}", flush=True)
        result.setdefault("reviewed", {})[str(checks)] = {
            "review": counts, "ap50": retrain_row(
                row, found, base, args.new, backbone, args.set, retrain[0], args.cfg,
                labels=reviewed, name=f"retrained_{retrain[0]}_{reviewed}")}
        write_json(result_file, result)
    if args.labelled and "labelled" not in result:
        label_hidden(found["train_voc"], os.path.join(row, "labelled"), {args.new: hidden})
        result["labelled"] = retrain_row(row, found, base, args.new, backbone, args.set,
                                         retrain[0], args.cfg, labels="labelled",
                                         name=f"retrained_{retrain[0]}_labelled")
        write_json(result_file, result)
    if args.mine_set and args.tag not in result.get("variants", {}):
        name = f"mined_{args.tag}"
        mining = mine_row(row, found, base, args.new, training_sets(
            base, backbone, args.set) + [f"--set={v}" for v in args.mine_set], args.cfg,
            name=name)
        result.setdefault("variants", {})[args.tag] = {
            "mine_set": args.mine_set, "mining": mining, "ap50": retrain_row(
                row, found, base, args.new, backbone, args.set, retrain[0], args.cfg,
                labels=name, name=f"retrained_{retrain[0]}_{args.tag}")}
        write_json(result_file, result)
    for round_number in range(2, args.rounds + 1):
        key = f"round{round_number}"
        if key in result:
            continue
        last = f"retrained_{retrain[0]}" + ("" if round_number == 2
                                            else f"_round{round_number - 1}")
        mining = mine_row(row, found, base, args.new,
                          training_sets(classes, backbone, args.set), args.cfg,
                          model=os.path.join(row, last),
                          data=os.path.join(row, f"data_{last}"), name=f"mined_{key}")
        result[key] = {"mining": mining, "ap50": retrain_row(
            row, found, base, args.new, backbone, args.set, retrain[0], args.cfg,
            labels=f"mined_{key}", name=f"retrained_{retrain[0]}_{key}")}
        write_json(result_file, result)
    write_json(os.path.join(row, "result.json"), result)
    print(" ".join(f"{name} {value:.2f}" for name, value in result["ap50"].items()))


if __name__ == "__main__":
    main()
