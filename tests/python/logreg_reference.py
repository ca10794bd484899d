"""An independent reference for the linear probe's `logreg` mode (for
tests/evaluation.rs): a multinomial logistic regression fitted in PyTorch on
the features `eqco embed` wrote, with the protocol of issue 29.

Usage: python tests/python/logreg_reference.py TRAIN.npy TRAIN.rows.csv TEST.npy TEST.rows.csv

- The features are standardised with the training features' mean and
  standard deviation.
- The weight decay is chosen on HELD_OUT training images held out at random
  (numpy's generator, seed 0): for each candidate, the classifier is fitted
  on the other training images and scored on them.
- The classifier is then refitted on all the training images with the
  chosen weight decay and scored on the test images.
- Each fit is full batch, float64, with torch.optim.LBFGS and its strong
  Wolfe line search, run until the gradient's largest entry is below 1e-5;
  the candidates are fitted from the strongest decay to the weakest, each
  starting where the one before ended.

Prints JSON: the chosen weight decay and the test top-1 accuracy in [0, 1].
"""
import csv
import json
import sys

import numpy as np
import torch

HELD_OUT = 10_000
DECAYS = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]


def labels(rows_file):
    with open(rows_file, newline="") as f:
        return np.array([int(r["label"]) for r in csv.DictReader(f)], dtype=np.int64)


def fit(x, y, classes, decay, start=None):
    """Minimises mean cross-entropy + decay/2 · ‖W‖² (bias unpenalised),
    from `start` (W, b) or zero."""
    if start is None:
        start = (torch.zeros(classes, x.shape[1], dtype=torch.float64),
                 torch.zeros(classes, dtype=torch.float64))
    w = start[0].clone().requires_grad_(True)
    b = start[1].clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=20000,
        max_eval=25000,
        history_size=20,
        tolerance_grad=1e-5,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.5 * decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def top1(x, y, w, b):
    return ((x @ w.T + b).argmax(1) == y).double().mean().item()


def standardise(fit_x, *others):
    mean, std = fit_x.mean(0), fit_x.std(0)
    std[std < 1e-12] = 1.0
    return [(t - mean) / std for t in (fit_x, *others)]


def main(train_npy, train_rows, test_npy, test_rows):
    torch.set_num_threads(2)
    x = torch.from_numpy(np.load(train_npy).astype(np.float64))
    y = torch.from_numpy(labels(train_rows))
    tx = torch.from_numpy(np.load(test_npy).astype(np.float64))
    ty = torch.from_numpy(labels(test_rows))
    classes = int(max(y.max(), ty.max())) + 1
    held = np.random.default_rng(0).permutation(len(y))
    n_val = min(HELD_OUT, len(y) // 6)
    val, rest = torch.from_numpy(held[:n_val]), torch.from_numpy(held[n_val:])
    fx, vx = standardise(x[rest], x[val])
    scores, start = [], None
    for decay in DECAYS:
        w, b = fit(fx, y[rest], classes, decay, start)
        start = (w, b)
        scores.append((top1(vx, y[val], w, b), decay))
    best = max(scores, key=lambda s: s[0])[1]
    ax, atx = standardise(x, tx)
    w, b = fit(ax, y, classes, best)
    print(json.dumps({"decay": best, "top1": top1(atx, ty, w, b), "held_out": n_val}))


if __name__ == "__main__":
    main(*sys.argv[1:])
