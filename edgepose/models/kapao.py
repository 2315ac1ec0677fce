"""KAPAO-S/M/L (and smaller siblings) built from explicit Python, keyed like the official checkpoints.

The layer list mirrors ``models/yolov5{s,m,l}6.yaml`` of github.com/wmcnally/kapao (YOLOv5 v5.0, P3-P6):
34 layers in an ``nn.ModuleList`` named ``model`` so the state-dict keys are the official
``model.{i}.…`` keys and an official state dict loads with ``strict=True``. The Detect head is
layer 33; it reads layers 23, 26, 29, 32 (P3/8, P4/16, P5/32, P6/64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from edgepose.errors import UsageError
from edgepose.models.yolo_blocks import C3, SPP, Concat, Conv, Detect, Focus

STRIDES = (8, 16, 32, 64)
OUTPUT_NAMES = ("p3", "p4", "p5", "p6")
# Default anchors of the *6 yaml files, (w, h) in pixels per level.
DEFAULT_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((19.0, 27.0), (44.0, 40.0), (38.0, 94.0)),
    ((96.0, 68.0), (86.0, 152.0), (180.0, 137.0)),
    ((140.0, 301.0), (303.0, 264.0), (238.0, 542.0)),
    ((436.0, 615.0), (739.0, 380.0), (925.0, 792.0)),
)
DETECT_INDEX = 33
# Layer index -> the earlier layers a Concat/Detect reads (all others read the previous layer).
_ROUTES: dict[int, tuple[int, ...]] = {
    14: (-1, 8),
    18: (-1, 6),
    22: (-1, 4),
    25: (-1, 20),
    28: (-1, 16),
    31: (-1, 12),
    DETECT_INDEX: (23, 26, 29, 32),
}


@dataclass(frozen=True)
class KapaoConfig:
    """Everything that shapes a KAPAO network; stored in edgepose checkpoints as a plain dict."""

    name: str = "kapao-s"
    depth_multiple: float = 0.33
    width_multiple: float = 0.50
    num_keypoints: int = 17
    anchors: tuple[tuple[tuple[float, float], ...], ...] = DEFAULT_ANCHORS

    def __post_init__(self) -> None:
        if int(self.num_keypoints) < 1:
            raise UsageError(f"num_keypoints must be at least 1, got {self.num_keypoints}")
        if not (self.depth_multiple > 0 and self.width_multiple > 0):
            raise UsageError("depth_multiple and width_multiple must be positive")
        try:
            anchors = tuple(tuple((float(w), float(h)) for w, h in level) for level in self.anchors)
        except (TypeError, ValueError) as e:
            raise UsageError("anchors must be 4 levels of (w, h) pixel pairs") from e
        if len(anchors) != len(STRIDES) or len({len(a) for a in anchors}) != 1 or not anchors[0]:
            raise UsageError(f"anchors must be {len(STRIDES)} levels with the same number of (w, h) pairs")
        if any(v <= 0 for level in anchors for pair in level for v in pair):
            raise UsageError("anchor sizes must be positive")
        object.__setattr__(self, "anchors", anchors)
        object.__setattr__(self, "num_keypoints", int(self.num_keypoints))
        object.__setattr__(self, "depth_multiple", float(self.depth_multiple))
        object.__setattr__(self, "width_multiple", float(self.width_multiple))

    @property
    def num_classes(self) -> int:
        """Class 0 is the pose object, classes 1..K the keypoint objects."""
        return 1 + self.num_keypoints

    @property
    def num_coords(self) -> int:
        return 2 * self.num_keypoints

    @property
    def num_anchors(self) -> int:
        return len(self.anchors[0])

    @property
    def num_outputs(self) -> int:
        """Channels per anchor: x, y, w, h, obj, classes, keypoint offsets."""
        return 5 + self.num_classes + self.num_coords

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["anchors"] = [[list(p) for p in level] for level in self.anchors]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KapaoConfig:
        known = {"name", "depth_multiple", "width_multiple", "num_keypoints", "anchors"}
        unknown = set(d) - known
        if unknown:
            raise UsageError(f"unknown KAPAO config field(s): {', '.join(sorted(unknown))}")
        return cls(**dict(d))


def _width(c: int, multiple: float) -> int:
    """YOLOv5 channel scaling: round up to a multiple of 8."""
    return math.ceil(c * multiple / 8) * 8


def _depth(n: int, multiple: float) -> int:
    return max(round(n * multiple), 1) if n > 1 else n


def _build_layers(cfg: KapaoConfig) -> list[nn.Module]:
    """The 34 layers of yolov5{s,m,l}6.yaml, index for index."""
    c = {k: _width(k, cfg.width_multiple) for k in (64, 128, 256, 512, 768, 1024)}

    def n(k: int) -> int:
        return _depth(k, cfg.depth_multiple)

    layers: list[nn.Module] = [
        Focus(3, c[64], 3),  # 0  P1/2
        Conv(c[64], c[128], 3, 2),  # 1  P2/4
        C3(c[128], c[128], n(3)),  # 2
        Conv(c[128], c[256], 3, 2),  # 3  P3/8
        C3(c[256], c[256], n(9)),  # 4
        Conv(c[256], c[512], 3, 2),  # 5  P4/16
        C3(c[512], c[512], n(9)),  # 6
        Conv(c[512], c[768], 3, 2),  # 7  P5/32
        C3(c[768], c[768], n(3)),  # 8
        Conv(c[768], c[1024], 3, 2),  # 9  P6/64
        SPP(c[1024], c[1024], (3, 5, 7)),  # 10
        C3(c[1024], c[1024], n(3), shortcut=False),  # 11
        Conv(c[1024], c[768], 1, 1),  # 12
        nn.Upsample(None, 2, "nearest"),  # 13
        Concat(1),  # 14 cat backbone P5
        C3(2 * c[768], c[768], n(3), shortcut=False),  # 15
        Conv(c[768], c[512], 1, 1),  # 16
        nn.Upsample(None, 2, "nearest"),  # 17
        Concat(1),  # 18 cat backbone P4
        C3(2 * c[512], c[512], n(3), shortcut=False),  # 19
        Conv(c[512], c[256], 1, 1),  # 20
        nn.Upsample(None, 2, "nearest"),  # 21
        Concat(1),  # 22 cat backbone P3
        C3(2 * c[256], c[256], n(3), shortcut=False),  # 23 P3/8 out
        Conv(c[256], c[256], 3, 2),  # 24
        Concat(1),  # 25 cat head P4
        C3(2 * c[256], c[512], n(3), shortcut=False),  # 26 P4/16 out
        Conv(c[512], c[512], 3, 2),  # 27
        Concat(1),  # 28 cat head P5
        C3(2 * c[512], c[768], n(3), shortcut=False),  # 29 P5/32 out
        Conv(c[768], c[768], 3, 2),  # 30
        Concat(1),  # 31 cat head P6
        C3(2 * c[768], c[1024], n(3), shortcut=False),  # 32 P6/64 out
    ]
    anchors = torch.tensor(cfg.anchors, dtype=torch.float32)
    head_ch = (c[256], c[512], c[768], c[1024])
    layers.append(Detect(cfg.num_classes, cfg.num_coords, anchors, STRIDES, head_ch))  # 33
    return layers


class KapaoModel(nn.Module):
    """KAPAO network: ``forward`` returns raw per-level logits, ``decode`` the official inference decode."""

    family = "kapao"

    def __init__(self, cfg: KapaoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = nn.ModuleList(_build_layers(cfg))
        self.register_buffer("stride", torch.tensor(STRIDES, dtype=torch.float32), persistent=False)
        keep = {j for src in _ROUTES.values() for j in src if j >= 0}
        self._keep = frozenset(keep)

    @property
    def detect(self) -> Detect:
        return self.model[DETECT_INDEX]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> per level (B, na, H/s, W/s, no) raw logits, no sigmoid."""
        h, w = x.shape[-2:]
        top = STRIDES[-1]
        if isinstance(h, int) and isinstance(w, int) and (h % top or w % top):
            raise UsageError(f"KAPAO input size must be a multiple of {top}, got {w}x{h} (WxH)")
        saved: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.model):
            route = _ROUTES.get(i)
            if route is not None:
                x = [x if j == -1 else saved[j] for j in route]
            x = layer(x)
            if i in self._keep:
                saved[i] = x
        return x

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw logits -> (B, sum na*H*W, no) in input pixels, cells ordered level, anchor, y, x.

        Columns: x, y, w, h (box centre/size), obj, cls (nc), keypoints (2K, interleaved x, y).
        Same maths as the official Detect inference path, keypoints included.
        """
        det = self.detect
        k = self.cfg.num_keypoints
        out = []
        for i, p in enumerate(raw):
            if det.channel_major:
                p = p.permute(0, 1, 3, 4, 2)
            b, na, ny, nx, no = p.shape
            s = self.stride[i].to(p.dtype)
            yv, xv = torch.meshgrid(
                torch.arange(ny, device=p.device, dtype=p.dtype),
                torch.arange(nx, device=p.device, dtype=p.dtype),
                indexing="ij",
            )
            grid = torch.stack((xv, yv), -1).view(1, 1, ny, nx, 2)
            anchor = det.anchor_grid[i].view(1, na, 1, 1, 2).to(p.dtype)
            y = p.sigmoid()
            xy = (y[..., 0:2] * 2 - 0.5 + grid) * s
            wh = (y[..., 2:4] * 2) ** 2 * anchor
            kp = y[..., no - 2 * k :].reshape(b, na, ny, nx, k, 2)
            kp = (kp * 4 - 2) * anchor.unsqueeze(-2) + (grid * s).unsqueeze(-2)
            dec = torch.cat((xy, wh, y[..., 4 : no - 2 * k], kp.reshape(b, na, ny, nx, 2 * k)), -1)
            out.append(dec.reshape(b, na * ny * nx, no))
        return torch.cat(out, 1)

    def head_spec(self) -> dict[str, Any]:
        """What a decoder needs to read the raw outputs (the current anchors, autoanchored or not)."""
        det = self.detect
        anchors = det.anchor_grid.detach().float().cpu().view(det.nl, det.na, 2)
        return {
            "strides": list(STRIDES),
            "anchors": [[[float(w), float(h)] for w, h in level.tolist()] for level in anchors],
            "num_keypoints": self.cfg.num_keypoints,
            "output_names": list(OUTPUT_NAMES),
            "num_outputs": det.no,
            "layout": "B,A,C,H,W" if det.channel_major else "B,A,H,W,C",
        }

    def use_export_layout(self) -> KapaoModel:
        """Return raw outputs as (B, A, C, H, W), the convolution's own order, as exported graphs do.

        The training layout (B, A, H, W, C) costs a Transpose per level in the graph: kapao-n at 512x384
        runs in 10.9 ms without them against 11.7 ms with them on ONNX Runtime. Decoders read either
        layout (``head_spec()["layout"]``).
        """
        self.detect.channel_major = True
        return self

    def fuse(self, fold_focus: bool = True) -> KapaoModel:
        """Fold every BatchNorm into its convolution, and the Focus stem into one strided convolution
        (``fold_focus``), for export; switches to eval mode."""
        self.eval()
        for m in self.modules():
            if isinstance(m, Focus) and fold_focus:
                m.fold_()
            elif isinstance(m, Conv):
                m.fuse_()
        return self


def from_config(config: Mapping[str, Any]) -> KapaoModel:
    """Family builder for the zoo and checkpoint loading (config: ``KapaoConfig.to_dict()`` fields)."""
    return KapaoModel(KapaoConfig.from_dict(config))
