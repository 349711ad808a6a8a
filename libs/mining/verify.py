"""Is a candidate box of a new class really one? Nearest neighbours in a frozen space.

    bank = FeatureBank.build(reference_features, base_features, background_features)
    verdicts = verify(candidates, features, bank, cfg)

A candidate is a detection of a new class c (its class, detector score, box) in an
image where c was never labelled. Its crop's feature (libs/mining/embedding.py) is
compared with a bank of labelled crops: the K references of every new class, crops of
the base classes' labelled objects, and background crops (boxes away from every
label). Among its k nearest bank entries by cosine similarity, k = min(MINE_NEIGHBOURS,
the references of c), the vote is the share that are c's references. Then:

    accepted   vote >= MINE_ACCEPT_VOTE and score >= MINE_ACCEPT_SCORE: a new label;
    rejected   vote < MINE_REJECT_VOTE (its neighbours are another class or
               background): nothing is written, the region stays background;
    doubtful   the rest: an ignore region, neither the class nor background.

(Label, Verify, Correct, Kaul et al. 2022, verifies pseudo-labels by the classes of
their nearest neighbours in a self-supervised space; here the space is the ImageNet
backbone the detector started from, and the references are the neighbours to find.)
The confidence that orders candidates for a reviewer is sqrt(score * vote).
"""
import dataclasses

import numpy as np

BACKGROUND = "__background__"
ACCEPTED, DOUBTFUL, REJECTED = "accepted", "doubtful", "rejected"


@dataclasses.dataclass
class FeatureBank:
    features: np.ndarray          # float32 [M, F], unit rows
    labels: np.ndarray            # object [M]: a class name or BACKGROUND

    @classmethod
    def build(cls, groups):
        """groups: {label: float [n, F] features} -> one bank (empty groups allowed)."""
        features, labels = [], []
        for label, rows in groups.items():
            rows = np.asarray(rows, np.float32)
            if len(rows):
                features.append(rows.reshape(len(rows), -1))
                labels.extend([label] * len(rows))
        if not features:
            raise ValueError("the verifier's feature bank is empty")
        return cls(np.concatenate(features), np.asarray(labels, object))

    def count(self, label):
        return int((self.labels == label).sum())


@dataclasses.dataclass
class Verdict:
    decision: str                 # ACCEPTED, DOUBTFUL or REJECTED
    vote: float                   # share of the k nearest that are the class's references
    neighbours: list              # labels of the k nearest, nearest first
    confidence: float             # sqrt(score * vote): the reviewer's order


def nearest_labels(feature, bank, k):
    """Labels of the k bank entries most similar (cosine) to `feature`, nearest first;
    ties go to the earlier bank entry."""
    similarity = bank.features @ np.asarray(feature, np.float32)
    order = np.argsort(-similarity, kind="stable")[:k]
    return bank.labels[order].tolist()


def verify_one(class_name, score, feature, bank, cfg):
    references = bank.count(class_name)
    if references == 0:
        raise ValueError(f"no reference of class {class_name!r} in the verifier's bank")
    k = min(int(cfg.MINE_NEIGHBOURS), references)
    neighbours = nearest_labels(feature, bank, k)
    vote = sum(label == class_name for label in neighbours) / k
    if vote < cfg.MINE_REJECT_VOTE:
        decision = REJECTED
    elif vote >= cfg.MINE_ACCEPT_VOTE and score >= cfg.MINE_ACCEPT_SCORE:
        decision = ACCEPTED
    else:
        decision = DOUBTFUL
    return Verdict(decision, vote, neighbours, float(np.sqrt(max(score, 0.0) * vote)))


def verify(class_names, scores, features, bank, cfg):
    """One Verdict per candidate (class name, detector score, feature row)."""
    return [verify_one(name, float(score), feature, bank, cfg)
            for name, score, feature in zip(class_names, scores, features)]
