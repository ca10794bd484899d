"""eqco from Python: self-supervised contrastive pretraining with the EqCo
equivalent rules (Zhu et al.), implemented in Rust on the same libtorch as
this PyTorch.

- ``pretrain(config=..., out=..., **overrides)`` runs ``eqco pretrain``.
- ``load_backbone(checkpoint)`` gives a torchvision ResNet with the weights.
- ``embed(checkpoint, images)`` gives features of a batch, a folder or a dataset.
- ``EqCoLoss(tau, alpha)`` is InfoNCE with EqCo's margin, for your own loop;
  ``margin(tau, alpha, k)`` is the rule ``m = tau * ln(alpha / K)``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch  # loads libtorch before the extension, which links against it

from . import _eqco

__all__ = ["pretrain", "load_backbone", "embed", "EqCoLoss", "margin"]

PathLike = Union[str, os.PathLike]


def margin(tau: float, alpha: float, k: int) -> float:
    """EqCo's margin ``m = tau * ln(alpha / k)`` (Eq. 5): InfoNCE with ``k``
    negatives and this margin behaves like InfoNCE with ``alpha`` negatives."""
    return _eqco.margin(float(tau), float(alpha), int(k))


class EqCoLoss(torch.nn.Module):
    """InfoNCE with EqCo's margin (Eq. 1 with ``m = tau * ln(alpha / K)``),
    computed by eqco's Rust loss on your tensors (autograd and autocast
    apply as to any torch op).

    ``forward(q, k_pos, negatives=None)``: ``q`` and ``k_pos`` are ``[N, D]``
    and L2-normalised; ``negatives`` is ``[K, D]`` (a shared queue, as in
    MoCo), ``[N, K, D]`` (per query) or ``None`` (in-batch: each query's
    negatives are the other rows of ``k_pos``, K = N - 1, as in SimCLR).
    Returns the mean loss, a scalar. ``alpha=None`` is plain InfoNCE.
    """

    def __init__(self, tau: float = 0.2, alpha: Optional[float] = 256.0) -> None:
        super().__init__()
        self.tau = float(tau)
        self.alpha = None if alpha is None else float(alpha)

    def forward(
        self, q: torch.Tensor, k_pos: torch.Tensor, negatives: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return _eqco.info_nce_loss(q, k_pos, negatives, self.tau, self.alpha)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, alpha={self.alpha}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def pretrain(
    config: Optional[str] = None,
    out: Optional[PathLike] = None,
    *,
    resume: Optional[PathLike] = None,
    device: str = "cpu",
    threads: Optional[int] = None,
    **overrides: Any,
) -> dict:
    """Pretrains as ``eqco pretrain`` does: ``config`` is a preset name or a
    TOML file, ``out`` the run folder, every other keyword a configuration
    key (``pretrain(data_dir="photos", dataset="imagefolder", max_steps=100)``).
    ``resume="auto"`` continues the run in ``out`` when it has a checkpoint.
    Releases the GIL while it trains. Ctrl-C stops the run at a checkpoint
    and raises ``KeyboardInterrupt`` (resume it with ``resume="auto"``). A
    bad key or value raises ``ValueError`` naming it. Returns the run's
    summary, with ``out`` and ``checkpoint`` paths."""
    sets = [f"{k}={_toml_value(v)}" for k, v in overrides.items()]
    text = _eqco.pretrain(
        config,
        None if out is None else str(out),
        sets,
        None if resume is None else str(resume),
        device,
        threads,
    )
    summary = json.loads(text) if text else {}
    summary["out"] = str(out if out is not None else "runs/pretrain")
    return summary


def load_backbone(checkpoint: PathLike) -> torch.nn.Module:
    """A torchvision ResNet (``torchvision.models.ResNet``, ``fc`` an
    ``Identity``) holding the checkpoint's trained backbone, in eval mode:
    ready for fine-tuning, a detector, or features. Widths other than 1 and
    the small stem are built at the checkpoint's sizes."""
    from ._backbone import build

    tensors, meta = _eqco.backbone_state(str(checkpoint))
    model = build(meta)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def embed(
    checkpoint: PathLike,
    images: Union[torch.Tensor, PathLike, None] = None,
    *,
    split: str = "train",
    head: bool = False,
    normalize: bool = False,
    device: str = "cpu",
    threads: Optional[int] = None,
) -> torch.Tensor:
    """Features of the checkpoint's frozen backbone (``head=True``: its
    projection head), as ``eqco embed`` computes them.

    ``images`` is a batch ``[N, C, H, W]`` already sized and normalised as
    the run's views (the backbone's pooled features are returned on its
    device), or a folder, file list or dataset path (every image of
    ``split``, with the run's evaluation transform), or ``None`` for the
    run's own dataset."""
    if isinstance(images, torch.Tensor):
        if head or normalize:
            raise ValueError("head and normalize apply to datasets; for a batch, project it yourself")
        return _eqco.embed_batch(str(checkpoint), images)
    threads = threads or os.cpu_count() or 1
    dataset = None if images is None else str(Path(images))
    return _eqco.embed_dataset(str(checkpoint), dataset, split, head, normalize, device, threads)
