"""A run (libs/train/runs.py): the dataset's values go into a new config, never into the
loaded one, and every command's model_fn params come from one function."""
import copy
import os

import numpy as np
import pytest

from libs.configs import load_config
from libs.serving import export
from libs.train import runs, warm_start
from libs.train.dataset import Dataset
from tests.conftest import REPO_ROOT

TINY = os.path.join(REPO_ROOT, "cfgs", "tiny_cpu.py")
TINY_FEWSHOT = os.path.join(REPO_ROOT, "cfgs", "tiny_fewshot.py")


class FakeDataset(Dataset):
    """Classes, a train split size and blank references; no files."""

    def __init__(self, classes, train_images):
        self.classes = list(classes)
        self.train_images = train_images

    def class_names(self):
        return list(self.classes)

    def split_size(self, split):
        return self.train_images

    def check_split(self, split):
        return self.train_images

    def input_fn(self, cfg, mode, split=None):
        raise AssertionError("not read by prepare_run")

    def reference_classes(self):
        return list(self.classes)

    def load_references(self, class_names, num_supports, side, seed=None, min_supports=1):
        images = np.zeros([len(class_names), num_supports, side, side, 3], np.uint8)
        return images, {name: [f"{name}_{i}.png" for i in range(num_supports)]
                        for name in class_names}

    def records(self, split, image_ids):
        raise AssertionError("not read by prepare_run")


def test_prepare_run_fills_the_data_into_a_new_config(tmp_path):
    cfg = load_config(TINY)
    loaded = copy.deepcopy(vars(cfg))
    run = runs.prepare_run(cfg, FakeDataset(["circle", "square"], 8), str(tmp_path))
    assert vars(cfg) == loaded and cfg.NUM_TRAIN_IMAGES is None and cfg.MAX_STEPS is None
    assert run.cfg is not cfg
    assert (run.cfg.NUM_TRAIN_IMAGES, run.cfg.STEPS_PER_EPOCH, run.cfg.MAX_STEPS) == (8, 8, 320)
    assert run.cfg.BOUNDARY == [240, 288]
    # a config whose NUM_TRAIN_IMAGES is set keeps it, and is the run's as it is
    fixed = load_config(TINY, {"NUM_TRAIN_IMAGES": 4})
    assert runs.prepare_run(fixed, FakeDataset(["circle", "square"], 8)).cfg is fixed


def test_a_class_count_free_model_adopts_the_classes_in_a_new_config():
    cfg = load_config(TINY_FEWSHOT)
    three = FakeDataset(["circle", "square", "star"], 8)
    run = runs.prepare_run(cfg, three, inference=True)
    assert (cfg.NUM_CLASS, run.cfg.NUM_CLASS) == (3, 4)
    assert run.reference_images.shape[0] == 3
    # a model sized by the number of classes refuses, in one line
    with pytest.raises(runs.TrainingError, match=r"^config tiny_cpu: NUM_CLASS = 3 but "
                                                 r"there are 3 classes .*BOX_REGRESSION"):
        runs.prepare_run(load_config(TINY), three, inference=True)


def test_model_params_are_built_in_one_place(tmp_path):
    run = runs.prepare_run(load_config(TINY), FakeDataset(["circle", "square"], 8),
                           str(tmp_path))
    params = runs.model_params(run)
    assert params["net_config"] is run.cfg
    assert params["class_names"] == ["circle", "square"]
    assert params["reference_images"] is run.reference_images
    assert params["reference_counts"] == [run.cfg.NUM_SUPPORTS] * 2
    # extra keys are added, or replace the run's
    other = load_config(TINY, {"LR": 0.5})
    assert runs.model_params(run, net_config=other)["net_config"] is other
    sink = object()
    assert runs.model_params(run, evaluation_sink=sink) == dict(params, evaluation_sink=sink)
    # training: the same, with the warm start (none here); the classes recorded
    assert runs.training_params(run) == dict(params, warm_start_checkpoint=None)
    assert warm_start.read_class_names(str(tmp_path)) == ["circle", "square"]
    # serving with the reference branch in the graph: the run's params as they are
    assert export.serving_params(run, checkpoint=None, cache_prototypes=False) == params
