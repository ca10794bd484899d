"""Types of the Rust extension ``eqco._eqco`` (see ``eqco/__init__.py``)."""
from typing import Dict, List, Optional, Tuple

import torch

def margin(tau: float, alpha: float, k: int) -> float: ...
def info_nce_loss(
    q: torch.Tensor,
    k_pos: torch.Tensor,
    negatives: Optional[torch.Tensor],
    tau: float,
    alpha: Optional[float],
) -> torch.Tensor: ...
def pretrain(
    config: Optional[str],
    out: Optional[str],
    sets: List[str],
    resume: Optional[str],
    device: str,
    threads: Optional[int],
) -> str: ...
def embed_dataset(
    checkpoint: str,
    dataset: Optional[str],
    split: str,
    head: bool,
    normalize: bool,
    device: str,
    threads: int,
) -> torch.Tensor: ...
def embed_batch(checkpoint: str, images: torch.Tensor) -> torch.Tensor: ...
def backbone_state(checkpoint: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]: ...
def main(argv: List[str]) -> int: ...
