"""DEKR's adaptive convolution, built from standard ops so one ONNX runs on ORT, OpenVINO and TensorRT.

An adaptive block (DEKR's ``AdaptBlock``) predicts, at every pixel, a 2x2 matrix ``M`` and a translation
``t``; the 3x3 kernel then samples at ``p + M r + t`` instead of ``p + r`` (``r`` the regular offsets
-1/0/1), i.e. a deformable convolution whose offsets are an affine transform of the regular grid. The
official code calls ``torchvision.ops.DeformConv2d``, which no edge runtime has as a standard op.

Here the nine sampling points are read with zero-padded bilinear interpolation (a point outside the map
reads 0, exactly torchvision's rule) through one ``GridSample`` over the nine taps stacked along the
height axis, and the 3x3 kernel becomes a 1x1 convolution over the stacked samples. The other form
(four ``Gather``s of the bilinear corners + ``MatMul``) was measured slower on ORT and OpenVINO, see
``benchmarks/adaptive_conv_forms.py``, and is kept there only as the comparison.

Keys match the official ``AdaptBlock`` (``transform_matrix_conv``, ``translation_conv``,
``adapt_conv.weight``, the ``regular_matrix`` buffer, ``bn``). ``GroupedAdaptBlock`` is the export
form of G such blocks working side by side on G channel groups (DEKR's per-keypoint branches), so the
graph has a handful of large ops per block instead of G chains of small ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgepose.errors import UsageError

BN_MOMENTUM = 0.1
#: the official ``regular_matrix``: row 0 the y offset, row 1 the x offset of each tap, taps row-major
REGULAR = ((-1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0), (-1.0, 0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 0.0, 1.0))
TAPS = 9


def _grid_frame(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """GridSample's coordinates for an (H, W) map: (scale (2,): normalised units per pixel, x then y;
    base (H, W, 2): every pixel's own position). With ``align_corners=False`` pixel i sits at
    (2 i + 1) / size - 1."""
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=dtype, device=device)
    gx = torch.arange(w, dtype=dtype, device=device) * (2.0 / w) + (1.0 / w - 1.0)
    gy = torch.arange(h, dtype=dtype, device=device) * (2.0 / h) + (1.0 / h - 1.0)
    return scale, torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)


def _to_grid(disp: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 9, H, W, 2) tap displacements in pixels -> GridSample grid (B, 9 H, W, 2)."""
    scale, base = _grid_frame(h, w, disp.dtype, disp.device)
    return (disp * scale + base).reshape(disp.shape[0], TAPS * h, w, 2)


def sample_taps(x: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``x`` at the nine displaced taps of every pixel, zero outside the map.

    x: (B, C, H, W). disp: (B, 9, 2, H, W), per tap the (x, y) position relative to the pixel, in pixels.
    Returns (B, C * 9, H, W), channel ``c * 9 + k``: the layout of a 3x3 kernel's flattened weights.
    """
    b, c, h, w = x.shape
    grid = _to_grid(disp.permute(0, 1, 3, 4, 2), h, w)
    out = F.grid_sample(x, grid, "bilinear", "zeros", align_corners=False)
    return out.reshape(b, c * TAPS, h, w)


def adaptive_conv(x: torch.Tensor, disp: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Deformable 3x3 convolution of ``groups`` independent channel groups (no bias).

    x: (N, G * C, H, W); disp: (N * G, 9, 2, H, W), per group (see ``sample_taps``);
    weight: (G * Cout, C, 3, 3).
    """
    n, gc, h, w = x.shape
    samples = sample_taps(x.reshape(n * groups, gc // groups, h, w), disp)
    kernel = weight.reshape(weight.shape[0], -1, 1, 1)
    return F.conv2d(samples.reshape(n, gc * TAPS, h, w), kernel, groups=groups)


def displacement_map(dilation: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map from (m00, m01, m10, m11, ty, tx) to the 18 tap displacements, and its constant.

    Displacement of tap k, (x, y): ``(m10 ry + m11 rx + tx + (d - 1) rx, m00 ry + m01 rx + ty + (d - 1) ry)``
    where (ry, rx) = ``REGULAR[:, k]``: the official offset ``M r - r + t`` added to the dilated regular tap.
    Returns (A (18, 6), e (18,)), rows ordered tap-major, x before y.
    """
    a = torch.zeros(TAPS, 2, 6, dtype=torch.float64)
    e = torch.zeros(TAPS, 2, dtype=torch.float64)
    for k in range(TAPS):
        ry, rx = REGULAR[0][k], REGULAR[1][k]
        a[k, 0, 2], a[k, 0, 3], a[k, 0, 5] = ry, rx, 1.0  # x
        a[k, 1, 0], a[k, 1, 1], a[k, 1, 4] = ry, rx, 1.0  # y
        e[k, 0], e[k, 1] = (dilation - 1) * rx, (dilation - 1) * ry
    return a.reshape(2 * TAPS, 6).to(dtype), e.reshape(2 * TAPS).to(dtype)


class DeformConv3x3(nn.Conv2d):
    """The kernel of an adaptive block (official ``adapt_conv``: a bias-free ``DeformConv2d``).

    A ``Conv2d`` subclass only for its parameter, initialisation and key (``weight``); ``forward`` takes
    the sampling displacements as well.
    """

    def __init__(self, inplanes: int, outplanes: int, dilation: int = 1) -> None:
        super().__init__(inplanes, outplanes, 3, 1, dilation, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return adaptive_conv(x, disp, self.weight)


class AdaptBlock(nn.Module):
    """DEKR's adaptive residual block: pixel-wise affine 3x3 sampling, BatchNorm, residual, ReLU."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        outplanes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if stride != 1:
            raise UsageError("adaptive blocks support stride 1 only (as every DEKR configuration uses)")
        self.register_buffer("regular_matrix", torch.tensor(REGULAR, dtype=torch.float32))
        self.downsample = downsample
        self.dilation = int(dilation)
        self.transform_matrix_conv = nn.Conv2d(inplanes, 4, 3, 1, 1, bias=True)
        self.translation_conv = nn.Conv2d(inplanes, 2, 3, 1, 1, bias=True)
        self.adapt_conv = DeformConv3x3(inplanes, outplanes, dilation)
        self.bn = nn.BatchNorm2d(outplanes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)

    def displacement(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 9, 2, H, W): where each tap samples, (x, y) relative to the pixel, as the official block."""
        m = self.transform_matrix_conv(x)
        t = self.translation_conv(x)
        ry = self.regular_matrix[0].to(x.dtype).view(1, TAPS, 1, 1)
        rx = self.regular_matrix[1].to(x.dtype).view(1, TAPS, 1, 1)
        d = float(self.dilation - 1)
        dx = m[:, 2:3] * ry + m[:, 3:4] * rx + t[:, 1:2] + d * rx
        dy = m[:, 0:1] * ry + m[:, 1:2] * rx + t[:, 0:1] + d * ry
        return torch.stack((dx, dy), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn(self.adapt_conv(x, self.displacement(x)))
        return self.relu(out + residual)


class GroupedAdaptBlock(nn.Module):
    """G adaptive blocks on G channel groups as a few large ops (export form; BatchNorm folded, eval only).

    One grouped 3x3 convolution gives every group's (m00, m01, m10, m11, ty, tx); one MatMul with the
    constant ``displacement_map`` turns them into the 18 tap displacements; one GridSample reads all
    groups' taps; one batched MatMul applies the kernels, BatchNorm folded in.
    """

    def __init__(self, blocks: Sequence[AdaptBlock]) -> None:
        super().__init__()
        if not blocks or any(b.downsample is not None for b in blocks):
            raise UsageError("grouping needs at least one adaptive block, none with a downsample")
        g = len(blocks)
        cin = blocks[0].transform_matrix_conv.in_channels
        dilation = blocks[0].dilation
        dtype = blocks[0].adapt_conv.weight.dtype
        affine_w, affine_b, kern, bias = [], [], [], []
        with torch.no_grad():
            for blk in blocks:
                if blk.dilation != dilation or blk.transform_matrix_conv.in_channels != cin:
                    raise UsageError("grouped adaptive blocks must share their width and dilation")
                affine_w.append(torch.cat((blk.transform_matrix_conv.weight, blk.translation_conv.weight)))
                affine_b.append(torch.cat((blk.transform_matrix_conv.bias, blk.translation_conv.bias)))
                bn = blk.bn
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                kern.append(
                    (blk.adapt_conv.weight.double() * scale.view(-1, 1, 1, 1)).reshape(len(scale), -1)
                )
                bias.append(bn.bias.double() - bn.running_mean.double() * scale)
        self.groups = g
        self.affine_conv = nn.Conv2d(g * cin, g * 6, 3, 1, 1, groups=g, bias=True)
        with torch.no_grad():
            self.affine_conv.weight.copy_(torch.cat(affine_w))
            self.affine_conv.bias.copy_(torch.cat(affine_b))
        cout = blocks[0].bn.num_features
        # (G, Cout, 9 C) kernels and (G, Cout, 1) biases for one batched MatMul (faster than a grouped 1x1
        # convolution on OpenVINO, the same on ORT)
        self.kernel = nn.Parameter(torch.stack(kern).to(dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.stack(bias).to(dtype).view(g, cout, 1), requires_grad=False)
        a, e = displacement_map(dilation, dtype)
        self.register_buffer("disp_matrix", a.t().contiguous())  # (6, 18)
        self.register_buffer("disp_const", e.view(TAPS, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, gc, h, w = x.shape
        ng = n * self.groups
        # Everything that depends only on the map size folds into two constants at export: the
        # displacement matrix already in grid units, and every tap's undisplaced grid position. The
        # graph then has no broadcast over (x, y) pairs, which ONNX Runtime runs two floats at a time.
        scale, base = _grid_frame(h, w, x.dtype, x.device)
        to_grid = (self.disp_matrix * scale.repeat(TAPS)).reshape(6, TAPS, 2).transpose(0, 1)  # (9, 6, 2)
        taps = base + (self.disp_const * scale).view(TAPS, 1, 1, 2)  # (9, H, W, 2)
        # The grid comes out tap-major with (x, y) innermost from one broadcast MatMul on the
        # pixel-major affine parameters: transposing those 6 channels is a third of the work of
        # transposing the 18 displacements into place (ORT: -5% on dekr-n; docs/architecture.md).
        affine = self.affine_conv(x).reshape(ng, 6, h * w).transpose(1, 2)  # (NG, HW, 6)
        disp = (affine.unsqueeze(1) @ to_grid).reshape(ng, TAPS, h, w, 2)
        grid = (disp + taps).reshape(ng, TAPS * h, w, 2)
        samples = F.grid_sample(
            x.reshape(ng, gc // self.groups, h, w), grid, "bilinear", "zeros", align_corners=False
        )
        out = self.kernel @ samples.reshape(n, self.groups, gc // self.groups * TAPS, h * w) + self.bias
        return torch.relu(out.reshape(x.shape) + x)
