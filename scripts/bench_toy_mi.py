"""The toy MI protocol (paper Table 5) in plain PyTorch, for `eqco bench toy-mi`.

Same critic (two MLPs d -> 256 -> ReLU -> 32), same Adam (lr 5e-4), same batch
(K + 1 fresh pairs of correlated Gaussians per step), same loss (InfoNCE with
the EqCo margin ln(alpha/K), tau = 1) as `eqco toy-mi`. Prints one JSON line
with the mean wall time of one training step, all steps timed.

    python scripts/bench_toy_mi.py --k 512 --steps 500 --threads 1
"""
import argparse
import json
import math
import time

import torch
from torch import nn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mi", type=float, default=6.0)
    ap.add_argument("--alpha", type=float, default=512.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d, hidden, embed = 20, 256, 32
    rho = math.sqrt(1.0 - math.exp(-2.0 * a.mi / d))
    g = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, embed))
    h = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, embed))
    opt = torch.optim.Adam(list(g.parameters()) + list(h.parameters()), lr=5e-4)
    n = a.k + 1
    margin = math.log(a.alpha / a.k)
    start = time.perf_counter()
    for _ in range(a.steps):
        x = torch.randn(n, d)
        y = rho * x + math.sqrt(1.0 - rho * rho) * torch.randn(n, d)
        s = g(x) @ h(y).t()
        pos = s.diagonal()
        neg = s.flatten()[1:].view(n - 1, n + 1)[:, :n].reshape(n, n - 1)
        logits = torch.cat([(pos - margin).unsqueeze(1), neg], 1)
        loss = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "k": a.k, "steps": a.steps,
        "threads": a.threads, "ms_per_step": elapsed * 1e3 / a.steps,
        "final_bound": math.log(a.alpha) - loss.item(),
    }))


if __name__ == "__main__":
    main()
