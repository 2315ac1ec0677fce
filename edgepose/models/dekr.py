"""DEKR (Geng et al., CVPR 2021): HRNet + a heatmap head + adaptive per-keypoint offset regression.

Mirrors ``lib/models/hrnet_dekr.py`` of github.com/HRNet/DEKR: the HRNet trunk's four branches are
upsampled and concatenated at stride 4; ``transition_heatmap`` + ``head_heatmap`` (a basic block and a
1x1 convolution) give K + 1 heatmaps (the K keypoints, then the person centre); ``transition_offset``
splits the features into K groups of ``offset_channels`` (15) and each keypoint's branch
(``offset_feature_layers.{k}``: two adaptive blocks, ``offset_final_layer.{k}``: a 1x1 convolution)
regresses its 2-channel offset. Attribute names are the official ones, so official state dicts load with
``strict=True`` and no key map.

Outputs are raw, as the official ``forward`` (no sigmoid: the heatmaps are trained by MSE against
Gaussians): ``heatmap`` (B, K + 1, H/4, W/4) and ``offset`` (B, 2K, H/4, W/4), channel ``2k`` the x and
``2k + 1`` the y of ``centre - keypoint`` in output pixels (the official decode is
``keypoint = 4 * (pixel - offset)``).

The official pipeline normalises the RGB input with ImageNet mean/std; here that is the graph's first
op (a Sub and a Div on constants), so a runtime feeds RGB / 255 exactly as for every other family.
``fuse`` folds BatchNorms and turns the K offset branches into three grouped ops per block (see
``adaptive_conv.GroupedAdaptBlock``) for export; the unfused model stays the reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from edgepose.errors import UsageError
from edgepose.models.adaptive_conv import AdaptBlock, GroupedAdaptBlock
from edgepose.models.hrnet import (
    BN_MOMENTUM,
    INPUT_MULTIPLE,
    BasicBlock,
    HRNet,
    PoseTrunkConfig,
    concat_branches,
    fold_batchnorms,
    make_layer,
)

OUTPUT_NAMES = ("heatmap", "offset")
OUTPUT_STRIDE = 4


@dataclass(frozen=True)
class DekrConfig(PoseTrunkConfig):
    """Everything that shapes a DEKR network; stored in edgepose checkpoints as a plain dict.

    Defaults are the official W32 COCO experiment (``w32_4x_reg03_bs10_512_adam_lr1e-3_coco_x140.yaml``).
    """

    LABEL: ClassVar[str] = "DEKR"

    name: str = "dekr-w32"
    heatmap_channels: int = 32
    heatmap_blocks: int = 1
    offset_channels: int = 15
    offset_blocks: int = 2
    final_kernel: int = 1

    def __post_init__(self) -> None:
        self.require_positive_ints("heatmap_channels", "heatmap_blocks", "offset_channels", "offset_blocks")
        if self.final_kernel not in (1, 3):
            raise UsageError(f"DEKR final_kernel must be 1 or 3, got {self.final_kernel!r}")
        super().__post_init__()


class GroupedOffsetHead(nn.Module):
    """The K offset branches of a fused DEKR as grouped ops: what the exported graph runs."""

    def __init__(self, feature_layers: nn.ModuleList, final_layers: nn.ModuleList) -> None:
        super().__init__()
        depth = len(feature_layers[0])
        self.blocks = nn.ModuleList(
            GroupedAdaptBlock([branch[i] for branch in feature_layers]) for i in range(depth)
        )
        first = final_layers[0]
        k = len(final_layers)
        self.final = nn.Conv2d(
            k * first.in_channels, k * first.out_channels, first.kernel_size, 1, first.padding, groups=k
        )
        with torch.no_grad():
            self.final.weight.copy_(torch.cat([f.weight for f in final_layers]))
            self.final.bias.copy_(torch.cat([f.bias for f in final_layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.final(x)


class DekrModel(HRNet):
    """DEKR network: ``forward`` maps an RGB/255 image to raw (heatmap, offset) at stride 4."""

    family = "dekr"

    def __init__(self, cfg: DekrConfig) -> None:
        super().__init__(cfg.hrnet())
        self.cfg = cfg
        k, c_off = cfg.num_keypoints, cfg.offset_channels
        inp = sum(cfg.hrnet().out_channels)
        self.transition_heatmap = self._transition_for_head(inp, cfg.heatmap_channels)
        self.transition_offset = self._transition_for_head(inp, k * c_off)
        pad = 1 if cfg.final_kernel == 3 else 0
        self.head_heatmap = nn.ModuleList(
            [
                make_layer(BasicBlock, cfg.heatmap_channels, cfg.heatmap_channels, cfg.heatmap_blocks),
                nn.Conv2d(cfg.heatmap_channels, k + 1, cfg.final_kernel, 1, pad),
            ]
        )
        self.offset_feature_layers = nn.ModuleList(
            nn.Sequential(*(AdaptBlock(c_off, c_off) for _ in range(cfg.offset_blocks))) for _ in range(k)
        )
        self.offset_final_layer = nn.ModuleList(
            nn.Conv2d(c_off, 2, cfg.final_kernel, 1, pad) for _ in range(k)
        )
        self.grouped_offset: GroupedOffsetHead | None = None

    @staticmethod
    def _transition_for_head(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout, momentum=BN_MOMENTUM),
            nn.ReLU(True),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> (heatmap (B, K+1, H/4, W/4), offset (B, 2K, H/4, W/4)), raw."""
        x = self.normalise(x)
        feats = concat_branches(self.features(x))
        heatmap = self.head_heatmap[1](self.head_heatmap[0](self.transition_heatmap(feats)))
        off = self.transition_offset(feats)
        if self.grouped_offset is not None:
            return heatmap, self.grouped_offset(off)
        c = self.cfg.offset_channels
        parts = [
            final(layers(off[:, j * c : (j + 1) * c]))
            for j, (layers, final) in enumerate(zip(self.offset_feature_layers, self.offset_final_layer))
        ]
        return heatmap, torch.cat(parts, 1)

    def init_weights(self) -> DekrModel:
        """The official initialisation for training from scratch: convolutions ~ N(0, 0.001), zero biases,
        BatchNorm 1/0, and zero transform/translation convolutions (M = 0, t = 0: every tap of an adaptive
        block starts on the pixel itself)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, AdaptBlock):
                for conv in (m.transform_matrix_conv, m.translation_conv):
                    nn.init.zeros_(conv.weight)
                    nn.init.zeros_(conv.bias)
        return self

    def head_spec(self) -> dict[str, Any]:
        """What the decoder needs (``edgepose.decoders.dekr.DekrHead.from_dict`` reads it)."""
        return {
            "num_keypoints": self.cfg.num_keypoints,
            "output_names": list(OUTPUT_NAMES),
            "stride": OUTPUT_STRIDE,
            "input_multiple": INPUT_MULTIPLE,
            "input_normalisation": "in-graph ImageNet mean/std on RGB/255",
        }

    def fuse(self) -> DekrModel:
        """Fold BatchNorms and group the offset branches for export (eval mode; irreversible)."""
        self.eval()
        if self.grouped_offset is None:
            self.grouped_offset = GroupedOffsetHead(self.offset_feature_layers, self.offset_final_layer)
            del self.offset_feature_layers
            del self.offset_final_layer
        fold_batchnorms(self)
        self.fold_input_std()
        return self


def from_config(config: Mapping[str, Any]) -> DekrModel:
    """Family builder for the zoo and checkpoint loading (config: ``DekrConfig.to_dict()`` fields)."""
    return DekrModel(DekrConfig.from_dict(config))
