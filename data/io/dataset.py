"""A dataset as the library's runs read it: TFRecords + label_map.json + a reference set.

    run = open_run(cfg, data_dir, reference_dir, model_dir)   # libs.train.runs.Run
    training.train(run)

``RecordDataset`` implements libs.train.dataset.Dataset over the files this package
writes (data/io/convert.py, data/io/reference_set.py) and reads them with its input
pipeline (data/io/input_fn.py). ``open_run`` is how the tools (and the tests) wire a
dataset into a run: data/ knows the library, the library only knows the interface.
"""
from data.io import input_fn as input_lib
from data.io import label_map as label_map_lib
from data.io import reference_set
from libs.train import runs
from libs.train.dataset import Dataset


class RecordDataset(Dataset):
    """The TFRecord splits and label map of data_dir, the reference set of reference_dir."""

    def __init__(self, data_dir, reference_dir=None):
        self.data_dir = data_dir
        self.reference_dir = reference_dir

    @classmethod
    def for_config(cls, cfg, data_dir=None, reference_dir=None):
        """The folders given, else the config's DATA_DIR / REFERENCE_DIR."""
        return cls(data_dir or cfg.DATA_DIR, reference_dir or cfg.REFERENCE_DIR)

    def _label_map(self):
        return label_map_lib.read_label_map(self.data_dir)

    def class_names(self):
        return self._label_map().class_names

    def split_size(self, split):
        return self._label_map().splits.get(split, {}).get("num_images", 0) or 0

    def check_split(self, split):
        info = self._label_map().splits.get(split, {})
        return input_lib.check_split(self.data_dir, split, info.get("num_images"))

    def input_fn(self, cfg, mode, split=None):
        return input_lib.make_input_fn(cfg, mode, data_dir=self.data_dir, split=split)

    def reference_classes(self):
        return reference_set.reference_classes(self.reference_dir)

    def load_references(self, class_names, num_supports, side, seed=None, min_supports=1):
        return reference_set.load_reference_images(
            self.reference_dir, class_names, num_supports, side, seed=seed,
            return_paths=True, min_supports=min_supports)

    def records(self, split, image_ids):
        wanted, found = {int(i) for i in image_ids}, {}
        for record in input_lib.read_records(self.data_dir, split):
            if int(record["image_id"]) in wanted:
                found[int(record["image_id"])] = record
        return found


def open_run(cfg, data_dir=None, reference_dir=None, model_dir=None, **options):
    """libs.train.runs.prepare_run over RecordDataset(data_dir, reference_dir) (the
    config's folders where None). classes_from_references applies only when a
    reference_dir is given: the user named a reference set of other classes."""
    if reference_dir is None:
        options["classes_from_references"] = False
    return runs.prepare_run(cfg, RecordDataset.for_config(cfg, data_dir, reference_dir),
                            model_dir, **options)
