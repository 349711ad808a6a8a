"""Torch checkpoint files written without torch, byte for byte as torch lays them out.

The reader's tests (tests/test_pretrained.py) and the hostile-weights fuzz test
(tests/test_hostile_weights.py) need checkpoints with chosen contents: views of a bigger
storage, lying sizes, a pickle that would run code. A pickle names torch's globals by
module and name, so the writers pickle stand-ins registered as ``torch.FloatStorage``
and ``torch._utils._rebuild_tensor_v2`` for the duration of the dump.
"""
import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


class _Storage:
    """A storage as the pickle names it: key, claimed element count, optional view."""

    def __init__(self, key, numel, view=None):
        self.key, self.numel, self.view = key, numel, view


class _Tensor:
    def __init__(self, rebuild, storage, offset, size, stride):
        self.rebuild = rebuild
        self.args = (storage, offset, tuple(size), tuple(stride), False,
                     collections.OrderedDict())

    def __reduce__(self):
        return self.rebuild, self.args


@contextlib.contextmanager
def _torch_stand_ins():
    """Yields (FloatStorage, _rebuild_tensor_v2) pickled under torch's names."""
    torch_module = types.ModuleType("torch")
    utils_module = types.ModuleType("torch._utils")

    class FloatStorage:
        pass
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    torch_module.FloatStorage = FloatStorage

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2

    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_module, "torch._utils": utils_module})
    try:
        yield FloatStorage, _rebuild_tensor_v2
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _pickled_state(tensors, storage_numel, legacy):
    """The state-dict pickle: tensors {name: (key, offset, size, stride, view)}."""
    buffer = io.BytesIO()
    with _torch_stand_ins() as (float_storage, rebuild):
        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if not isinstance(obj, _Storage):
                    return None
                if legacy:
                    return ("storage", float_storage, obj.key, "cpu", obj.numel, obj.view)
                return ("storage", float_storage, obj.key, "cpu", obj.numel)

        state = collections.OrderedDict(
            (name, _Tensor(rebuild, _Storage(key, storage_numel[key], view), offset, size,
                           stride))
            for name, (key, offset, size, stride, view) in tensors.items())
        Pickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


def legacy_bytes(tensors, storages, claimed_numel=None):
    """A legacy-format checkpoint (torch < 1.6): three header pickles, the state dict,
    the list of storage keys, then each storage as an int64 count and its bytes.

    storages: {key: float32 array}; tensors: {name: (key, offset, size, stride, view)}
    where view is None or (view_key, view_offset, view_numel), a storage that is a
    slice of storage `key`. claimed_numel: {key: n} to claim n elements (in the pickle
    and the storage header) whatever the data holds.
    """
    numel = {key: value.size for key, value in storages.items()}
    numel.update(claimed_numel or {})
    buffer = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    buffer.write(_pickled_state(tensors, numel, legacy=True))
    keys = sorted(storages)
    pickle.dump(keys, buffer, protocol=2)
    for key in keys:
        buffer.write(struct.pack("<q", numel[key]))
        buffer.write(storages[key].astype("<f4").tobytes())
    return buffer.getvalue()


def write_legacy(path, tensors, storages, truncate_to=None, claimed_numel=None):
    """legacy_bytes written to path (cut to truncate_to bytes); returns the full size."""
    data = legacy_bytes(tensors, storages, claimed_numel)
    with open(path, "wb") as file:
        file.write(data if truncate_to is None else data[:truncate_to])
    return len(data)


def zip_bytes(state, compress=(), archive="archive"):
    """A zip-format checkpoint (torch >= 1.6) of {name: float32 array}, one storage per
    tensor, members stored as torch stores them; names in `compress` ("data.pkl" or a
    storage key) are deflated instead."""
    tensors, storages = {}, {}
    for index, (name, value) in enumerate(state.items()):
        key = str(index)
        value = np.ascontiguousarray(value, "<f4")
        storages[key] = value
        strides = [int(np.prod(value.shape[i + 1:])) for i in range(value.ndim)]
        tensors[name] = (key, 0, value.shape, strides, None)
    pickled = _pickled_state(tensors, {k: v.size for k, v in storages.items()},
                             legacy=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        def add(member, data, key):
            method = zipfile.ZIP_DEFLATED if key in compress else zipfile.ZIP_STORED
            out.writestr(zipfile.ZipInfo(f"{archive}/{member}"), data, method)
        add("data.pkl", pickled, "data.pkl")
        for key, value in storages.items():
            add(f"data/{key}", value.tobytes(), key)
        add("version", b"3\n", "version")
    return buffer.getvalue()


class _RunsCode:
    """Pickles as a call of `function(*args)`: what a malicious checkpoint holds."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def code_running_pickle(sentinel):
    """A pickle that creates the file `sentinel` when loaded by a plain unpickler."""
    import builtins
    return pickle.dumps(_RunsCode(builtins.exec, f"open({sentinel!r}, 'w').close()"),
                        protocol=2)


def system_pickle(command):
    """A pickle that runs a shell command when loaded by a plain unpickler."""
    import os
    return pickle.dumps(_RunsCode(os.system, command), protocol=2)
