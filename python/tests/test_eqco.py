"""The Python package against PyTorch itself: EqCoLoss against a plain
PyTorch InfoNCE with margin (values and gradients, three negative layouts),
pretrain -> load_backbone -> the features `eqco embed` writes, errors as
ValueError, the installed `eqco` command, and an interrupted pretrain that
resumes. Run by scripts/test.sh after `pip install ./python`."""
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eqco

# A tiny fp32 run on 16-pixel views (ResNet-10 at width 1/8): seconds.
TINY = dict(
    dataset="imagefolder",
    backbone="resnet10",
    width=0.125,
    batch_size=16,
    k_negatives=15,
    image_size=16,
    head_hidden=32,
    embed_dim=16,
    warmup_epochs=0,
    loader_threads=1,
    precision="fp32",
    memory_format="contiguous",
    tensorboard=False,
)


def reference_loss(q, k_pos, negatives, tau, alpha):
    """InfoNCE with EqCo's margin, written with PyTorch ops only."""
    if negatives is None:
        scores = q @ k_pos.T
        n = q.shape[0]
        pos = scores.diagonal()
        neg = scores[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)
    elif negatives.dim() == 2:
        pos = (q * k_pos).sum(1)
        neg = q @ negatives.T
    else:
        pos = (q * k_pos).sum(1)
        neg = torch.einsum("nd,nkd->nk", q, negatives)
    k = neg.shape[1]
    m = 0.0 if alpha is None else tau * math.log(alpha / k)
    logits = torch.cat([((pos - m) / tau)[:, None], neg / tau], 1)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def unit(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)


@pytest.mark.parametrize("layout", ["shared", "per_query", "in_batch"])
@pytest.mark.parametrize("n,d,k", [(8, 16, 5), (32, 64, 31), (3, 4, 2)])
@pytest.mark.parametrize("alpha", [256.0, None])
def test_eqco_loss_equals_pytorch_in_values_and_gradients(layout, n, d, k, alpha):
    q = unit(n, d, seed=1).requires_grad_()
    kp = unit(n, d, seed=2).requires_grad_()
    neg = {"shared": unit(k, d, seed=3), "per_query": unit(n, k, d, seed=3), "in_batch": None}[layout]
    if neg is not None:
        neg.requires_grad_()
    leaves = [t for t in (q, kp, neg) if t is not None]
    ours = eqco.EqCoLoss(tau=0.2, alpha=alpha)(q, kp, neg)
    g_ours = torch.autograd.grad(ours, leaves)
    want = reference_loss(q, kp, neg, 0.2, alpha)
    g_want = torch.autograd.grad(want, leaves)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert abs(ours.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))
    for a, b in zip(g_ours, g_want):
        assert (a - b).abs().max().item() <= 1e-6


def test_margin_is_the_eqco_rule_and_bad_values_raise():
    assert eqco.margin(0.2, 256, 16) == pytest.approx(0.2 * math.log(16), abs=1e-12)
    with pytest.raises(ValueError, match="tau"):
        eqco.margin(-1.0, 256, 16)
    with pytest.raises(ValueError, match="negatives"):
        eqco.EqCoLoss()(unit(4, 8, seed=0), unit(4, 8, seed=1), torch.zeros(1, 2, 3, 4))


def test_the_loss_runs_under_autocast():
    q, kp, neg = unit(16, 32, seed=4), unit(16, 32, seed=5), unit(64, 32, seed=6)
    w = unit(32, 32, seed=7).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qb, kb, nb = (t @ w for t in (q, kp, neg))
        loss = eqco.EqCoLoss(0.2, 256.0)(qb, kb, nb)
    assert qb.dtype == torch.bfloat16 and loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, [w])
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    # The similarities are bf16 under autocast (2^-8 relative), the loss
    # float32: within that rounding of the loss of the same bf16 inputs in fp32.
    exact = reference_loss(qb.float(), kb.float(), nb.float(), 0.2, 256.0)
    assert abs(loss.item() - exact.item()) <= 2**-8 * abs(exact.item())


def write_images(folder: Path, n: int) -> None:
    """`n` random 16×16 PNGs: the view size, so that the evaluation
    transform is the normalisation alone. (At other sizes eqco's centre crop
    reads torchvision's region, but its resampler, fast_image_resize, rounds
    some pixels apart from PIL's by one level.)"""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_pretrain_then_load_backbone_gives_the_features_eqco_embed_writes(tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, 40)
    out = tmp_path / "run"
    summary = eqco.pretrain(out=out, data_dir=str(photos), max_steps=3, threads=1, **TINY)
    assert summary["steps"] == 3 and summary["out"] == str(out)
    ckpt = out / "checkpoints" / "latest.safetensors"
    emb = tmp_path / "emb.npy"
    subprocess.run(
        ["eqco", "embed", "--checkpoint", str(ckpt), "--out", str(emb), "--threads", "1"],
        check=True,
        capture_output=True,
    )
    want = np.load(emb)
    info = json.loads(Path(str(emb)[: -len(".npy")] + ".json").read_text())
    t = info["transform"]
    crop, norm = t["crop"]["Center"], t["normalize"]
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(crop["resize"], antialias=True),
            transforms.CenterCrop(crop["size"]),
            transforms.ToTensor(),
            transforms.Normalize(norm["mean"], norm["std"]),
        ]
    )
    rows = csv.DictReader(open(tmp_path / "emb.rows.csv"))
    x = torch.stack([transform(Image.open(r["path"]).convert("RGB")) for r in rows])
    model = eqco.load_backbone(ckpt)
    assert isinstance(model, torch.nn.Module) and type(model).__name__ == "ResNet"
    with torch.no_grad():
        got = model(x).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    # The same through the Python API: a folder, and a batch.
    assert np.abs(eqco.embed(ckpt, photos, threads=1).numpy() - want).max() <= 1e-4
    assert np.abs(eqco.embed(ckpt, x).numpy() - want).max() <= 1e-4
    # The batch given to the model is torchvision's transform of the files.
    t = transform(Image.open(photos / "000.png").convert("RGB"))
    assert torch.equal(t, x[0])


def test_a_bad_key_raises_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="no_such_key"):
        eqco.pretrain(out=tmp_path / "bad", no_such_key=1)
    with pytest.raises(ValueError, match="tau"):
        eqco.pretrain(out=tmp_path / "bad", tau=-1.0)


def test_the_installed_command_runs():
    exe = shutil.which("eqco")
    assert exe is not None and Path(exe).parent == Path(sys.executable).parent
    out = subprocess.run([exe, "pretrain", "--print-config"], capture_output=True, text=True)
    assert out.returncode == 0 and "method" in out.stdout, out.stderr
    bad = subprocess.run([exe, "pretrain", "--set", "nope=1", "--print-config"], capture_output=True, text=True)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_an_interrupted_pretrain_resumes(tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, 64)
    out = tmp_path / "run"
    args = dict(TINY, data_dir=str(photos), epochs=50)
    script = (
        "import eqco, sys\n"
        f"try:\n    eqco.pretrain(out={str(out)!r}, threads=1, **{args!r})\n"
        "except KeyboardInterrupt as e:\n    print(e, file=sys.stderr); sys.exit(75)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert p.poll() is None and time.time() < deadline, "the run ended early or never started"
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75 and "stopped by SIGINT" in err, err
    stopped = len(metrics.read_text().splitlines())
    assert stopped < 200
    summary = eqco.pretrain(out=out, resume="auto", threads=1, **args)
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert steps == list(range(1, summary["steps"] + 1)) and summary["steps"] == 200


def test_the_installed_command_launches_workers(tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, 32)
    out = tmp_path / "run"
    sets = [f"{k}={eqco._toml_value(v)}" for k, v in dict(TINY, data_dir=str(photos), max_steps=2).items()]
    cmd = ["eqco", "pretrain", "--out", str(out), "--threads", "1", "--nproc-per-node", "2"]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
