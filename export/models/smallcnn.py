"""The custom CNN: three conv/ReLU/max-pool blocks and a global-average-pool -> linear head."""

from __future__ import annotations

import torch
from torch import nn

from gradtap.runtime.errors import OptionError

SMALLCNN_INPUT_SIZE = 128
SMALLCNN_MEAN = (0.5, 0.5, 0.5)
SMALLCNN_STD = (0.25, 0.25, 0.25)


class SmallCNN(nn.Module):
    """conv3x3-ReLU-conv3x3-ReLU blocks x3 (widths w, 2w, 4w), then GAP and one linear layer.

    The first ``pools`` blocks end in a 2x2 max-pool, so the last feature map has 1 / 2**pools
    of the input side (``pools=2``: a quarter; ``pools=1``: half, a finer CAM). The GAP -> linear
    head makes CAM (Zhou et al. 2016) exact: the class map is the linear layer's row applied to
    the last feature map, ``features`` output (the default tap).
    """

    def __init__(self, num_classes: int, width: int = 32, pools: int = 2) -> None:
        super().__init__()
        if pools not in (0, 1, 2):
            raise OptionError(f"pools must be 0, 1 or 2, got {pools}")
        self.pools = pools
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(3):
            c_out = width * 2**i
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.ReLU(),
            ]
            if i < pools:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
