"""HigherHRNet (Cheng et al., CVPR 2020) and SWAHR (Luo et al., CVPR 2021) on the shared HRNet trunk.

Mirrors ``lib/models/pose_higher_hrnet.py`` of github.com/HRNet/HigherHRNet-Human-Pose-Estimation and of
github.com/greatlog/SWAHR-HumanPose. The trunk's last module keeps only its stride-4 branch; then

- ``final_layers.0`` (a convolution) gives K heatmaps then K associative-embedding tags at stride 4;
- ``deconv_layers.0`` upsamples ``cat(features, heatmaps, tags)`` to stride 2 (a transposed convolution
  + BatchNorm + ReLU, then basic blocks) and ``final_layers.1`` gives K heatmaps there;
- SWAHR only: ``conv_scale_layers.{0,1}`` (1x1 convolution, BatchNorm, ReLU, 9x9 depthwise convolution)
  predict a per-joint scale map at each resolution from the same features. The official forward puts it
  *first*: stride-4 output ``[scale K, heatmap K, tag K]``, stride-2 output ``[scale K, heatmap K]``.
  The deconvolution's concat takes ``output[:, K:]``, i.e. heatmaps and tags only.

Attribute names are the official ones, so both repositories' state dicts load with ``strict=True``.

The scale maps only shape the training target (``edgepose.training.sahr_loss``); nothing at test time
reads them and nothing in the network consumes them, so inference never computes them: ``forward``
returns the three deployed outputs ``(heatmaps_lo, tags, heatmaps_hi)`` and ``fuse`` deletes the scale
branches outright (the export is the pruned graph). ``forward_train`` returns the official per-stage
tensors, scale channels included, for the losses.

The official pipeline normalises RGB with ImageNet mean/std; here that is the graph's first op, so a
runtime feeds RGB / 255 as for every family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from edgepose.errors import UsageError
from edgepose.models.hrnet import (
    BN_MOMENTUM,
    INPUT_MULTIPLE,
    BasicBlock,
    HRNet,
    PoseTrunkConfig,
    fold_batchnorms,
)

OUTPUT_NAMES = ("heatmaps_lo", "tags", "heatmaps_hi")
#: input pixels per output pixel of (heatmaps_lo and tags, heatmaps_hi)
OUTPUT_STRIDES = (4, 2)
SCALE_KERNEL = 9


@dataclass(frozen=True)
class SahrConfig(PoseTrunkConfig):
    """Everything that shapes the network; stored in edgepose checkpoints as a plain dict.

    Defaults are SWAHR's W32 COCO experiment (``w32_512_adam_lr1e-3.yaml``). ``scale_aware=False`` is
    HigherHRNet (no scale branches). ``detection_threshold`` is the experiment's TEST.DETECTION_THRESHOLD,
    which the decoder's accuracy preset uses (SWAHR W32: 0.12; SWAHR W48 and HigherHRNet: 0.1).
    """

    LABEL: ClassVar[str] = "SAHR"
    LAST_MULTI_SCALE: ClassVar[bool] = False

    name: str = "sahr-w32"
    deconv_channels: int = 32
    deconv_blocks: int = 4
    deconv_kernel: int = 4
    final_kernel: int = 1
    scale_aware: bool = True
    detection_threshold: float = 0.12

    def __post_init__(self) -> None:
        self.require_positive_ints("deconv_channels")
        if not isinstance(self.deconv_blocks, int) or self.deconv_blocks < 0:
            raise UsageError(f"SAHR deconv_blocks must be an integer >= 0, got {self.deconv_blocks!r}")
        if self.deconv_kernel not in (2, 3, 4):
            raise UsageError(f"SAHR deconv_kernel must be 2, 3 or 4, got {self.deconv_kernel!r}")
        if self.final_kernel not in (1, 3):
            raise UsageError(f"SAHR final_kernel must be 1 or 3, got {self.final_kernel!r}")
        thr = float(self.detection_threshold)
        if not 0.0 <= thr <= 1.0:
            raise UsageError(f"SAHR detection_threshold must be between 0 and 1, got {thr}")
        super().__post_init__()
        object.__setattr__(self, "scale_aware", bool(self.scale_aware))
        object.__setattr__(self, "detection_threshold", thr)


def _deconv_padding(kernel: int) -> tuple[int, int]:
    """(padding, output_padding) that make a stride-2 transposed convolution exactly double the size."""
    return {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]


def _scale_branch(cin: int, k: int) -> nn.Sequential:
    """SWAHR's scale head: 1x1 conv (bias) + BN + ReLU + 9x9 depthwise conv (bias); keys .0/.1/.3."""
    return nn.Sequential(
        nn.Conv2d(cin, k, 1, 1, 0),
        nn.BatchNorm2d(k),
        nn.ReLU(True),
        nn.Conv2d(k, k, SCALE_KERNEL, 1, SCALE_KERNEL // 2, groups=k),
    )


def fold_deconv_bn(deconv: nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.ConvTranspose2d:
    """A transposed convolution equal to ``bn(deconv(x))`` in eval mode (weights are (in, out, k, k))."""
    fused = nn.ConvTranspose2d(
        deconv.in_channels,
        deconv.out_channels,
        deconv.kernel_size,
        deconv.stride,
        deconv.padding,
        deconv.output_padding,
        deconv.groups,
        bias=True,
        dilation=deconv.dilation,
    ).to(deconv.weight.device)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(deconv.weight * scale.view(1, -1, 1, 1))
        bias = deconv.bias if deconv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


class SahrModel(HRNet):
    """HigherHRNet / SWAHR: ``forward`` maps RGB/255 to raw (heatmaps_lo, tags, heatmaps_hi)."""

    family = "sahr"

    def __init__(self, cfg: SahrConfig) -> None:
        super().__init__(cfg.hrnet())
        self.cfg = cfg
        k, w, dc = cfg.num_keypoints, cfg.width, cfg.deconv_channels
        pad = 1 if cfg.final_kernel == 3 else 0
        self.final_layers = nn.ModuleList(
            [nn.Conv2d(w, 2 * k, cfg.final_kernel, 1, pad), nn.Conv2d(dc, k, cfg.final_kernel, 1, pad)]
        )
        padding, output_padding = _deconv_padding(cfg.deconv_kernel)
        stage = [
            nn.Sequential(
                nn.ConvTranspose2d(
                    w + 2 * k, dc, cfg.deconv_kernel, 2, padding, output_padding=output_padding, bias=False
                ),
                nn.BatchNorm2d(dc, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            )
        ]
        stage += [nn.Sequential(BasicBlock(dc, dc)) for _ in range(cfg.deconv_blocks)]
        self.deconv_layers = nn.ModuleList([nn.Sequential(*stage)])
        if cfg.scale_aware:
            self.conv_scale_layers = nn.ModuleList([_scale_branch(w, k), _scale_branch(dc, k)])
        #: True once ``fuse`` has folded the BatchNorms and dropped the scale branches (export form)
        self.deploy = False

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (stride-4 features, stride-4 [heatmaps, tags], stride-2 features, stride-2 heatmaps)."""
        x = self.normalise(x)
        lo_feat = self.features(x)[0]
        lo = self.final_layers[0](lo_feat)
        hi_feat = self.deconv_layers[0](torch.cat([lo_feat, lo], 1))
        return lo_feat, lo, hi_feat, self.final_layers[1](hi_feat)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> heatmaps (B, K, H/4, W/4), tags (B, K, H/4, W/4), heatmaps
        (B, K, H/2, W/2); raw, as the official network (no sigmoid). The scale maps are not computed."""
        _, lo, _, hi = self._heads(x)
        k = self.cfg.num_keypoints
        return lo[:, :k], lo[:, k:], hi

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official per-stage outputs: (B, 3K, H/4, W/4) ``[scale, heatmaps, tags]`` and (B, 2K, H/2, W/2)
        ``[scale, heatmaps]`` (HigherHRNet: ``[heatmaps, tags]`` and ``[heatmaps]``)."""
        if self.deploy:
            raise UsageError("this SAHR model was fused for deployment; train the unfused model")
        lo_feat, lo, hi_feat, hi = self._heads(x)
        if not self.cfg.scale_aware:
            return lo, hi
        scale_lo = self.conv_scale_layers[0](lo_feat)
        scale_hi = self.conv_scale_layers[1](hi_feat)
        return torch.cat([scale_lo, lo], 1), torch.cat([scale_hi, hi], 1)

    def init_weights(self) -> SahrModel:
        """The official initialisation for training from scratch: (transposed) convolutions ~ N(0, 0.001),
        zero biases, BatchNorm 1/0, and SWAHR's last scale convolutions all zero (scale 0: plain targets)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.scale_aware and not self.deploy:
            for branch in self.conv_scale_layers:
                nn.init.zeros_(branch[-1].weight)
                nn.init.zeros_(branch[-1].bias)
        return self

    def head_spec(self) -> dict[str, Any]:
        """What the decoder needs (``edgepose.decoders.sahr.SahrHead.from_dict`` reads it)."""
        return {
            "num_keypoints": self.cfg.num_keypoints,
            "output_names": list(OUTPUT_NAMES),
            "strides": list(OUTPUT_STRIDES),
            "input_multiple": INPUT_MULTIPLE,
            "detection_threshold": self.cfg.detection_threshold,
            "input_normalisation": "in-graph ImageNet mean/std on RGB/255",
        }

    def fuse(self) -> SahrModel:
        """The deployment form, in place (eval mode; irreversible): BatchNorms folded (the deconvolution's
        too) and the training-only scale branches deleted, so the exported graph never computes them."""
        self.eval()
        if self.cfg.scale_aware and hasattr(self, "conv_scale_layers"):
            del self.conv_scale_layers
        fold_batchnorms(self)
        self.fold_input_std()
        first = self.deconv_layers[0][0]
        if isinstance(first[1], nn.BatchNorm2d):
            first[0] = fold_deconv_bn(first[0], first[1])
            first[1] = nn.Identity()
        self.deploy = True
        return self


def from_config(config: Mapping[str, Any]) -> SahrModel:
    """Family builder for the zoo and checkpoint loading (config: ``SahrConfig.to_dict()`` fields)."""
    return SahrModel(SahrConfig.from_dict(config))
