"""Objects nobody labelled, and a mining round scored against them (issue 32).

The benches that hide a class in the training images (bench/new_class_sample.py on the
generated sample, bench/base_novel.py on the real datasets) share this: stripping a
class's boxes from VOC annotations while keeping them as the hidden truth, scoring a
round's candidates against it (score_mining), the simulated reviewer (simulate_review)
and the labelled ceiling (label_hidden). Hidden truth is {class: {image stem: [[y1, x1,
y2, x2], ...]}}.

A mining round run by hand (tools/mine_labels.py with other settings) is scored with

    python bench/hidden_objects.py --candidates <mined>/candidates.json \
        --hidden <split>/mining_input/hidden_objects.json
"""
import argparse
import json
import os
import shutil
from xml.etree import ElementTree

import numpy as np

HIDDEN_FILE = "hidden_objects.json"


def box_of(element):
    """A VOC <object>'s box as [y1, x1, y2, x2]."""
    box = element.find("bndbox")
    return [float(box.find(k).text) for k in ("ymin", "xmin", "ymax", "xmax")]


def add_object(root, name, box):
    """Appends a labelled VOC <object> of `name`, box (y1, x1, y2, x2), to `root`."""
    element = ElementTree.SubElement(root, "object")
    ElementTree.SubElement(element, "name").text = name
    ElementTree.SubElement(element, "difficult").text = "0"
    bndbox = ElementTree.SubElement(element, "bndbox")
    y1, x1, y2, x2 = box
    for key, value in (("xmin", x1), ("ymin", y1), ("xmax", x2), ("ymax", y2)):
        ElementTree.SubElement(bndbox, key).text = f"{value:.1f}"


def hide_classes(xml_dir, out_dir, classes, keep=None, stems=None):
    """Writes every XML of `xml_dir` (those of `stems` only, if given) to `out_dir` (the
    same folder: in place) without the objects of `classes`, except those `keep` names
    ({class: {stem: [box, ...]}}: the K labelled shots, matched by box). Returns the
    removed ones, the hidden truth {class: {stem: [box, ...]}} (each of `classes` a
    key)."""
    keep = keep or {}
    hidden = {name: {} for name in classes}
    if os.path.abspath(out_dir) != os.path.abspath(xml_dir):
        os.makedirs(out_dir, exist_ok=True)
    for file_name in sorted(os.listdir(xml_dir)):
        if not file_name.endswith(".xml"):
            continue
        stem = os.path.splitext(file_name)[0]
        if stems is not None and stem not in stems:
            continue
        tree = ElementTree.parse(os.path.join(xml_dir, file_name))
        root = tree.getroot()
        for obj in list(root.iter("object")):
            name = obj.find("name").text
            if name not in hidden:
                continue
            box = box_of(obj)
            if any(np.allclose(box, kept, atol=0.51)
                   for kept in keep.get(name, {}).get(stem, [])):
                continue
            hidden[name].setdefault(stem, []).append(box)
            root.remove(obj)
        tree.write(os.path.join(out_dir, file_name))
    return hidden


def hidden_match(row, hidden, min_iou):
    """A candidates.json row against one class's hidden truth {stem: boxes}: (image stem,
    its box [y1, x1, y2, x2], the index of the hidden object it covers at IoU >=
    min_iou, or None)."""
    # Here, not at the top: TensorFlow's import (seconds) follows argument parsing.
    from data.io.mining.candidates import iou

    stem = os.path.splitext(os.path.basename(row["file"]))[0]
    box = [row["box"][k] for k in ("ymin", "xmin", "ymax", "xmax")]
    truth = hidden.get(stem, [])
    overlaps = iou(box, truth) if truth else np.zeros([0])
    if len(overlaps) and overlaps.max() >= min_iou:
        return stem, box, int(overlaps.argmax())
    return stem, box, None


def score_mining(candidates, hidden, min_iou=0.5):
    """How a mining round did against one class's hidden truth.

    candidates: candidates.json's rows of that class; hidden: {image stem: [[y1, x1,
    y2, x2], ...]}. A candidate is true when it covers a hidden object at IoU >=
    min_iou. Returns, per decision, (true, total), and the share of hidden objects an
    accepted candidate finds ("recall_accepted") or any written one does
    ("recall_written": accepted or doubtful), and any candidate at all
    ("recall_candidates": what the detector proposed)."""
    per_decision = {}
    found = {"accepted": set(), "written": set(), "candidates": set()}
    for row in candidates:
        stem, _, index = hidden_match(row, hidden, min_iou)
        true = index is not None
        hits, total = per_decision.get(row["decision"], (0, 0))
        per_decision[row["decision"]] = (hits + int(true), total + 1)
        if true:
            key = (stem, index)
            found["candidates"].add(key)
            if row["decision"] != "rejected":
                found["written"].add(key)
            if row["decision"] == "accepted":
                found["accepted"].add(key)
    objects = sum(len(boxes) for boxes in hidden.values())
    result = {"per_decision": per_decision, "hidden_objects": objects}
    result.update({f"recall_{k}": len(v) / max(objects, 1) for k, v in found.items()})
    return result


def simulate_review(mined_dir, out_dir, candidates, hidden, checks, min_iou=0.5):
    """The simulated reviewer of issue 32: for each class of `hidden` ({class: {stem:
    boxes}}), the first `checks` candidates of that class in the miner's order
    (candidates.json), each checked against the hidden truth. A true one (IoU >=
    min_iou with a hidden object not yet taken) is accepted with the true box in place
    of the candidate's; any other is rejected: its box leaves the annotations, so the
    place trains as background. Unchecked candidates keep the miner's decision. Writes
    <out_dir>/annotations from <mined_dir>/annotations; returns {"checked", "accepted",
    "rejected"} summed over the classes."""
    source, target = os.path.join(mined_dir, "annotations"), os.path.join(out_dir,
                                                                        "annotations")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(source, target)
    counts = {"checked": 0, "accepted": 0, "rejected": 0}
    for new, truth in hidden.items():
        checked = [row for row in candidates if row["class"] == new][:checks]
        taken = set()
        for row in checked:
            stem, box, index = hidden_match(row, truth, min_iou)
            path = os.path.join(target, f"{stem}.xml")
            tree = ElementTree.parse(path)
            root = tree.getroot()
            for obj in list(root.iter("object")):       # the miner's box, if it wrote one
                if obj.find("name").text == new and np.allclose(box_of(obj), box,
                                                                atol=0.11):
                    root.remove(obj)
            if index is not None and (stem, index) not in taken:
                taken.add((stem, index))
                counts["accepted"] += 1
                add_object(root, new, truth[stem][index])
            else:
                counts["rejected"] += 1
            tree.write(path, encoding="utf-8", xml_declaration=False)
        counts["checked"] += len(checked)
    return counts


def label_hidden(voc, out_dir, hidden):
    """The ceiling of mining and review: <out_dir>/annotations, voc's annotations with
    every hidden object ({class: {stem: boxes}}) labelled again (a user who labels them
    all)."""
    target = os.path.join(out_dir, "annotations")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(os.path.join(str(voc), "Annotations"), target)
    for new, truth in hidden.items():
        for stem, boxes in truth.items():
            path = os.path.join(target, f"{stem}.xml")
            tree = ElementTree.parse(path)
            for box in boxes:
                add_object(tree.getroot(), new, box)
            tree.write(path, encoding="utf-8", xml_declaration=False)


def describe_score(score):
    """score_mining's result in one line: per decision, then the recalls."""
    decisions = ", ".join(f"{decision} {true}/{total} true" for decision, (true, total)
                          in score["per_decision"].items())
    return (f"{decisions}; recall of the {score['hidden_objects']} hidden: any candidate "
            f"{score['recall_candidates']:.2f}, written {score['recall_written']:.2f}, "
            f"accepted {score['recall_accepted']:.2f}")


def main():
    parser = argparse.ArgumentParser(description="Scores a mining round's candidates "
                                     "against the hidden truth, per class.")
    parser.add_argument("--candidates", required=True, help="tools/mine_labels.py's "
                        "candidates.json")
    parser.add_argument("--hidden", required=True, help=f"a {HIDDEN_FILE}")
    parser.add_argument("--min_iou", type=float, default=0.5)
    args = parser.parse_args()
    with open(args.candidates, encoding="utf-8") as handle:
        candidates = json.load(handle)["candidates"]
    with open(args.hidden, encoding="utf-8") as handle:
        hidden = json.load(handle)
    for name in sorted(hidden):
        score = score_mining([c for c in candidates if c["class"] == name], hidden[name],
                             args.min_iou)
        print(f"{name}: {describe_score(score)}")


if __name__ == "__main__":
    main()
