"""The label map: class names <-> ids, and what each converted split contains.

Stored as `<data_dir>/label_map.json` next to the TFRecords::

    {
      "background": 0,
      "classes": [{"id": 1, "name": "Platelets"}, {"id": 2, "name": "RBC"}, ...],
      "splits": {"train": {"num_images": 205, "num_objects": 4000,
                           "files": ["train-00000-of-00001.tfrecord"]}}
    }

Class ids are contiguous 1..C (0 is background), because the model's NUM_CLASS and the
comparison head's prototype rows index classes directly. New ids are only ever appended:
converting another split, or adding a class, never renumbers a class that records
already use.
"""
import json
import os

from libs.base.errors import UserError
from libs.base.io_utils import atomic_write

FILENAME = "label_map.json"
BACKGROUND_ID = 0


class LabelMapError(UserError):
    """A label map that cannot be used; the message is one line for the user."""


def label_map_path(data_dir):
    return os.path.join(data_dir, FILENAME)


class LabelMap:
    """Class names in id order (id = position + 1) and the per-split summary."""

    def __init__(self, class_names, splits=None):
        class_names = [str(name) for name in class_names]
        duplicates = sorted({n for n in class_names if class_names.count(n) > 1})
        if duplicates:
            raise LabelMapError(f"duplicate class names: {', '.join(duplicates)}")
        if any(not name.strip() for name in class_names):
            raise LabelMapError("class names must not be empty")
        self.class_names = class_names
        self.splits = dict(splits or {})
        self._ids = {name: index + 1 for index, name in enumerate(class_names)}

    @property
    def num_classes(self):
        """Number of object classes, background not counted (the config's NUM_CLASS - 1)."""
        return len(self.class_names)

    def __contains__(self, name):
        return name in self._ids

    def id_of(self, name):
        try:
            return self._ids[name]
        except KeyError:
            raise LabelMapError(f"unknown class {name!r}; known: "
                                f"{', '.join(self.class_names)}") from None

    def name_of(self, class_id):
        if not 1 <= class_id <= len(self.class_names):
            raise LabelMapError(f"class id {class_id} out of range 1..{len(self.class_names)}")
        return self.class_names[class_id - 1]

    def name_to_id(self):
        return dict(self._ids)

    def id_to_name(self):
        return {class_id: name for name, class_id in self._ids.items()}

    def with_classes(self, more_names):
        """A copy with `more_names` that are not yet known appended (new ids at the end)."""
        added = [name for name in dict.fromkeys(more_names) if name not in self._ids]
        return LabelMap(self.class_names + added, self.splits)

    def with_split(self, split, num_images, num_objects, files):
        splits = dict(self.splits)
        splits[split] = {"num_images": int(num_images), "num_objects": int(num_objects),
                         "files": list(files)}
        return LabelMap(self.class_names, splits)

    def to_dict(self):
        return {
            "background": BACKGROUND_ID,
            "classes": [{"id": index + 1, "name": name}
                        for index, name in enumerate(self.class_names)],
            "splits": {name: self.splits[name] for name in sorted(self.splits)},
        }

    @classmethod
    def from_dict(cls, data, source="label map"):
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise LabelMapError(f"{source}: expected an object with a 'classes' list")
        if data.get("background", BACKGROUND_ID) != BACKGROUND_ID:
            raise LabelMapError(f"{source}: background must be id 0, "
                                f"got {data.get('background')!r}")
        try:
            entries = sorted((int(entry["id"]), str(entry["name"]))
                             for entry in data["classes"])
        except (KeyError, TypeError, ValueError):
            raise LabelMapError(f"{source}: every class needs an integer 'id' and a "
                                f"'name'") from None
        ids = [class_id for class_id, _ in entries]
        if ids != list(range(1, len(ids) + 1)):
            raise LabelMapError(f"{source}: class ids must be 1..{len(ids)} without gaps, "
                                f"got {ids}")
        try:
            return cls([name for _, name in entries], data.get("splits") or {})
        except LabelMapError as exc:
            raise LabelMapError(f"{source}: {exc}") from None

    def __eq__(self, other):
        return isinstance(other, LabelMap) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"LabelMap({self.class_names!r})"


def read_label_map(path):
    """Reads a label map file (or `<dir>/label_map.json` when given a directory)."""
    if os.path.isdir(path):
        path = label_map_path(path)
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise LabelMapError(f"{path}: no label map (convert a dataset first)") from None
    except (OSError, ValueError) as exc:
        raise LabelMapError(f"{path}: not a readable JSON label map ({exc})") from None
    return LabelMap.from_dict(data, source=path)


def write_label_map(path, label_map):
    """Writes atomically; deterministic bytes (ordered keys, no timestamps)."""
    if os.path.isdir(path):
        path = label_map_path(path)
    with atomic_write(path, "w") as handle:
        json.dump(label_map.to_dict(), handle, indent=2, sort_keys=True)
        handle.write("\n")


def class_names_in_id_order(path):
    """Shortcut for model code: the class names of a data dir's label map, id order."""
    return read_label_map(path).class_names


def choose_classes(found_names, explicit=None, existing=None):
    """The label map a conversion uses, and the class names it will accept.

    found_names: class names seen in the annotations being converted.
    explicit:    the --classes list, or None.
    existing:    the LabelMap already in the output dir, or None.

    Rules: with an existing map its ids are kept and only classes listed in `explicit`
    may be added (appended); without one, `explicit` gives the ids in its order, else
    the sorted names found. Names outside the result are "unknown" to the converter.
    """
    if explicit is not None:
        explicit = [name.strip() for name in explicit if name.strip()]
        if not explicit:
            raise LabelMapError("--classes is empty")
    if existing is not None:
        return existing.with_classes(explicit or [])
    if explicit is not None:
        return LabelMap(explicit)
    return LabelMap(sorted(set(found_names)))


def id_mapping(from_map, to_map):
    """{class id in from_map: class id of the same NAME in to_map}, for every class.

    Class identity is by name across label maps (a base model's map lists the base
    classes in its own order; a K-shot set's lists base + novel): e.g. fine-tuning moves
    the classifier rows of a base checkpoint into the rows of the full label map.
    Either argument may be a LabelMap or a list of class names in id order. Background
    (0) maps to itself and is not listed. Raises LabelMapError naming the classes of
    from_map that to_map lacks.
    """
    source, target = _as_label_map(from_map), _as_label_map(to_map)
    missing = [name for name in source.class_names if name not in target]
    if missing:
        raise LabelMapError(f"class(es) {', '.join(repr(n) for n in missing)} not in the "
                            f"target label map ({', '.join(target.class_names)})")
    return {source.id_of(name): target.id_of(name) for name in source.class_names}


def _as_label_map(value):
    return value if isinstance(value, LabelMap) else LabelMap(list(value))
