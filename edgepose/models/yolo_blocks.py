"""YOLOv5 v5.0 building blocks, with the attribute names the official checkpoints use.

KAPAO is YOLOv5 (v5.0, P3-P6 "*6" configs) with a wider detection head. Its released weights are
keyed by these attribute names (``conv``/``bn``/``act``, ``cv1``/``cv2``/``cv3``, ``m``), so every
block here keeps them: renaming one attribute would break loading the official ``.pt`` files.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BN_EPS = 1e-3  # YOLOv5's initialize_weights() sets these on every BatchNorm2d
BN_MOMENTUM = 0.03


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU, 'same' padding for odd kernels."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse_(self) -> None:
        """Fold the BatchNorm into the convolution (inference only; the bn becomes Identity)."""
        if isinstance(self.bn, nn.Identity):
            return
        self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
        self.bn = nn.Identity()


class Focus(nn.Module):
    """Space-to-depth (2x2 pixels -> 4x channels) then a Conv: the v5.0 stem."""

    #: (row, column) parity of each channel group: the official weights expect this order
    PARITIES = ((0, 0), (1, 0), (0, 1), (1, 1))

    def __init__(self, c1: int, c2: int, k: int = 1) -> None:
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, 1)
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            return self.conv(x)
        parts = [x[..., r::2, c::2] for r, c in self.PARITIES]
        return self.conv(torch.cat(parts, 1))

    def fold_(self) -> None:
        """Fuse, then turn the slices + kxk convolution into one 2k x 2k convolution of stride 2.

        Exact (YOLOv5 v6.0 made the same swap): output (i, j) reads input rows 2i + 2d + r for offsets d
        of the kxk kernel and parities r, which is a 2k-wide kernel at stride 2 with padding k - 1. The
        exported graph then starts with one convolution instead of four strided Slices and a Concat, which
        OpenVINO's CPU plugin runs with reference kernels (about a tenth of kapao-n's time at 512x384).
        """
        if self.folded:
            return
        self.conv.fuse_()
        conv = self.conv.conv
        k = conv.kernel_size[0]
        c1 = conv.in_channels // 4
        weight = conv.weight.new_zeros(conv.out_channels, c1, 2 * k, 2 * k)
        for g, (r, c) in enumerate(self.PARITIES):
            weight[:, :, r::2, c::2] = conv.weight[:, g * c1 : (g + 1) * c1]
        folded = nn.Conv2d(c1, conv.out_channels, 2 * k, 2, k - 1, bias=True)
        with torch.no_grad():
            folded.weight.copy_(weight)
            folded.bias.copy_(conv.bias if conv.bias is not None else torch.zeros(conv.out_channels))
        self.conv.conv = folded.to(conv.weight.device)
        self.folded = True


class Bottleneck(nn.Module):
    """1x1 -> 3x3 with an identity shortcut when shapes allow and ``shortcut`` is set."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions (n Bottlenecks on one half of the channels)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling: parallel stride-1 max-pools concatenated (k=(3, 5, 7) in the *6 configs)."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=s, stride=1, padding=s // 2) for s in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(pool(x) for pool in self.m)], 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels)."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class Detect(nn.Module):
    """KAPAO's detection head: one 1x1 conv per level, ``no = 5 + nc + num_coords`` channels per anchor.

    KAPAO's Detect differs from YOLOv5's only in ``no`` (the 2K keypoint offsets appended after the
    classes) and in its inference decode of those offsets. This module returns the raw logits; the
    decode lives in ``KapaoModel.decode`` so the exported graph ends at the raw outputs.

    Buffers as in the official state dict: ``anchors`` (nl, na, 2) in units of each level's stride
    (used by the training loss) and ``anchor_grid`` (nl, 1, na, 1, 1, 2) in pixels (used by decode).
    """

    def __init__(
        self,
        nc: int,
        num_coords: int,
        anchors_px: torch.Tensor,
        strides: tuple[int, ...],
        ch: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.nc = nc
        self.num_coords = num_coords
        self.no = 5 + nc + num_coords
        self.nl, self.na = int(anchors_px.shape[0]), int(anchors_px.shape[1])
        stride = torch.tensor(strides, dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("anchors", anchors_px / stride)
        self.register_buffer("anchor_grid", anchors_px.clone().view(self.nl, 1, self.na, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        #: export form: (B, A, C, H, W) as the convolution writes it, with no Transpose in the graph
        self.channel_major = False
        self._init_biases(strides)

    def _init_biases(self, strides: tuple[int, ...]) -> None:
        """Focal-loss style priors (YOLOv5 ``_initialize_biases``): ~8 objects per 640 image, rare classes."""
        with torch.no_grad():
            for conv, s in zip(self.m, strides, strict=True):
                b = conv.bias.view(self.na, self.no)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for conv, x in zip(self.m, xs, strict=True):
            y = conv(x)
            bs, _, ny, nx = y.shape
            y = y.view(bs, self.na, self.no, ny, nx)
            out.append(y if self.channel_major else y.permute(0, 1, 3, 4, 2).contiguous())
        return out
