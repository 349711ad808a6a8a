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
transposed), so strides are honoured, never assumed.

Every file is hostile until read (a ``--weights`` file is whatever a user downloaded):

- a pickle can run code when loaded, so **every** pickle of both layouts goes through
  one restricted unpickler (``_Unpickler``): the legacy header and the storage-key list
  may name no global at all, the object only the few a state dict of tensors needs;
- a pickle's extent and every length it claims are walked first with ``pickletools``
  on a reader that cannot pass the file's end, so nothing is allocated for bytes the
  file does not hold; a storage's claimed size is checked against the bytes left in the
  file (legacy) or the zip member's recorded size (zip) before it is read, and a zip
  member is never decompressed past what its storage needs;
- a tensor's sizes must be non-negative, its element count at most its storage's, and
  its last element inside the storage, before anything is copied.

    state = read_torch_checkpoint("model.pth")   # {"conv.weight": ndarray, ...}

Every problem is a ``TorchCheckpointError`` whose message is one line naming the file
and the cause; no other exception leaves ``read_torch_checkpoint``.
"""
import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np

from libs.base.errors import UserError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# A state dict's pickle holds names and shapes only (its tensors' bytes are stored
# beside it): a few MB for the largest models. More is not a state dict.
MAX_PICKLE_BYTES = 256 << 20
_MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET")

# torch.<Name>Storage -> numpy dtype (little-endian, as torch writes on x86 and ARM).
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class TorchCheckpointError(UserError):
    """A file that is not a readable torch checkpoint; the message is one line."""


class _StorageRef:
    """A storage named in the pickle; its data arrive after the pickle (legacy)."""

    def __init__(self, key, dtype, numel, view=None):
        self.key, self.dtype, self.numel, self.view = key, np.dtype(dtype), numel, view


def _count(value, what):
    """A non-negative int from the pickle, or ValueError (the pickle is not torch's)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} {value!r:.40} is not a non-negative integer")
    return value


class _TensorRef:
    """A tensor to build once every storage is read: storage, offset, size, stride."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _StorageRef):
            raise ValueError("a tensor without a storage")
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
            raise ValueError("a tensor's size or stride is not a sequence")
        self.storage, self.offset = storage, _count(offset, "tensor offset")
        self.size = tuple(_count(s, "tensor size") for s in size)
        self.stride = tuple(_count(s, "tensor stride") for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


class _StorageType:
    def __init__(self, name):
        self.name = name


# The globals a state dict of tensors needs; the header pickles need none.
_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """The one unpickler of every pickle in a checkpoint.

    tensors=False (legacy header, storage-key list): plain data only, no global and no
    persistent id. tensors=True (the saved object): a state dict's globals, and
    storages as _StorageRef.
    """

    def __init__(self, file, path, what, tensors):
        super().__init__(file)
        self.path, self.what, self.tensors = path, what, tensors
        self.storages = {}

    def find_class(self, module, name):
        if self.tensors:
            if (module, name) in _TENSOR_GLOBALS:
                return _TENSOR_GLOBALS[(module, name)]
            if module == "torch" and name in STORAGE_DTYPES:
                return _StorageType(name)
        raise TorchCheckpointError(
            f"{self.path}: its {self.what} refers to {module}.{name}, which a plain "
            f"tensor checkpoint does not use; only state dicts of tensors are read")

    def persistent_load(self, pid):
        if not self.tensors:
            raise TorchCheckpointError(f"{self.path}: its {self.what} names a storage, "
                                       f"which only the saved object may")
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise TorchCheckpointError(f"{self.path}: unknown persistent id {pid!r:.60}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise TorchCheckpointError(f"{self.path}: storage {key:.40} has no known type")
        numel = _count(pid[4], f"storage {key:.40} element count")
        view = pid[5] if len(pid) > 5 else None
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, STORAGE_DTYPES[storage_type.name], numel)
        root = self.storages[key]
        if root.numel != numel or root.dtype != np.dtype(STORAGE_DTYPES[storage_type.name]):
            raise TorchCheckpointError(f"{self.path}: storage {key:.40} is named with two "
                                       f"different types or sizes")
        if view is None:
            return root
        if not isinstance(view, tuple) or len(view) != 3:
            raise TorchCheckpointError(f"{self.path}: storage {key:.40} has a malformed "
                                       f"view {view!r:.60}")
        view_key, view_offset, view_numel = view
        view_offset = _count(view_offset, "storage view offset")
        view_numel = _count(view_numel, "storage view size")
        if view_offset + view_numel > root.numel:
            raise TorchCheckpointError(f"{self.path}: storage view {str(view_key):.40} "
                                       f"reaches past its storage {key:.40}")
        return _StorageRef(str(view_key), root.dtype, view_numel, view=(root, view_offset))


class _BoundedReader:
    """A file's bytes [start, end) as a file-like: reads never pass `end`."""

    def __init__(self, file, end):
        self._file, self._end = file, end

    def remaining(self):
        return max(self._end - self._file.tell(), 0)

    def read(self, count=-1):
        left = self.remaining()
        return self._file.read(left if count is None or count < 0 else min(count, left))

    def readline(self, limit=-1):
        left = self.remaining()
        return self._file.readline(left if limit is None or limit < 0 else
                                   min(limit, left))

    def tell(self):
        return self._file.tell()


def _pickle_bytes(file, end, path, what):
    """The bytes of the pickle that starts at file's position, checked opcode by opcode.

    pickletools walks the opcodes without building anything; every length an opcode
    claims is read through a reader that stops at `end`, so a claim larger than the
    file fails here instead of allocating, and so does a memo index no pickler writes.
    """
    start = file.tell()
    reader = _BoundedReader(file, min(end, start + MAX_PICKLE_BYTES))
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(reader)):
            # The unpickler's memo is an array as long as the largest index put in it:
            # a 4-byte index would allocate GBs. Picklers number entries 0, 1, ..., one
            # per object built, so an index is always below the opcodes seen.
            if opcode.name in _MEMO_OPCODES and arg > count:
                raise ValueError(f"memo index {arg} after {count} opcodes")
    except Exception as exc:  # ValueError (truncated, unknown opcode), struct.error...
        if file.tell() - start >= MAX_PICKLE_BYTES:
            raise TorchCheckpointError(f"{path}: its {what} is over "
                                       f"{MAX_PICKLE_BYTES >> 20} MiB; not a state "
                                       f"dict") from None
        raise TorchCheckpointError(f"{path}: not a torch checkpoint, or truncated "
                                   f"(its {what}: {_one_line(exc)})") from None
    stop = file.tell()
    file.seek(start)
    return file.read(stop - start)


def _load_pickle(data, path, what, tensors):
    """Unpickles checked bytes with the restricted unpickler -> (object, storages)."""
    unpickler = _Unpickler(io.BytesIO(data), path, what, tensors)
    try:
        obj = unpickler.load()
    except TorchCheckpointError:
        raise
    except Exception as exc:  # UnpicklingError, ValueError from _TensorRef, ...
        raise TorchCheckpointError(f"{path}: not a torch checkpoint, or corrupt (its "
                                   f"{what}: {_one_line(exc)})") from None
    return obj, unpickler.storages


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _strided_array(tensor, buffers, path, name):
    """The tensor's values, copied out of its storage with its offset and strides."""
    storage, offset = tensor.storage, tensor.offset
    limit = storage.numel
    if storage.view is not None:                # a slice of a bigger storage (legacy)
        storage, view_offset = storage.view
        offset += view_offset
        limit += view_offset
    data = buffers[storage.key]
    size, stride = tensor.size, tensor.stride
    if len(size) != len(stride):
        raise TorchCheckpointError(f"{path}: tensor {name}: size {size} and stride "
                                   f"{stride} differ in rank")
    # A tensor of a state dict never holds more elements than its storage; checked
    # before anything is allocated (a stride of 0 would let a 4-byte storage claim GBs).
    count = math.prod(size)
    if count > tensor.storage.numel:
        raise TorchCheckpointError(
            f"{path}: tensor {name}: size {size} has {count} elements, more than its "
            f"storage's {tensor.storage.numel}: corrupt")
    if count == 0:
        return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= min(limit, data.size):
        raise TorchCheckpointError(
            f"{path}: tensor {name}: size {size} stride {stride} offset {tensor.offset} "
            f"reads element {last} of a storage of {min(limit, data.size)}: file "
            f"truncated or corrupt")
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


def _read_exact(file, count, end, path, what):
    """count bytes, checked against the bytes left before `end` first."""
    left = end - file.tell()
    if count > left:
        raise TorchCheckpointError(f"{path}: truncated or corrupt: {what} needs {count} "
                                   f"bytes, {max(left, 0)} left in the file")
    data = file.read(count)
    if len(data) != count:
        raise TorchCheckpointError(f"{path}: truncated: {what} needs {count} bytes, "
                                   f"{len(data)} read")
    return data


def _read_legacy(file, path):
    end = os.fstat(file.fileno()).st_size
    headers = []
    for what in ("magic number", "protocol version", "system info"):
        data = _pickle_bytes(file, end, path, what)
        headers.append(_load_pickle(data, path, what, tensors=False)[0])
    magic, protocol, _ = headers
    if magic != LEGACY_MAGIC_NUMBER:
        raise TorchCheckpointError(f"{path}: not a torch checkpoint (wrong magic number)")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise TorchCheckpointError(f"{path}: torch legacy protocol {protocol!r:.40} "
                                   f"(only {LEGACY_PROTOCOL_VERSION} is read)")
    obj, storages = _load_pickle(_pickle_bytes(file, end, path, "saved object"), path,
                                 "saved object", tensors=True)
    keys, _ = _load_pickle(_pickle_bytes(file, end, path, "list of storages"), path,
                           "list of storages", tensors=False)
    if not isinstance(keys, list):
        raise TorchCheckpointError(f"{path}: the list of storages is a "
                                   f"{type(keys).__name__}, not a list")
    buffers = {}
    for key in keys:
        key = str(key)
        if key not in storages:
            raise TorchCheckpointError(f"{path}: storage {key:.40} is listed but unused")
        if key in buffers:
            raise TorchCheckpointError(f"{path}: storage {key:.40} is listed twice")
        storage = storages[key]
        (numel,) = struct.unpack("<q", _read_exact(file, 8, end, path,
                                                   f"storage {key:.40}"))
        if numel != storage.numel:
            raise TorchCheckpointError(f"{path}: storage {key:.40} holds {numel} "
                                       f"elements, the pickle says {storage.numel}")
        raw = _read_exact(file, numel * storage.dtype.itemsize, end, path,
                          f"storage {key:.40}")
        buffers[key] = np.frombuffer(raw, storage.dtype)
    missing = sorted(set(storages) - set(buffers))
    if missing:
        raise TorchCheckpointError(f"{path}: storages {missing[:3]} have no data")
    return _materialise(obj, buffers, path)


def _read_member(archive, info, count, path):
    """The first `count` bytes of a zip member, its recorded size checked first.

    torch stores members uncompressed; a deflated one (a re-zipped checkpoint) is read
    too, but never decompressed past `count` bytes. Other compressions are refused.
    """
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise TorchCheckpointError(f"{path}: member {info.filename:.60} is compressed "
                                   f"with method {info.compress_type} (torch stores "
                                   f"members uncompressed)")
    if info.file_size < count:
        raise TorchCheckpointError(f"{path}: member {info.filename:.60} holds "
                                   f"{info.file_size} bytes, {count} are needed: "
                                   f"truncated or corrupt")
    with archive.open(info) as member:
        data = member.read(count)
    if len(data) != count:
        raise TorchCheckpointError(f"{path}: member {info.filename:.60} ends after "
                                   f"{len(data)} of {count} bytes: truncated")
    return data


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        pickles = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchCheckpointError(f"{path}: a zip file but not a torch checkpoint "
                                       f"({len(pickles)} data.pkl)")
        info = infos[pickles[0]]
        if info.file_size > MAX_PICKLE_BYTES:
            raise TorchCheckpointError(f"{path}: its data.pkl claims {info.file_size} "
                                       f"bytes, over {MAX_PICKLE_BYTES >> 20} MiB; not a "
                                       f"state dict")
        data = io.BytesIO(_read_member(archive, info, info.file_size, path))
        obj, storages = _load_pickle(
            _pickle_bytes(data, info.file_size, path, "data.pkl"), path, "data.pkl",
            tensors=True)
        root = pickles[0][:-len("data.pkl")]
        buffers = {}
        for key, storage in storages.items():
            member = f"{root}data/{key}"
            if member not in infos:
                raise TorchCheckpointError(f"{path}: storage {member:.60} is missing")
            raw = _read_member(archive, infos[member],
                               storage.numel * storage.dtype.itemsize, path)
            buffers[key] = np.frombuffer(raw, storage.dtype)
    return _materialise(obj, buffers, path)


def read_torch_checkpoint(path):
    """The object saved at ``path`` with every tensor as a numpy array.

    For a state dict: an OrderedDict name -> ndarray, in the file's order.
    """
    if not os.path.isfile(path):
        raise TorchCheckpointError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as file:
            return _read_legacy(file, path)
    except TorchCheckpointError:
        raise
    except zipfile.BadZipFile as exc:
        raise TorchCheckpointError(f"{path}: damaged zip archive "
                                   f"({_one_line(exc)})") from None
    except OSError as exc:
        raise TorchCheckpointError(f"{path}: cannot be read "
                                   f"({exc.strerror or _one_line(exc)})") from None
    except Exception as exc:  # zlib.error, RecursionError, MemoryError, ...: the file
        raise TorchCheckpointError(f"{path}: not a readable torch checkpoint "
                                   f"({_one_line(exc)})") from None


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
    if not isinstance(obj, dict) or not all(isinstance(k, str) and
                                            isinstance(v, np.ndarray)
                                            for k, v in obj.items()):
        raise TorchCheckpointError(f"{path}: holds a {type(obj).__name__}, not a state "
                                   f"dict of named tensors")
    return obj
