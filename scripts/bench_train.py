"""PyTorch's side of `eqco bench train`: the same model, method, batch,
precision and memory format as eqco, one training step after another on
random images, timed.

    python scripts/bench_train.py --method simo --arch resnet18 --width 0.25 --small-stem \
        --channels 1 --size 28 --batch 256 [--channels-last] [--bf16]

The ResNet is torchvision's, written out here so that it can take eqco's
width multiplier (and so that no torchvision is needed): BasicBlock or
Bottleneck stages, the ImageNet stem or the small-image one (3x3/1 conv,
no max-pool), with the method's head. SGD with momentum 0.9 and weight
decay 1e-4. `--bf16` runs the encoders' forward passes under
`torch.autocast(device_type, dtype=torch.bfloat16)`, the loss in float32,
as eqco does. Prints one JSON line: the median seconds per step, and the
median seconds the CPU waited for the device at the end of a step.
"""
import argparse
import copy
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


def conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(conv(cin, planes, 1, stride), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y, inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = 4 * planes
        self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv(planes, out, 1), nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(conv(cin, out, 1, stride), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.relu(self.bn2(self.conv2(y)), inplace=True)
        y = self.bn3(self.conv3(y))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y, inplace=True)


def resnet(arch, width, small, channels):
    blocks, block = {"resnet10": ([1, 1, 1, 1], Basic), "resnet18": ([2, 2, 2, 2], Basic),
                     "resnet34": ([3, 4, 6, 3], Basic), "resnet50": ([3, 4, 6, 3], Bottleneck)}[arch]
    planes = lambda base: max(1, round(base * width))
    stem = planes(64)
    layers = [conv(channels, stem, 3 if small else 7, 1 if small else 2), nn.BatchNorm2d(stem),
              nn.ReLU(inplace=True)]
    if not small:
        layers.append(nn.MaxPool2d(3, 2, 1))
    cin = stem
    for stage, n in enumerate(blocks):
        for b in range(n):
            layers.append(block(cin, planes(64 << stage), 2 if b == 0 and stage > 0 else 1))
            cin = planes(64 << stage) * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


def head(kind, feat, embed=128):
    if kind == "linear":
        return nn.Linear(feat, embed)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(feat, feat), nn.ReLU(), nn.Linear(feat, embed))
    return nn.Sequential(nn.Linear(feat, feat, bias=False), nn.BatchNorm1d(feat), nn.ReLU(),
                         nn.Linear(feat, embed, bias=False), nn.BatchNorm1d(embed))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["simo", "mocov1", "mocov2", "simclr"], required=True)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--small-stem", action="store_true")
    ap.add_argument("--channels", type=int, default=3)
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
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward passes")
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    tau, m = 0.2, 0.999
    kind = {"simo": "mlp-bn", "mocov1": "linear", "mocov2": "mlp", "simclr": "mlp"}[a.method]
    body, feat = resnet(a.arch, a.width, a.small_stem, a.channels)
    enc = nn.Sequential(body, head(kind, feat)).to(dev).to(memory_format=fmt)
    key = copy.deepcopy(enc) if a.method != "simclr" else None
    if key is not None:
        for p in key.parameters():
            p.requires_grad = False
    queue = F.normalize(torch.randn(a.queue, 128, device=dev), dim=1)
    ptr = 0
    opt = torch.optim.SGD(enc.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    n = a.batch
    v1 = torch.randn(n, a.channels, a.size, a.size, device=dev).to(memory_format=fmt)
    v2 = torch.randn(n, a.channels, a.size, a.size, device=dev).to(memory_format=fmt)
    ar = torch.arange(2 * n, device=dev)

    def embed(model, x):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            z = model(x)
        return F.normalize(z.float(), dim=1)

    def ema():
        with torch.no_grad():
            for pk, pq in zip(key.parameters(), enc.parameters()):
                pk.mul_(m).add_(pq, alpha=1 - m)

    def forward():
        nonlocal queue, ptr
        if a.method == "simo":
            q = embed(enc, v1)
            with torch.no_grad():
                ema()
                k = embed(key, v2)
            s = q @ k.t() / tau
            kk = a.k or n - 1
            pos = s.diagonal()
            neg = s.flatten()[1:].view(n - 1, n + 1)[:, :n].reshape(n, n - 1)
            neg = neg[:, torch.randperm(n - 1, device=dev)[:kk]]
            margin = math.log(a.alpha / kk)
            logits = torch.cat([(pos - margin).unsqueeze(1), neg], 1)
            return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
        if a.method in ("mocov1", "mocov2"):
            q = torch.cat([embed(enc, c) for c in v1.chunk(a.groups)])
            with torch.no_grad():
                ema()
                perm = torch.randperm(n, device=dev)
                inv = torch.argsort(perm)
                k = torch.cat([embed(key, c) for c in v2[perm].chunk(a.groups)])[inv]
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.clone().t()], 1) / tau
            loss = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=dev))
            idx = (ar[:n] + ptr) % a.queue
            queue[idx] = k
            ptr = (ptr + n) % a.queue
            return loss
        z = embed(enc, torch.cat([v1, v2]))
        s = z @ z.t() / tau
        s = s.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=dev), float("-inf"))
        return F.cross_entropy(s, (ar + n) % (2 * n))

    def step():
        loss = forward()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        step()
    sync()
    times, waits = [], []
    for _ in range(a.steps):
        start = time.perf_counter()
        step()
        queued = time.perf_counter()
        sync()
        end = time.perf_counter()
        times.append(end - start)
        waits.append(end - queued)
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "method": a.method,
                      "arch": a.arch, "bf16": a.bf16, "channels_last": a.channels_last,
                      "step_s": statistics.median(times), "wait_s": statistics.median(waits)}))


if __name__ == "__main__":
    main()
