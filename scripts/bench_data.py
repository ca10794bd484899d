"""torchvision's side of `eqco bench data`: the mocov2 ("aug+") two-view
pipeline with torchvision transforms and a DataLoader over the same files.

    python scripts/bench_data.py --format cifar10 --path DIR --size 32 --threads 2 --batch 256

Prints one JSON line with images per second (each image gives two views),
the best over --epochs epochs. With --threads 1 the main process does the
work (num_workers=0); with T > 1 there are T worker processes.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms


class Cifar10Bin(Dataset):
    """CIFAR-10 binary batches (data_batch_*.bin), decoded once into memory."""

    def __init__(self, root, transform):
        files = sorted(f for f in os.listdir(root) if f.startswith("data_batch_"))
        raw = np.concatenate([np.fromfile(os.path.join(root, f), dtype=np.uint8) for f in files])
        raw = raw.reshape(-1, 3073)
        self.labels = raw[:, 0].astype(np.int64)
        self.images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class TwoViews:
    def __init__(self, t):
        self.t = t

    def __call__(self, x):
        return self.t(x), self.t(x)


def mocov2(size, mean, std):
    k = int(round(0.1 * size))
    k = max(3, k + 1 if k % 2 == 0 else k)
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([transforms.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", choices=["cifar10", "folder"], required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t = TwoViews(mocov2(a.size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    ds = Cifar10Bin(a.path, t) if a.format == "cifar10" else datasets.ImageFolder(a.path, t)
    workers = 0 if a.threads <= 1 else a.threads
    dl = DataLoader(ds, batch_size=a.batch, shuffle=True, drop_last=True, num_workers=workers,
                    persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)
    best = 0.0
    for _ in range(a.epochs):
        n = 0
        start = time.perf_counter()
        for (v1, v2), _ in dl:
            n += v1.shape[0]
        best = max(best, n / (time.perf_counter() - start))
    print(json.dumps({"impl": "torchvision", "size": a.size, "threads": a.threads, "img_per_s": best}))


if __name__ == "__main__":
    main()
