"""Shared fixtures: small models built in the test, so nothing is downloaded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn


class SmallConvNet(nn.Module):
    """Two conv layers with an in-place ReLU and a residual add: the cases capture must survive."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(4, 3)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.conv1(x))
        out = self.conv2(h)
        out += h  # in place, as residual blocks do
        if self.fail:
            raise RuntimeError("deliberate failure inside the forward pass")
        return self.head(self.relu2(out).mean(dim=(2, 3)))


@pytest.fixture
def convnet() -> SmallConvNet:
    return SmallConvNet().eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models train and run faster on one thread: a second only adds overhead, and on a busy
    machine a lot. Use with pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
