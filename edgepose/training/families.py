"""What the training loop needs to know about each model family, behind one small interface.

The loop (``edgepose.training.trainer``) is the same for every family: data, optimizer, warm-up, EMA,
checkpoints and validation (through the deployment decoders, which ``edgepose.families`` already
dispatches). Only three things differ, and a ``TrainingFamily`` supplies them:

- ``targets(people, batch_size)``: the collated people rows ``(M, 5 + 3K)`` (image index, box, keypoints,
  in input pixels) turned into the family's targets (KAPAO object rows, DEKR heat/offset maps, SAHR
  heatmaps and tag indices);
- ``forward(model, x)``: the training outputs (SAHR's ``forward_train``, with the scale maps that only the
  loss reads; the plain ``forward`` otherwise), under autocast when the run trains in mixed precision;
- ``criterion(outputs, targets) -> (total, parts)``: ``parts`` is a detached 1-D tensor, one entry per
  name in ``columns`` (the progress bar's and ``results.csv``'s loss columns). Each part is the weighted
  term that enters ``total``, so the parts add up to the loss (KAPAO's total is that sum times the batch,
  as in YOLOv5).

The loss settings travel as a plain dict (``TrainConfig.loss``, saved in ``state.pt``); an empty dict
means the family's defaults, and ``loss_dict()`` returns the settings actually used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from edgepose.errors import UsageError
from edgepose.training.amp import to_float
from edgepose.training.dekr_loss import DekrLoss, DekrLossConfig
from edgepose.training.dekr_loss import build_targets as dekr_targets
from edgepose.training.kapao_loss import KapaoLoss, KapaoLossConfig
from edgepose.training.kapao_targets import build_objects
from edgepose.training.sahr_loss import SahrLoss, SahrLossConfig
from edgepose.training.sahr_loss import build_targets as sahr_targets


class TrainingFamily(ABC):
    """A family's targets, training forward and loss, bound to one model's head and one input size."""

    name: ClassVar[str]
    #: loss parts, in the order ``criterion`` returns them
    columns: ClassVar[tuple[str, ...]]

    def __init__(self, model: nn.Module, input_size: tuple[int, int], loss: Mapping[str, Any]) -> None:
        self.head = model.head_spec()
        self.num_keypoints = int(self.head["num_keypoints"])
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self._setup(model, dict(loss))

    @abstractmethod
    def _setup(self, model: nn.Module, loss: dict[str, Any]) -> None:
        """Build the criterion from the loss settings (empty: the defaults for this model)."""

    @abstractmethod
    def loss_dict(self) -> dict[str, Any]:
        """The loss settings in use, as a plain dict (what ``TrainConfig.loss`` stores)."""

    @abstractmethod
    def targets(self, people: torch.Tensor, batch_size: int) -> Any:
        """Collated people rows ``(M, 5 + 3K)`` in input pixels -> this family's targets."""

    def forward(self, model: nn.Module, x: torch.Tensor) -> Any:
        return model(x)

    @abstractmethod
    def criterion(self, outputs: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (total loss, detached parts, one per ``columns`` entry)."""

    def step(
        self, model: nn.Module, x: torch.Tensor, people: torch.Tensor, amp: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets, forward and loss for one batch of inputs ``x`` (B, 3, H, W) in [0, 1]. With ``amp``
        the forward runs under autocast in that dtype; the loss always sees float32 outputs."""
        targets = self.targets(people, int(x.shape[0]))
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            outputs = self.forward(model, x)
        return self.criterion(to_float(outputs), targets)


class KapaoFamily(TrainingFamily):
    name = "kapao"
    columns = ("box", "obj", "cls", "kp")

    def _setup(self, model: nn.Module, loss: dict[str, Any]) -> None:
        self.loss = KapaoLoss(self.head, self.input_size, KapaoLossConfig(**loss))

    def loss_dict(self) -> dict[str, Any]:
        return self.loss.config.to_dict()

    def targets(self, people: torch.Tensor, batch_size: int) -> torch.Tensor:
        rows = build_objects(people.numpy(), self.num_keypoints, self.input_size, self.loss.config.kp_bbox)
        return torch.from_numpy(rows)

    def criterion(self, outputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(outputs, targets.to(outputs[0].device))


class DekrFamily(TrainingFamily):
    name = "dekr"
    columns = ("heatmap", "offset")

    def _setup(self, model: nn.Module, loss: dict[str, Any]) -> None:
        self.loss = DekrLoss(self.num_keypoints, DekrLossConfig(**loss))

    def loss_dict(self) -> dict[str, Any]:
        return self.loss.cfg.to_dict()

    def targets(self, people: torch.Tensor, batch_size: int) -> Any:
        return dekr_targets(people, batch_size, self.num_keypoints, self.input_size, self.loss.cfg)

    def criterion(self, outputs: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        heatmap, offset = outputs
        total, parts = self.loss(heatmap, offset, targets)
        c = self.loss.cfg
        return total, torch.tensor([c.heatmap_factor * parts["heatmap"], c.offset_factor * parts["offset"]])


class SahrFamily(TrainingFamily):
    name = "sahr"
    columns = ("heatmap", "scale", "pull", "push")

    def _setup(self, model: nn.Module, loss: dict[str, Any]) -> None:
        # A HigherHRNet (no scale branches) trains with plain targets unless told otherwise.
        loss.setdefault("scale_adaptive", bool(model.cfg.scale_aware))
        for key in ("strides", "heatmap_factors"):
            if key in loss:
                loss[key] = tuple(loss[key])
        self.loss = SahrLoss(self.num_keypoints, SahrLossConfig(**loss))

    def loss_dict(self) -> dict[str, Any]:
        return self.loss.cfg.to_dict()

    def targets(self, people: torch.Tensor, batch_size: int) -> Any:
        return sahr_targets(people, batch_size, self.num_keypoints, self.input_size, self.loss.cfg)

    def forward(self, model: nn.Module, x: torch.Tensor) -> Any:
        # The scale maps exist only here: the deployed forward (and the exported graph) never computes them.
        return model.forward_train(x)

    def criterion(self, outputs: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        total, p = self.loss(outputs, targets)
        return total, torch.tensor([p["heatmaps_lo"] + p["heatmaps_hi"], p["scale"], p["pull"], p["push"]])


FAMILIES: dict[str, type[TrainingFamily]] = {f.name: f for f in (KapaoFamily, DekrFamily, SahrFamily)}


def training_family(
    model: nn.Module, input_size: tuple[int, int], loss: Mapping[str, Any] | None = None
) -> TrainingFamily:
    """The adapter for ``model``'s family (its ``family`` attribute), bound to ``input_size`` (W, H)."""
    family = getattr(model, "family", None)
    if family not in FAMILIES:
        raise UsageError(
            f"edgepose cannot train the '{family}' model family; it trains {', '.join(FAMILIES)}"
        )
    return FAMILIES[family](model, input_size, loss or {})
