"""What a run reads from its dataset, as an interface: libs/ never opens a dataset's files.

The training runner, the evaluation and the export take a ``Dataset``; data/io/dataset.py
implements it over TFRecords, ``label_map.json`` and a reference folder, and the tools
(and tests) pass that in. So the library depends on this interface only, and data/ on
the library: one direction between the two (README, Layout).
"""
import abc


class Dataset(abc.ABC):
    """A dataset's classes, splits, input functions, reference images and records.

    data_dir / reference_dir: where it lives (messages, a run's records).
    Errors are libs.base.errors.UserError subclasses with one-line messages.
    """

    data_dir = None
    reference_dir = None

    @abc.abstractmethod
    def class_names(self):
        """The class names in id order (ids 1..C); a UserError when there are none."""

    @abc.abstractmethod
    def split_size(self, split):
        """The number of images of `split` as the dataset recorded it (0 if unknown)."""

    @abc.abstractmethod
    def check_split(self, split):
        """A UserError now if `split`'s files are unusable; returns its image count."""

    @abc.abstractmethod
    def input_fn(self, cfg, mode, split=None):
        """An Estimator input_fn of `split` (default: the mode's split) for `mode`
        (tf.estimator.ModeKeys.TRAIN / EVAL / PREDICT)."""

    @abc.abstractmethod
    def reference_classes(self):
        """The class names the reference set holds."""

    @abc.abstractmethod
    def load_references(self, class_names, num_supports, side, seed=None, min_supports=1):
        """(uint8 [C, num_supports, side, side, 3], {class name: [files]}) of the
        reference images of `class_names`, in that order."""

    @abc.abstractmethod
    def records(self, split, image_ids):
        """{image id: {"image": encoded bytes, "filename": bytes, ...}} of the records of
        `split` whose id is in `image_ids`."""
