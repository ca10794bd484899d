"""PyTorch's side of `eqco bench train`: the same model, method and batch as
eqco, one training step after another on random images, timed.

    python scripts/bench_train.py --method simo --arch resnet18 --small-stem --size 32 --batch 256

Models are torchvision's ResNets (the small stem: 3x3/1 conv1, no max-pool)
with the method's head; SGD with momentum 0.9 and weight decay 1e-4. Prints
one JSON line with images per second (queries per second).
"""
import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def head(kind, feat, embed=128):
    if kind == "linear":
        return nn.Linear(feat, embed)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, embed))
    return nn.Sequential(nn.Linear(feat, feat, bias=False), nn.BatchNorm1d(feat), nn.ReLU(),
                         nn.Linear(feat, embed, bias=False), nn.BatchNorm1d(embed))


def encoder(arch, small, kind, width=1.0):
    m = getattr(torchvision.models, arch)()
    if small:
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    m.fc = head(kind, m.fc.in_features)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["simo", "mocov1", "mocov2", "simclr"], required=True)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--small-stem", action="store_true")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=256.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="CUDA autocast with bfloat16")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tau, m = 0.2, 0.999
    kind = {"simo": "mlp-bn", "mocov1": "linear", "mocov2": "mlp", "simclr": "mlp"}[a.method]
    enc = encoder(a.arch, a.small_stem, kind).to(dev)
    key = copy.deepcopy(enc) if a.method != "simclr" else None
    if key is not None:
        for p in key.parameters():
            p.requires_grad = False
    queue = F.normalize(torch.randn(a.queue, 128, device=dev), dim=1)
    ptr = 0
    opt = torch.optim.SGD(enc.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    n = a.batch
    v1 = torch.randn(n, 3, a.size, a.size, device=dev)
    v2 = torch.randn(n, 3, a.size, a.size, device=dev)
    ar = torch.arange(2 * n, device=dev)

    def ema():
        with torch.no_grad():
            for pk, pq in zip(key.parameters(), enc.parameters()):
                pk.mul_(m).add_(pq, alpha=1 - m)

    def step():
        if a.bf16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = forward()
        else:
            loss = forward()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def forward():
        nonlocal queue, ptr
        if a.method == "simo":
            q = F.normalize(enc(v1), dim=1)
            with torch.no_grad():
                ema()
                k = F.normalize(key(v2), dim=1)
            s = q @ k.t() / tau
            kk = a.k or n - 1
            pos = s.diagonal()
            neg = s.flatten()[1:].view(n - 1, n + 1)[:, :n].reshape(n, n - 1)
            neg = neg[:, torch.randperm(n - 1, device=dev)[:kk]]
            margin = math.log(a.alpha / kk)
            logits = torch.cat([(pos - margin).unsqueeze(1), neg], 1)
            logits = logits.float()
            loss = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
        elif a.method in ("mocov1", "mocov2"):
            q = F.normalize(torch.cat([enc(c) for c in v1.chunk(a.groups)]), dim=1)
            with torch.no_grad():
                ema()
                perm = torch.randperm(n, device=dev)
                inv = torch.argsort(perm)
                k = torch.cat([key(c) for c in v2[perm].chunk(a.groups)])[inv]
                k = F.normalize(k, dim=1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.clone().t()], 1) / tau
            loss = F.cross_entropy(logits.float(), torch.zeros(n, dtype=torch.long, device=dev))
            idx = (ar[:n] + ptr) % a.queue
            queue[idx] = k.to(queue.dtype)
            ptr = (ptr + n) % a.queue
        else:
            z = F.normalize(enc(torch.cat([v1, v2])), dim=1)
            s = z @ z.t() / tau
            s = s.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=dev), float("-inf"))
            target = (ar + n) % (2 * n)
            loss = F.cross_entropy(s.float(), target)
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    print(json.dumps({"impl": "pytorch", "method": a.method, "arch": a.arch, "bf16": a.bf16,
                      "img_per_s": n * a.steps / elapsed}))


if __name__ == "__main__":
    main()
