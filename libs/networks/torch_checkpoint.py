"""Reads PyTorch checkpoint files (``torch.save``) into numpy arrays, without torch.

Pretrained weights on the package registry often come as ``.pth`` files; importing them
must not need PyTorch (a multi-GB install). A ``.pth`` is a pickle whose tensors are
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls, each
naming a *storage* (a flat typed buffer) through pickle's persistent ids. Two layouts:

- **legacy** (``_use_new_zipfile_serialization=False``, torch < 1.6): four pickles in a
  row (magic number, protocol version, system info, the object), then a pickled list of
  storage keys, then each storage in that order as an int64 element count and its raw
  bytes. A persistent id is ``("storage", type, key, location, numel, view)``; ``view``
  is ``(view_key, offset, numel)`` when the storage is a slice of another.
- **zip** (torch >= 1.6): ``<archive>/data.pkl`` holds the object; storage ``key`` is the
  raw file ``<archive>/data/<key>``; the id is ``("storage", type, key, location, numel)``.

A tensor is a strided view of its storage: element ``i`` is at ``offset + sum(i_k *
stride_k)``. Pretrained files often hold non-contiguous views (e.g. a weight stored
transposed), so strides are honoured, never assumed. Only the globals a state dict
needs are accepted; anything else in the pickle is refused (a pickle can run code).

    state = read_torch_checkpoint("model.pth")   # {"conv.weight": ndarray, ...}

Every problem is a ``TorchCheckpointError`` whose message names the file and the cause.
"""
import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> numpy dtype (little-endian, as torch writes on x86 and ARM).
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class TorchCheckpointError(ValueError):
    """A file that is not a readable torch checkpoint; the message is one line."""


class _StorageRef:
    """A storage named in the pickle; its data arrive after the pickle (legacy)."""

    def __init__(self, key, dtype, numel, view=None):
        self.key, self.dtype, self.numel, self.view = key, np.dtype(dtype), numel, view


class _TensorRef:
    """A tensor to build once every storage is read: storage, offset, size, stride."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


class _StorageType:
    def __init__(self, name):
        self.name = name


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Accepts a state dict's globals only; storages become _StorageRef."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchCheckpointError(
            f"{self.path}: refers to {module}.{name}, which a plain tensor checkpoint "
            f"does not use; only state dicts of tensors are read")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
            raise TorchCheckpointError(f"{self.path}: unknown persistent id {pid!r:.60}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise TorchCheckpointError(f"{self.path}: storage {key} has no known type")
        view = pid[5] if len(pid) > 5 else None
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, STORAGE_DTYPES[storage_type.name], numel)
        root = self.storages[key]
        if view is None:
            return root
        view_key, view_offset, view_numel = view
        return _StorageRef(str(view_key), root.dtype, int(view_numel),
                           view=(root, int(view_offset)))


def _load_pickle(file, path):
    unpickler = _Unpickler(file, path)
    try:
        obj = unpickler.load()
    except TorchCheckpointError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, struct errors...
        raise TorchCheckpointError(f"{path}: not a torch checkpoint, or truncated "
                                   f"({type(exc).__name__}: {exc})") from exc
    return obj, unpickler.storages


def _strided_array(tensor, buffers, path, name):
    """The tensor's values, copied out of its storage with its offset and strides."""
    storage, offset = tensor.storage, tensor.offset
    if storage.view is not None:                # a slice of a bigger storage (legacy)
        storage, view_offset = storage.view
        offset += view_offset
    data = buffers[storage.key]
    size, stride = tensor.size, tensor.stride
    if len(size) != len(stride):
        raise TorchCheckpointError(f"{path}: tensor {name}: size {size} and stride "
                                   f"{stride} differ in rank")
    if any(s < 0 for s in stride) or offset < 0:
        raise TorchCheckpointError(f"{path}: tensor {name}: negative offset or stride")
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise TorchCheckpointError(
            f"{path}: tensor {name}: size {size} stride {stride} offset {offset} reads "
            f"element {last} of a storage of {data.size}: file truncated or corrupt")
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False)
    return np.array(view)                        # contiguous copy


def _materialise(obj, buffers, path, prefix=""):
    """Replaces every _TensorRef in (nested dicts of) obj by its numpy array."""
    if isinstance(obj, _TensorRef):
        return _strided_array(obj, buffers, path, prefix or "<root>")
    if isinstance(obj, dict):
        return collections.OrderedDict(
            (key, _materialise(value, buffers, path, f"{prefix}{key}"
                               if not prefix else f"{prefix}.{key}"))
            for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, buffers, path, f"{prefix}[{i}]")
                         for i, v in enumerate(obj))
    return obj


def _read_exact(file, count, path, what):
    data = file.read(count)
    if len(data) != count:
        raise TorchCheckpointError(f"{path}: truncated: {what} needs {count} bytes, "
                                   f"{len(data)} left")
    return data


def _read_legacy(file, path):
    try:
        magic = pickle.load(file)
        protocol = pickle.load(file)
        pickle.load(file)                        # system info (sizes, endianness)
    except Exception as exc:
        raise TorchCheckpointError(f"{path}: not a torch checkpoint (no legacy header: "
                                   f"{type(exc).__name__})") from exc
    if magic != LEGACY_MAGIC_NUMBER:
        raise TorchCheckpointError(f"{path}: not a torch checkpoint (wrong magic number)")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise TorchCheckpointError(f"{path}: torch legacy protocol {protocol} "
                                   f"(only {LEGACY_PROTOCOL_VERSION} is read)")
    obj, storages = _load_pickle(file, path)
    try:
        keys = pickle.load(file)
    except Exception as exc:
        raise TorchCheckpointError(f"{path}: truncated: the list of storages is "
                                   f"missing") from exc
    buffers = {}
    for key in keys:
        key = str(key)
        if key not in storages:
            raise TorchCheckpointError(f"{path}: storage {key} is listed but unused")
        storage = storages[key]
        (numel,) = struct.unpack("<q", _read_exact(file, 8, path, f"storage {key}"))
        if numel != storage.numel:
            raise TorchCheckpointError(f"{path}: storage {key} holds {numel} elements, "
                                       f"the pickle says {storage.numel}")
        raw = _read_exact(file, numel * storage.dtype.itemsize, path, f"storage {key}")
        buffers[key] = np.frombuffer(raw, storage.dtype)
    missing = sorted(set(storages) - set(buffers))
    if missing:
        raise TorchCheckpointError(f"{path}: storages {missing[:3]} have no data")
    return _materialise(obj, buffers, path)


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchCheckpointError(f"{path}: a zip file but not a torch checkpoint "
                                       f"(no data.pkl)")
        root = pickles[0][:-len("data.pkl")]
        obj, storages = _load_pickle(io.BytesIO(archive.read(pickles[0])), path)
        buffers = {}
        for key, storage in storages.items():
            member = f"{root}data/{key}"
            if member not in names:
                raise TorchCheckpointError(f"{path}: storage {member} is missing")
            raw = archive.read(member)
            count = len(raw) // storage.dtype.itemsize
            if count < storage.numel:
                raise TorchCheckpointError(f"{path}: storage {member} holds {count} "
                                           f"elements, the pickle says {storage.numel}")
            buffers[key] = np.frombuffer(raw, storage.dtype, count=storage.numel)
    return _materialise(obj, buffers, path)


def read_torch_checkpoint(path):
    """The object saved at ``path`` with every tensor as a numpy array.

    For a state dict: an OrderedDict name -> ndarray, in the file's order.
    """
    if not os.path.isfile(path):
        raise TorchCheckpointError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        try:
            return _read_zip(path)
        except zipfile.BadZipFile as exc:
            raise TorchCheckpointError(f"{path}: damaged zip archive ({exc})") from exc
    with open(path, "rb") as file:
        return _read_legacy(file, path)


def read_state_dict(path):
    """read_torch_checkpoint, checked to be a flat name -> array mapping.

    A {"state_dict": {...}} or {"model": {...}} wrapper (training scripts save those)
    is unwrapped.
    """
    obj = read_torch_checkpoint(path)
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray)
                                            for v in obj.values()):
        raise TorchCheckpointError(f"{path}: holds a {type(obj).__name__}, not a state "
                                   f"dict of tensors")
    return obj
