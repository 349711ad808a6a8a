"""Few-shot with new classes (DESIGN.md section 9): base/novel, K-shot, three methods.

    python bench/base_novel.py --dataset deeppcb --out output/fs_deeppcb
    python bench/base_novel.py --dataset bccd --out output/fs_bccd --shots 1,3,5,10 \
        --seeds 0,1,2

Per dataset (presets below: images, config, novel classes), everything through the
project's own tools, as a user would run them:
  1. base data: every train image with the novel classes' boxes removed
     (tools/make_fewshot_split.py --base_only), val with every class;
  2. base models, trained on it: the comparison detector of the config (its head
     must not depend on the number of classes) and the FC baseline (CLASSIFIER "fc",
     per-class boxes: the TFA recipe's base model); an upper bound trained on all
     classes with the full data;
  3. for each K and seed, a K-shot set (K instances of every class, base and novel,
     and their crops); the references of every method are the base model's own for
     the base classes (5 each: base data is plentiful) and the K crops of each novel
     class; then
       (A) comparison, no fine-tuning: the base model with those references,
       (B) comparison fine-tuned on the K-shot set (second stage and background
           prototype trainable; backbone, FPN and RPN frozen),
       (B_ignore) the same on the K-shot split whose images keep their other objects
           (other classes, instances beyond K) as ignore regions instead of background
           (make_fewshot_split.py --others_as_ignore),
       (C) FC fine-tuned TFA-style on the same set: the classifier and box regressor
           resized for all classes (base rows kept by name), only they train;
       (M) the novel classes' unlabelled objects mined (issue 32): the train images as
           a user holds them after labelling K (base classes everywhere, the novel
           ones only on the K shots; the rest is the hidden truth mining is scored
           against), tools/mine_labels.py with the base model and the references
           above, then the base model retrained on the mined annotations (everything
           the config trains, --retrain_steps);
       (M_V<n>, --review n) the same after a simulated reviewer checked the first n
           candidates of each novel class (bench/hidden_objects.py);
     each evaluated on val (tools/eval.py --novel_classes: nAP50 and bAP50);
  4. for (A), what limits it (--diagnose, first seed of each K): per class, the recall
     of the proposals
     (IoU >= 0.5, among those the second stage sees), the class probabilities of the
     ROIs that cover an object, and how far apart the prototypes are.
Prints a table of nAP50 / bAP50, mean +- std over seeds, per K and method; every run
is kept in <out>/results.json (a rerun skips what is done). Model folders that exist
are reused (--base_model etc. point at ones trained elsewhere).
"""
import argparse
import collections
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO, read_json, run_tool, write_json  # noqa: E402
from bench.hidden_objects import (HIDDEN_FILE, describe_score, hide_classes,  # noqa: E402
                                  score_mining, simulate_review)
from data.io import reference_set  # noqa: E402
from data.io.dataset import open_run  # noqa: E402
from libs.train import devices, runs  # noqa: E402

SHARED = os.path.join(REPO, "..", "shared", "datasets")
# The head that runs with classes it never saw (docs/fewshot.md), set on every preset's
# config (cfgs/deeppcb_cpu.py has it). ROIs are pooled by size, as the configs' own
# full-data models (the upper bounds) were trained; the from-scratch experiment pooled
# on all levels (--set "ROI_POOLING='all_levels'" reproduces it).
NEW_CLASS_HEAD = ["COMPARISON_SCORE='distance'", "BACKGROUND_PROTOTYPE='pooled'",
                  "BOX_REGRESSION='class_agnostic'"]
PRESETS = {
    "deeppcb": {"voc": os.path.join(SHARED, "deeppcb"), "cfg": "cfgs/deeppcb_cpu.py",
                "novel": ["short", "spur", "pin-hole"], "sets": NEW_CLASS_HEAD},
    "bccd": {"voc": os.path.join(SHARED, "bccd"), "cfg": "cfgs/bccd_cpu.py",
             "novel": ["Platelets"], "sets": NEW_CLASS_HEAD},
}
# The generated sample (make demo's), for a quick run of the whole protocol.
PRESETS["sample"] = {"voc": os.path.join(REPO, "output", "sample", "voc"),
                     "cfg": "cfgs/tiny_fewshot.py", "novel": ["crystal"],
                     "sets": NEW_CLASS_HEAD}
METHODS = ("A", "B", "B_ignore", "C", "M")
MINED = "M"
REVIEWED = "M_V"             # + the number of checks: a row's reviewed method
BASE_REFERENCES = 5          # references per base class, cropped from the base data
# What fine-tuning trains (regexes of variable names); the rest stays frozen.
TRAINABLE = {"B": ["fast_rcnn/", "background_prototype/"],
             "B_ignore": ["fast_rcnn/", "background_prototype/"],
             "C": ["fast_rcnn/fc_classifier/", "fast_rcnn/box_regressor/"],
             MINED: None}    # everything the config trains: the RPN must unlearn the
                             # novel objects as background (docs/fewshot.md, the sample)
# The FC baseline is a plain Faster R-CNN head: per-class boxes and each ROI pooled from
# the level its size picks. (With the comparison head's all-levels pooling, an FC base
# model on DeepPCB reached 0.05 bAP50 on val, by size 0.34: docs/fewshot.md.)
FC_SETS = ["CLASSIFIER='fc'", "BOX_REGRESSION='per_class'", "ROI_POOLING='by_size'"]


def sets_args(sets):
    return [f"--set={s}" for s in sets]


def voc_args(voc, split):
    return ["--format", "voc", "--image_dir", os.path.join(voc, "JPEGImages"),
            "--annotations", os.path.join(voc, "Annotations"),
            "--split_file", os.path.join(voc, "ImageSets", "Main", f"{split}.txt")]


def prepare_base(args, preset):
    """Base data (novel boxes removed) + base references; full data + references."""
    base, full = os.path.join(args.out, "base"), os.path.join(args.out, "full")
    novel = ",".join(preset["novel"])
    if not os.path.exists(os.path.join(base, "data", "label_map.json")):
        run_tool("make_fewshot_split.py", *voc_args(args.voc, "train"), "--novel_classes",
                 novel, "--base_only", "--val_split_file",
                 os.path.join(args.voc, "ImageSets", "Main", "val.txt"),
                 "--output_dir", base)
    with open(os.path.join(base, "data", "label_map.json")) as handle:
        base_classes = [c["name"] for c in json.load(handle)["classes"]]
    if not os.path.isdir(os.path.join(base, "references")):
        run_tool("make_references.py", *voc_args(args.voc, "train"), "--output_dir",
                 os.path.join(base, "references"), "--per_class", str(BASE_REFERENCES),
                 "--classes",
                 ",".join(base_classes))
    if not os.path.exists(os.path.join(full, "data", "label_map.json")):
        for split in ("train", "val"):
            run_tool("convert_to_tfrecord.py", *voc_args(args.voc, split), "--output_dir",
                     os.path.join(full, "data"))
        run_tool("make_references.py", *voc_args(args.voc, "train"), "--output_dir",
                 os.path.join(full, "references"), "--per_class", "5")
    return base, full, base_classes


def train(args, preset, data_dir, reference_dir, model_dir, sets, num_class, max_steps=None):
    """tools/train.py unless model_dir already holds a finished run."""
    done = os.path.join(model_dir, "trained.json")
    if os.path.exists(done):
        return
    extra = ["--max_minutes", str(args.base_minutes)] if args.base_minutes else []
    if max_steps:
        extra = ["--max_steps", str(max_steps)]
    run_tool("train.py", "--cfg", args.cfg, "--data_dir", data_dir, "--reference_dir",
             reference_dir, "--model_dir", model_dir, f"--set=NUM_CLASS={num_class}",
             *sets_args(preset["sets"] + sets), *extra)
    write_json(done, {"sets": preset["sets"] + sets})


def evaluate(args, preset, data_dir, reference_dir, model_dir, sets, report, novel=True):
    """tools/eval.py on val (nAP50 / bAP50 with novel) unless `report` exists. A model
    this script trained runs with the settings it was trained with (trained.json); one
    trained elsewhere (--full_model) with its config's own."""
    if not os.path.exists(report):
        novel_args = ["--novel_classes", ",".join(preset["novel"])] if novel else []
        trained = read_json(os.path.join(model_dir, "trained.json"))
        if sets:
            model_sets = preset["sets"] + sets
        elif trained:
            model_sets = trained["sets"]
        else:       # trained elsewhere: its config's own settings
            model_sets = []
        run_tool("eval.py", "--cfg", args.cfg, "--data_dir", data_dir, "--reference_dir",
                 reference_dir, "--model_dir", model_dir, "--report", report, *novel_args,
                 *sets_args(model_sets))
    results = read_json(report)["results"]
    return {k: v for k, v in results.items() if k.startswith(("voc/", "coco/"))}


def kshot_split(args, preset, all_classes, shots, seed, others_as_ignore=False):
    """The K-shot split's folder (tools/make_fewshot_split.py), made when missing;
    others_as_ignore: the drawn images' other objects kept as ignore regions."""
    split = os.path.join(args.out, f"k{shots}_seed{seed}" +
                         ("_ignore" if others_as_ignore else ""))
    if not os.path.exists(os.path.join(split, "kshot.json")):
        run_tool("make_fewshot_split.py", *voc_args(args.voc, "train"),
                 "--novel_classes", ",".join(preset["novel"]), "--shots",
                 str(shots), "--seed", str(seed), "--classes",
                 ",".join(all_classes), "--val_split_file",
                 os.path.join(args.voc, "ImageSets", "Main", "val.txt"),
                 "--output_dir", split,
                 *(["--others_as_ignore"] if others_as_ignore else []))
    return split


def merged_references(split, base_refs, novel):
    """<split>/references_base_novel: the base model's references of the base classes
    (BASE_REFERENCES each; base data is plentiful) and the K-shot crops of the novel
    classes. A class with fewer crops than NUM_SUPPORTS averages those it has."""
    merged = os.path.join(split, "references_base_novel")
    if not os.path.isdir(merged):
        staging = merged + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(base_refs, staging)
        os.remove(os.path.join(staging, "references.json"))     # folders name the classes
        for name in novel:
            folder = reference_set.class_dir_name(name)
            shutil.copytree(os.path.join(split, "references", folder),
                            os.path.join(staging, folder))
        os.replace(staging, merged)
    return merged


def fine_tune_sets(method, init, shots, num_images, steps, lr):
    epochs = steps / max(num_images, 1)
    trainable = TRAINABLE[method]
    # (MIN_STEPS=None: the fine-tuning's own length, `steps`, not the config's floor.)
    sets = [f"INIT_CHECKPOINT='{init}'", f"LR={lr}", f"EPOCH={epochs}",
            f"EPOCH_BOUNDARY=[{0.8 * epochs}]", "MIN_STEPS=None",
            f"NUM_SUPPORTS={max(shots, BASE_REFERENCES)}", "SAVE_CHECKPOINTS_STEPS=100000",
            "SAVE_SUMMARY_STEPS=100000"]
    if trainable is not None:
        sets.append(f"TRAINABLE_VARIABLES={trainable}")
    return sets + (FC_SETS if method == "C" else [])


def train_stems(voc):
    with open(os.path.join(voc, "ImageSets", "Main", "train.txt")) as handle:
        return {line.split()[0] for line in handle if line.strip()}


def mining_input(args, preset, split):
    """<split>/mining_input/Annotations: the train annotations a user holds after
    labelling K shots (base classes everywhere, each novel class only on its drawn
    shots, kshot.json); the novel objects left out are <split>/mining_input/
    hidden_objects.json ({class: {stem: boxes}}), the truth mining is scored against.
    Returns (the folder, the hidden truth)."""
    folder = os.path.join(split, "mining_input")
    if not os.path.exists(os.path.join(folder, HIDDEN_FILE)):
        manifest = read_json(os.path.join(split, "kshot.json"))
        keep = {}
        for name in preset["novel"]:
            for entry in manifest["per_class"][name]["images"]:
                stem = os.path.splitext(os.path.basename(entry["filename"]))[0]
                keep.setdefault(name, {}).setdefault(stem, []).extend(entry["boxes"])
        staging = folder + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        hidden = hide_classes(os.path.join(args.voc, "Annotations"),
                              os.path.join(staging, "Annotations"), preset["novel"], keep,
                              stems=train_stems(args.voc))
        write_json(os.path.join(staging, HIDDEN_FILE), hidden)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    return folder, read_json(os.path.join(folder, HIDDEN_FILE))


def mine(args, preset, split, refs, base_model, all_classes, supports):
    """tools/mine_labels.py over the train images (mining_input's annotations) with the
    base model and `refs`, into <split>/mined; scored per novel class against the
    hidden truth (bench/hidden_objects.score_mining)."""
    inputs, hidden = mining_input(args, preset, split)
    mined = os.path.join(split, "mined")
    if not os.path.exists(os.path.join(mined, "candidates.json")):
        run_tool("mine_labels.py", "--cfg", args.cfg, "--model_dir", base_model,
                 "--data_dir", os.path.join(split, "data"), "--reference_dir", refs,
                 "--new_classes", ",".join(preset["novel"]), "--format", "voc",
                 "--image_dir", os.path.join(args.voc, "JPEGImages"),
                 "--annotations", os.path.join(inputs, "Annotations"),
                 "--split_file", os.path.join(args.voc, "ImageSets", "Main", "train.txt"),
                 "--output_dir", mined, "--overwrite",
                 *sets_args(preset["sets"] + supports +
                            [f"NUM_CLASS={len(all_classes) + 1}"]))
    candidates = read_json(os.path.join(mined, "candidates.json"))["candidates"]
    scores = {name: score_mining([c for c in candidates if c["class"] == name],
                                 hidden[name]) for name in preset["novel"]}
    for name, score in scores.items():
        print(f"mining {name}: {describe_score(score)}", flush=True)
    return mined, candidates, hidden, scores


def retrain(args, preset, split, labels, name, refs, base_model, all_classes, shots):
    """The base model retrained on <labels>/annotations (the mined or reviewed train
    annotations) for --retrain_steps, everything the config trains (or
    --retrain_trainable); evaluated on val with `refs`."""
    data = os.path.join(split, f"data_{name}")
    if not os.path.exists(os.path.join(data, "label_map.json")):
        run_tool("convert_to_tfrecord.py", "--format", "voc", "--image_dir",
                 os.path.join(args.voc, "JPEGImages"), "--annotations",
                 os.path.join(labels, "annotations"), "--split_file",
                 os.path.join(args.voc, "ImageSets", "Main", "train.txt"),
                 "--classes", ",".join(all_classes), "--output_dir", data)
    with open(os.path.join(data, "label_map.json")) as handle:
        num_images = json.load(handle)["splits"]["train"]["num_images"]
    model_dir = os.path.join(split, name)
    sets = fine_tune_sets(MINED, base_model, shots, num_images, args.retrain_steps,
                          args.retrain_lr)
    if args.retrain_trainable:
        sets.append(f"TRAINABLE_VARIABLES={args.retrain_trainable.split(',')}")
    train(args, preset, data, refs, model_dir, sets, len(all_classes) + 1,
          max_steps=args.retrain_steps)
    return evaluate(args, preset, os.path.join(split, "data"), refs, model_dir, sets,
                    os.path.join(split, f"eval_{name}.json"))


def diagnose(args, preset, data_dir, reference_dir, model_dir, supports):
    """Per class: proposal recall@0.5, class probabilities and RPN objectness of the
    ROIs covering its objects; the objectness of ROIs touching no object (IoU < 0.1)
    and how many distinct objectness values an image's proposals have; and the
    prototypes' pairwise distances (mean squared difference)."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io.input_fn import EVAL, make_input_fn
    from libs.base.tf_compat import seeded_graph, tf
    from libs.configs import load_config_from_flags
    from libs.train.model_fn import PREDICT, detector_graph

    run = open_run(load_config_from_flags(args.cfg, preset["sets"] + supports), data_dir,
                   reference_dir, model_dir, inference=True)
    cfg = run.cfg                   # NUM_CLASS: the data's (libs/train/runs.py)
    names = ["background"] + list(run.class_names)
    hits, probs = collections.defaultdict(list), collections.defaultdict(list)
    objectness, distinct = collections.defaultdict(list), []
    graph = seeded_graph(cfg.SEED)
    with graph.as_default():
        features, labels = tf.data.make_one_shot_iterator(
            make_input_fn(cfg, EVAL, data_dir=data_dir)()).get_next()
        detector = detector_graph(features, None, PREDICT, runs.model_params(run))
        frcnn = detector["fast_rcnn"]
        roi_probs = tf.reshape(frcnn.class_probs, [-1, int(frcnn.rois.shape[1]),
                                                   cfg.NUM_CLASS])
        with tf.Session(graph=graph, config=devices.session_config()) as session:
            tf.train.Saver().restore(session, runs.resolve_checkpoint(model_dir))
            prototypes = session.run(detector["prototypes"])
            while True:
                try:
                    rois, p, scores, boxes, classes = session.run(
                        [frcnn.rois, roi_probs, detector["proposal_scores"],
                         labels["gt_boxes"], labels["gt_labels"]])
                except tf.errors.OutOfRangeError:
                    break
                for b in range(rois.shape[0]):
                    real = rois[b].any(axis=1)
                    distinct.append(len(np.unique(scores[b][real])))
                    touching = np.zeros(len(rois[b]), bool)
                    for box, label in zip(boxes[b], classes[b]):
                        if label <= 0:
                            continue
                        iou = box_iou(rois[b], box)
                        touching |= iou >= 0.1
                        covering = iou >= 0.5
                        hits[names[label]].append(bool(covering.any()))
                        if covering.any():
                            probs[names[label]].append(p[b][covering].mean(axis=0))
                            objectness[names[label]].extend(scores[b][covering])
                    objectness["(no object)"].extend(scores[b][real & ~touching])
    flat = prototypes.reshape(len(prototypes), -1)
    distances = ((flat[:, None] - flat[None]) ** 2).mean(axis=-1)
    return {"proposal_recall@0.5": {n: float(np.mean(h)) for n, h in hits.items()},
            "covering_roi_probs": {n: dict(zip(names, np.mean(p, axis=0).round(3).tolist()))
                                   for n, p in probs.items()},
            # the RPN's objectness (rows: covering ROIs per class, and ROIs touching no
            # object): quartiles and the share above 0.5
            "roi_objectness": {n: {"quartiles": np.percentile(v, [25, 50, 75]).round(3)
                                   .tolist(), "above_0.5": round(float(np.mean(
                                       np.array(v) > 0.5)), 3)}
                               for n, v in objectness.items()},
            "distinct_objectness_per_image": {"median": float(np.median(distinct)),
                                              "max": int(np.max(distinct)),
                                              "proposals": int(rois.shape[1])},
            "prototype_distances": {"classes": names,
                                    "mean_squared": distances.round(4).tolist()}}


def box_iou(boxes, box):
    """IoU of boxes [N, 4] with one box [4] ([y1, x1, y2, x2])."""
    height = np.maximum(0, np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]))
    width = np.maximum(0, np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]))
    inter = height * width
    union = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
             + (box[2] - box[0]) * (box[3] - box[1]) - inter)
    return inter / np.maximum(union, 1e-9)


def row_methods(rows):
    """The methods the rows hold, in METHODS' order, the reviewed ones after them."""
    reviewed = sorted({k for row in rows for k in row if k.startswith(REVIEWED)},
                      key=lambda k: int(k[len(REVIEWED):]))
    return list(METHODS) + reviewed


def summarise(rows, shots_list):
    """{K: {method: {metric: (mean, std, n)}}} over seeds."""
    table = {}
    for shots in shots_list:
        table[shots] = {}
        for method in row_methods(rows):
            values = collections.defaultdict(list)
            for row in rows:
                if row["shots"] == shots and method in row:
                    for key in ("voc/nAP@0.5", "voc/bAP@0.5", "voc/mAP@0.5"):
                        values[key].append(row[method][key])
            table[shots][method] = {k: (float(np.mean(v)), float(np.std(v)), len(v))
                                    for k, v in values.items()}
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--voc", help="VOC folder (default: the preset's)")
    parser.add_argument("--cfg", help="config (default: the preset's)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shots", default="1,3,5,10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="A,B,C")
    parser.add_argument("--base_model", help="an existing comparison base run folder")
    parser.add_argument("--fc_base_model", help="an existing FC base run folder")
    parser.add_argument("--full_model", help="an existing full-data comparison run folder")
    parser.add_argument("--base_minutes", type=float, default=None,
                        help="time budget of each base training (default: the config's "
                             "schedule)")
    parser.add_argument("--finetune_steps", type=int, default=400)
    parser.add_argument("--finetune_lr", type=float, default=0.002)
    parser.add_argument("--review", default="",
                        help="with method M: also retrain after a simulated reviewer "
                             "checked this many candidates per novel class "
                             "(comma-separated, e.g. 25,100: methods M_V25, M_V100)")
    parser.add_argument("--retrain_steps", type=int, default=1000,
                        help="method M: steps of retraining the base model on mined labels")
    parser.add_argument("--retrain_lr", type=float, default=0.002)
    parser.add_argument("--retrain_trainable", default="",
                        help="method M: what retrains, comma-separated regexes of variable "
                             "names (e.g. rpn_net/); default everything the config trains")
    parser.add_argument("--skip_full", action="store_true",
                        help="do not train the upper bound (all classes, full data)")
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument("--train_only", choices=("comparison", "fc", "full"),
                        help="prepare the data, train this one model and stop (to train "
                             "the models in parallel processes)")
    parser.add_argument("--set", action="append", default=[],
                        help="config override FIELD=VALUE for every run (repeatable)")
    args = parser.parse_args()
    preset = dict(PRESETS[args.dataset])
    preset["sets"] = preset["sets"] + args.set
    args.voc = args.voc or preset["voc"]
    args.cfg = os.path.join(REPO, args.cfg or preset["cfg"])
    shots_list = [int(s) for s in args.shots.split(",")]
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: {', '.join(unknown)} unknown (one of {', '.join(METHODS)})")
    reviews = [int(v) for v in args.review.split(",") if v]
    if reviews and MINED not in methods:
        parser.error("--review needs method M")

    if args.dataset == "sample" and not os.path.isdir(args.voc):
        # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
        from data.sample.generate import generate_voc_dataset
        generate_voc_dataset(args.voc)
    base, full, base_classes = prepare_base(args, preset)
    all_classes = sorted(base_classes + preset["novel"])
    models = os.path.join(args.out, "models")
    base_model = args.base_model or os.path.join(models, "comparison_base")
    fc_base_model = args.fc_base_model or os.path.join(models, "fc_base")
    full_model = args.full_model or os.path.join(models, "comparison_full")
    base_data, base_refs = os.path.join(base, "data"), os.path.join(base, "references")
    trainings = {
        "comparison": (base_data, base_refs, base_model, [], len(base_classes) + 1),
        "fc": (base_data, base_refs, fc_base_model, FC_SETS, len(base_classes) + 1),
        "full": (os.path.join(full, "data"), os.path.join(full, "references"),
                 full_model, [], len(all_classes) + 1)}
    if args.train_only:
        train(args, preset, *trainings[args.train_only])
        return
    given = {"comparison": args.base_model, "fc": args.fc_base_model,
             "full": args.full_model}
    for name in ("comparison", "fc", "full"):
        if given[name] or name == "fc" and "C" not in methods or \
                name == "full" and args.skip_full:
            continue
        train(args, preset, *trainings[name])

    results_file = os.path.join(args.out, "results.json")
    state = read_json(results_file, {"rows": [], "reference": {}})
    reference = state["reference"]
    if "base" not in reference:     # the base model on val's base classes (bAP's reference)
        reference["base"] = evaluate(args, preset, base_data, base_refs, base_model, [],
                                     os.path.join(base_model, "eval_base.json"), novel=False)
    if "C" in methods and "fc_base" not in reference:   # (C)'s own bAP reference
        reference["fc_base"] = evaluate(
            args, preset, base_data, base_refs, fc_base_model,
            FC_SETS + [f"NUM_CLASS={len(base_classes) + 1}"],
            os.path.join(fc_base_model, "eval_base.json"), novel=False)
    if "full" not in reference and not args.skip_full:  # the upper bound: full data
        reference["full"] = evaluate(args, preset, os.path.join(full, "data"),
                                     os.path.join(full, "references"), full_model, [],
                                     os.path.join(full_model, "eval_full.json"))
    rows = {(r["shots"], r["seed"]): r for r in state["rows"]}
    seeds = [int(s) for s in args.seeds.split(",")]
    for shots in shots_list:
        for seed in seeds:
            row = rows.setdefault((shots, seed), {"shots": shots, "seed": seed})
            split = kshot_split(args, preset, all_classes, shots, seed)
            data_dir = os.path.join(split, "data")
            refs = merged_references(split, base_refs, preset["novel"])
            supports = [f"NUM_SUPPORTS={max(shots, BASE_REFERENCES)}"]
            with open(os.path.join(data_dir, "label_map.json")) as handle:
                num_images = json.load(handle)["splits"]["train"]["num_images"]
            if "A" in methods and "A" not in row:
                row["A"] = evaluate(args, preset, data_dir, refs, base_model, supports,
                                    os.path.join(split, "eval_A.json"))
            # The proposals depend on the base model only; the prototypes on K and seed:
            # one seed per K is enough to see what limits (A).
            if "A" in methods and args.diagnose and seed == seeds[0] and \
                    "A_diagnosis" not in row:
                row["A_diagnosis"] = diagnose(args, preset, data_dir, refs, base_model,
                                              supports)
            for method, init in (("B", base_model), ("B_ignore", base_model),
                                 ("C", fc_base_model)):
                if method not in methods or method in row:
                    continue
                method_data = data_dir
                if method == "B_ignore":    # (B) on the split whose other objects are ignored
                    method_data = os.path.join(kshot_split(args, preset, all_classes, shots,
                                                           seed, others_as_ignore=True),
                                               "data")
                model_dir = os.path.join(split, method)
                sets = fine_tune_sets(method, init, shots, num_images,
                                      args.finetune_steps, args.finetune_lr)
                train(args, preset, method_data, refs, model_dir, sets,
                      len(all_classes) + 1, max_steps=args.finetune_steps)
                row[method] = evaluate(args, preset, method_data, refs, model_dir, sets,
                                       os.path.join(split, f"eval_{method}.json"))
            if MINED in methods and (MINED not in row or any(
                    f"{REVIEWED}{n}" not in row for n in reviews)):
                mined, candidates, hidden, row["mining"] = mine(
                    args, preset, split, refs, base_model, all_classes, supports)
                if MINED not in row:
                    row[MINED] = retrain(args, preset, split, mined, MINED, refs,
                                         base_model, all_classes, shots)
                for checks in reviews:
                    name = f"{REVIEWED}{checks}"
                    if name in row:
                        continue
                    reviewed = os.path.join(split, f"reviewed_{checks}")
                    row.setdefault("review", {})[str(checks)] = simulate_review(
                        mined, reviewed, candidates, hidden, checks)
                    row[name] = retrain(args, preset, split, reviewed, name, refs,
                                        base_model, all_classes, shots)
            print(json.dumps({k: row[k] for k in row if not k.endswith("diagnosis")}),
                  flush=True)
            state["rows"] = sorted(rows.values(), key=lambda r: (r["shots"], r["seed"]))
            write_json(results_file, state)
    print_table(summarise(state["rows"], shots_list), reference, preset)


def print_table(table, reference, preset):
    base_map = reference.get("base", {}).get("voc/mAP@0.5")
    fc_map = reference.get("fc_base", {}).get("voc/mAP@0.5")
    full = reference.get("full", {})
    print(f"\nnovel: {', '.join(preset['novel'])}; base model on val's base classes: "
          f"mAP50 {base_map:.3f}" if base_map is not None else "")
    if fc_map is not None:
        print(f"FC base model on val's base classes: mAP50 {fc_map:.3f}")
    if full:
        novel_full = np.mean([full[f"voc/AP@0.5/{n}"] for n in preset["novel"]])
        print(f"upper bound (all classes, full data): mAP50 {full['voc/mAP@0.5']:.3f}, "
              f"novel classes {novel_full:.3f}")
    print("K  | method   | nAP50 mean +- std | bAP50 mean +- std | seeds")
    for shots, methods in table.items():
        for method, values in methods.items():
            if not values:
                continue
            n_mean, n_std, count = values["voc/nAP@0.5"]
            b_mean, b_std, _ = values["voc/bAP@0.5"]
            print(f"{shots:2d} | {method:8s} | {n_mean:.3f} +- {n_std:.3f}     | "
                  f"{b_mean:.3f} +- {b_std:.3f}     | {count}")


if __name__ == "__main__":
    main()
