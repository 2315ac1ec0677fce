"""HRNet backbone (stem, layer1, stages 2-4), keyed like the official HRNet-family checkpoints.

Bottom-up HRNet pose models (HigherHRNet, DEKR, SWAHR) share this trunk: a stride-4 stem of two strided
3x3 convolutions and Bottleneck ``layer1``, then stages that keep 2, 3 and 4 parallel branches at
strides 4, 8, 16, 32 and exchange information through ``fuse_layers``. Attribute names follow the
official code (``conv1``/``bn1``/``conv2``/``bn2``/``layer1``, ``transition{1,2,3}``, ``stage{2,3,4}``
with ``branches`` and ``fuse_layers``), so a model that subclasses ``HRNet`` and adds its heads as
attributes gets exactly the official state-dict keys and loads official weights with ``strict=True``.

The family-specific parts (heads, input normalisation) live in the subclasses; this module only knows
the trunk. ``fold_batchnorms`` folds every Conv+BatchNorm pair for export.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgepose.errors import UsageError

BN_MOMENTUM = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the input's width and height must be a multiple of this: four branches, the coarsest at stride 32
INPUT_MULTIPLE = 32


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet's basic block)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 with a 4x channel expansion and a residual."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


def make_layer(
    block: type[BasicBlock] | type[Bottleneck],
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """``blocks`` residual blocks; the first gets a 1x1 projection when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion, momentum=BN_MOMENTUM),
        )
    layers = [block(inplanes, planes, stride, downsample, dilation=dilation)]
    layers += [block(planes * block.expansion, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every output branch sums all inputs resampled to it."""

    def __init__(self, channels: Sequence[int], num_blocks: int, multi_scale_output: bool = True) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.branches = nn.ModuleList(make_layer(BasicBlock, c, c, num_blocks) for c in self.channels)
        self.fuse_layers = self._make_fuse_layers(multi_scale_output) if len(self.channels) > 1 else None
        self.relu = nn.ReLU(inplace=True)

    def _make_fuse_layers(self, multi_scale_output: bool) -> nn.ModuleList:
        c = self.channels
        n = len(c)
        rows = []
        for i in range(n if multi_scale_output else 1):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:  # coarser -> finer: 1x1 projection, nearest upsampling
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(c[j], c[i], 1, 1, 0, bias=False),
                            nn.BatchNorm2d(c[i]),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:  # finer -> coarser: strided 3x3 convolutions, the last one without ReLU
                    steps = [_conv_bn(c[j], c[j], 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(c[j], c[i], 2, relu=False))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        return nn.ModuleList(rows)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                y = y + (xs[j] if i == j else row[j](xs[j]))
            out.append(self.relu(y))
        return out


class TrunkConfigDict:
    """``to_dict``/``from_dict`` for the frozen configs that carry an HRNet trunk's stage tuples.

    Checkpoints store configs as plain dicts: the tuples become lists, and ``from_dict`` refuses keys
    the config does not have (a checkpoint of another family or version must not load half-understood).
    """

    LABEL: ClassVar[str] = "HRNet"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["num_modules"] = list(d["num_modules"])
        d["num_blocks"] = list(d["num_blocks"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        unknown = set(d) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise UsageError(f"unknown {cls.LABEL} config field(s): {', '.join(sorted(unknown))}")
        return cls(**dict(d))


@dataclass(frozen=True)
class HRNetConfig(TrunkConfigDict):
    """The trunk's shape. Branch widths are ``width * (1, 2, 4, 8)``; HRNet-W32 is the default.

    stem_channels/stem_blocks: layer1's Bottleneck planes and count (official: 64 and 4, so 256 out).
    num_modules/num_blocks: HighResolutionModules per stage 2-4 and basic blocks per branch.
    last_multi_scale: whether the last module outputs every branch (DEKR: yes; HigherHRNet: only the
    finest).
    """

    width: int = 32
    stem_channels: int = 64
    stem_blocks: int = 4
    num_modules: tuple[int, int, int] = (1, 4, 3)
    num_blocks: tuple[int, int, int] = (4, 4, 4)
    last_multi_scale: bool = True

    def __post_init__(self) -> None:
        try:
            modules = tuple(int(v) for v in self.num_modules)
            blocks = tuple(int(v) for v in self.num_blocks)
            ints = [int(self.width), int(self.stem_channels), int(self.stem_blocks)]
        except (TypeError, ValueError) as e:
            raise UsageError("HRNet config needs integer widths, block and module counts") from e
        if len(modules) != 3 or len(blocks) != 3:
            raise UsageError("HRNet num_modules and num_blocks need one entry per stage 2, 3 and 4")
        if min(*ints, *modules, *blocks) < 1:
            raise UsageError("HRNet widths, block and module counts must be at least 1")
        object.__setattr__(self, "num_modules", modules)
        object.__setattr__(self, "num_blocks", blocks)
        object.__setattr__(self, "width", ints[0])
        object.__setattr__(self, "stem_channels", ints[1])
        object.__setattr__(self, "stem_blocks", ints[2])
        object.__setattr__(self, "last_multi_scale", bool(self.last_multi_scale))

    def stage_channels(self, stage: int) -> tuple[int, ...]:
        """Branch widths of stage ``stage`` (2, 3 or 4)."""
        return tuple(self.width * 2**b for b in range(stage))

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.stage_channels(4) if self.last_multi_scale else (self.width,)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HRNetConfig:
        """Lenient: a family config's dict holds the trunk fields among its own."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class PoseTrunkConfig(TrunkConfigDict):
    """The fields every HRNet-based pose network's config shares: its name, keypoint count and trunk.

    Family configs (DEKR, SAHR) subclass it, add their heads' fields after these and override
    ``name``'s default and ``LAST_MULTI_SCALE``; validation of the shared part happens here once.
    """

    #: whether the family's heads read every trunk branch (DEKR) or only the finest (HigherHRNet)
    LAST_MULTI_SCALE: ClassVar[bool] = True

    name: str = "hrnet"
    num_keypoints: int = 17
    width: int = 32
    stem_channels: int = 64
    stem_blocks: int = 4
    num_modules: tuple[int, int, int] = (1, 4, 3)
    num_blocks: tuple[int, int, int] = (4, 4, 4)

    def __post_init__(self) -> None:
        self.require_positive_ints("num_keypoints")
        hr = self.hrnet()  # validates the trunk fields
        object.__setattr__(self, "num_modules", hr.num_modules)
        object.__setattr__(self, "num_blocks", hr.num_blocks)

    def require_positive_ints(self, *fields: str) -> None:
        """UsageError naming the first of ``fields`` that is not an integer >= 1 (bools are refused)."""
        for f in fields:
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{self.LABEL} config field {f} must be a positive integer, got {value!r}")

    def hrnet(self) -> HRNetConfig:
        return HRNetConfig(
            self.width,
            self.stem_channels,
            self.stem_blocks,
            self.num_modules,
            self.num_blocks,
            last_multi_scale=self.LAST_MULTI_SCALE,
        )


class HRNet(nn.Module):
    """The trunk. Subclasses add heads; ``features`` returns the branch outputs, finest first.

    The official pipelines normalise RGB with ImageNet mean/std before the network; here that is the
    graph's first op (``normalise``), so a runtime feeds RGB / 255 as for every family.
    """

    def __init__(self, cfg: HRNetConfig) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        s = cfg.stem_channels
        self.conv1 = nn.Conv2d(3, s, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(s, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(s, s, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(s, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, s, s, cfg.stem_blocks)
        previous: tuple[int, ...] = (s * Bottleneck.expansion,)
        for i, stage in enumerate((2, 3, 4)):
            channels = cfg.stage_channels(stage)
            setattr(self, f"transition{i + 1}", self._make_transition(previous, channels))
            n = cfg.num_modules[i]
            modules = [
                HighResolutionModule(
                    channels, cfg.num_blocks[i], cfg.last_multi_scale or stage < 4 or m < n - 1
                )
                for m in range(n)
            ]
            setattr(self, f"stage{stage}", nn.Sequential(*modules))
            previous = channels
        self.num_branches = (2, 3, 4)

    @staticmethod
    def _make_transition(previous: Sequence[int], channels: Sequence[int]) -> nn.ModuleList:
        layers: list[nn.Module | None] = []
        for i, c in enumerate(channels):
            if i < len(previous):
                layers.append(
                    None
                    if c == previous[i]
                    else nn.Sequential(
                        nn.Conv2d(previous[i], c, 3, 1, 1, bias=False),
                        nn.BatchNorm2d(c),
                        nn.ReLU(inplace=True),
                    )
                )
            else:  # a new, coarser branch grown from the coarsest existing one
                steps = [_conv_bn(previous[-1], previous[-1], 2, relu=True) for _ in range(i - len(previous))]
                steps.append(_conv_bn(previous[-1], c, 2, relu=True))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """RGB / 255 -> ImageNet-normalised input (the std is in ``conv1`` after ``fold_input_std``)."""
        x = x - self.input_mean
        return x if self.input_std is None else x / self.input_std

    def fold_input_std(self) -> None:
        """Divide ``conv1``'s weights by the std per input channel and drop the graph's Div, in place.

        Exact, borders included: ``conv1`` zero-pads the normalised image, and zero divided by the std is
        still zero. The mean cannot fold the same way (the padding would have to be the mean).
        """
        if self.input_std is None:
            return
        with torch.no_grad():
            self.conv1.weight.div_(self.input_std.view(1, 3, 1, 1))
        self.input_std = None

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised image -> branch outputs at strides 4, 8, 16, 32 (or the finest only)."""
        h, w = x.shape[-2:]
        if isinstance(h, int) and isinstance(w, int) and (h % INPUT_MULTIPLE or w % INPUT_MULTIPLE):
            raise UsageError(f"HRNet input size must be a multiple of {INPUT_MULTIPLE}, got {w}x{h} (WxH)")
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for i, branches in enumerate(self.num_branches):
            transition = getattr(self, f"transition{i + 1}")
            xs = [
                ys[j] if transition[j] is None else transition[j](ys[-1] if j >= len(ys) else ys[j])
                for j in range(branches)
            ]
            ys = getattr(self, f"stage{i + 2}")(xs)
        return ys


def concat_branches(ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """HRNetV2 aggregation: every branch bilinearly upsampled to the finest and concatenated."""
    h, w = ys[0].shape[-2:]
    up = [F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False) for y in ys[1:]]
    return torch.cat([ys[0], *up], 1)


def fold_batchnorms(root: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it, in place (eval mode).

    Pairs are ``Sequential`` neighbours (conv, bn) and attribute pairs ``convN``/``bnN``, which covers
    every block in this trunk and the heads built from it. Returns ``root``.
    """
    root.eval()
    for module in list(root.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (name_c, conv), (name_b, bn) in zip(children, children[1:]):
                if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
                    module._modules[name_c] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                    module._modules[name_b] = nn.Identity()
        for name, bn in list(module._modules.items()):
            if not (isinstance(bn, nn.BatchNorm2d) and name.startswith("bn") and name[2:].isdigit()):
                continue
            conv = module._modules.get(f"conv{name[2:]}")
            if type(conv) is nn.Conv2d:
                module._modules[f"conv{name[2:]}"] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                module._modules[name] = nn.Identity()
    return root
