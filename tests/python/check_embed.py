"""Compares `eqco embed` output with PyTorch on the exported backbone (for
tests/embed.rs).

Usage: python tests/python/check_embed.py EXPORT.safetensors EMBEDDINGS INFO.json ROWS.csv

EXPORT is `eqco export`'s file, loaded into torchvision's ResNet as
scripts/check_export.py does. EMBEDDINGS is `.npy` or `.csv` (read by
numpy) or `.safetensors` (read by the safetensors package). Each row's image (its
file, from ROWS.csv) goes through torchvision's transforms with the
evaluation transform that INFO.json states (resize, centre crop, to
tensor, normalise), then through the model in eval mode. Prints JSON with
the largest absolute difference; exits non-zero on any mismatch of shape
or a difference above 1e-4.
"""
import csv
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
from check_export import build, read_safetensors  # noqa: E402


def load_embeddings(path):
    if path.endswith(".npy"):
        return np.load(path)
    if path.endswith(".csv"):
        return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    from safetensors.numpy import load_file

    return load_file(path)["embeddings"]


def main(export, embeddings, info_file, rows_file):
    tensors, meta = read_safetensors(export)
    model, channels = build(meta)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    info = json.load(open(info_file))
    t = info["transform"]
    crop = t["crop"]["Center"]
    norm = t["normalize"]
    assert t["channels"] == channels == 3, (t["channels"], channels)
    transform = transforms.Compose(
        [
            transforms.Resize(crop["resize"], interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
            transforms.CenterCrop(crop["size"]),
            transforms.ToTensor(),
            transforms.Normalize(norm["mean"], norm["std"]),
        ]
    )
    rows = list(csv.DictReader(open(rows_file)))
    x = torch.stack([transform(Image.open(r["path"]).convert("RGB")) for r in rows])
    with torch.no_grad():
        want = model(x).numpy()
    got = load_embeddings(embeddings)
    if got.dtype != np.float32 or got.shape != want.shape:
        sys.exit(f"error: {embeddings}: {got.dtype} {got.shape}, PyTorch gives float32 {want.shape}")
    diff = float(np.abs(got - want).max())
    print(json.dumps({"rows": len(rows), "dim": int(want.shape[1]), "max_abs_diff": diff,
                      "max_abs": float(np.abs(want).max())}))
    if not diff <= 1e-4:
        sys.exit(f"error: {embeddings} differs from PyTorch by up to {diff}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
