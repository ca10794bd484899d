"""Loads an `eqco export` file into torchvision's ResNet with strict=True.

Usage: python scripts/check_export.py FILE.safetensors

The file is parsed by hand (8-byte header length, JSON header, raw data), so
only torch and torchvision are needed. Its metadata says which ResNet
(arch, stem, in_channels, width) to build; the small stem replaces
torchvision's conv1 and max-pool, and fc is dropped (Identity). Exits
non-zero on any mismatch.
"""
import json
import math
import struct
import sys

import torch
import torchvision

DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        if a == b:
            t = torch.empty(info["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(bytearray(body[a:b]), dtype=dtype).reshape(info["shape"])
        tensors[name] = t
    return tensors, meta


def build(meta):
    arch = meta["arch"]
    if not hasattr(torchvision.models, arch):
        sys.exit(f"error: torchvision has no {arch}")
    if float(meta["width"]) != 1.0:
        sys.exit(f"error: width {meta['width']}: torchvision's ResNets have no width multiplier")
    model = getattr(torchvision.models, arch)(weights=None)
    c = int(meta["in_channels"])
    if meta["stem"] == "small":
        model.conv1 = torch.nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    elif c != 3:
        model.conv1 = torch.nn.Conv2d(c, 64, 7, 2, 3, bias=False)
    model.fc = torch.nn.Identity()
    return model, c


def main(path):
    tensors, meta = read_safetensors(path)
    model, c = build(meta)
    model.load_state_dict(tensors, strict=True)  # raises on any missing, extra or mis-shaped tensor
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(2, c, 32, 32, generator=torch.Generator().manual_seed(0)))
    width = 2048 if meta["arch"] == "resnet50" else 512
    assert y.shape == (2, width), y.shape
    assert all(math.isfinite(v) for v in y.flatten().tolist())
    print(
        f"ok: {path} loads into torchvision.models.{meta['arch']} (stem {meta['stem']}, "
        f"{c} channel(s), fc dropped) with strict=True: {len(tensors)} tensors; features {tuple(y.shape)}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
