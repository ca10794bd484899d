"""A torchvision ResNet at an eqco checkpoint's sizes: its depth, stem
(``small``: a 3x3 stride-1 conv and no max-pool) and width multiplier."""
from __future__ import annotations

import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

_ARCHS = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def build(meta: dict) -> ResNet:
    """The ResNet that ``meta`` (``eqco export``'s metadata) describes, its
    ``fc`` an ``Identity`` (the backbone's pooled features come out)."""
    arch = meta["arch"]
    if arch not in _ARCHS:
        raise ValueError(f"no torchvision ResNet for {arch}")
    block, layers = _ARCHS[arch]
    width = float(meta["width"])
    channels = int(meta["in_channels"])
    model = ResNet(block, layers)
    if width != 1.0:
        _rescale(model, block, layers, width)
    stem = model.conv1.out_channels
    if meta["stem"] == "small":
        model.conv1 = torch.nn.Conv2d(channels, stem, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    elif channels != 3:
        model.conv1 = torch.nn.Conv2d(channels, stem, 7, 2, 3, bias=False)
    model.fc = torch.nn.Identity()
    return model


def _rescale(model: ResNet, block, layers, width: float) -> None:
    """Rebuilds the stem and the four stages of ``model`` at ``width`` times
    torchvision's channels, with torchvision's own ``_make_layer``."""
    planes = [max(1, round(p * width)) for p in (64, 128, 256, 512)]
    model.inplanes = planes[0]
    model.conv1 = torch.nn.Conv2d(3, planes[0], 7, 2, 3, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(planes[0])
    model.layer1 = model._make_layer(block, planes[0], layers[0])
    model.layer2 = model._make_layer(block, planes[1], layers[1], stride=2)
    model.layer3 = model._make_layer(block, planes[2], layers[2], stride=2)
    model.layer4 = model._make_layer(block, planes[3], layers[3], stride=2)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


__all__ = ["build", "torchvision"]
