"""A ResNet-18-shaped conv net built here (no torchvision on this machine), every ReLU its own
module so each activation is one site."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """A basic residual block: conv-bn-relu-conv-bn, plus a projected shortcut on a stride."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.down(x))


def resnet18(num_classes: int = 1000) -> nn.Module:
    """ResNet-18 layout: a 7x7 stem, four stages of two blocks (64-512 channels), a head."""
    stages, cin = [], 64
    for i, cout in enumerate((64, 128, 256, 512)):
        stages.append(nn.Sequential(Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)))
        cin = cout
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    ).eval()


def logit0(out: torch.Tensor) -> torch.Tensor:
    """The conv benchmarks' metric: the summed logit of class 0."""
    return out[:, 0].sum()


def resnet_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The conv benchmarks' ResNet-18 (10 classes, eval mode) and a clean and a corrupted batch
    of 2 x 3 x 64 x 64 images, all seeded."""
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    clean, corrupt = torch.randn(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return model, clean, corrupt
