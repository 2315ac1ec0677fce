"""The training loop for KAPAO, DEKR and SAHR: fine-tune on a COCO keypoint folder or train on the
synthetic stream. What differs per family (targets, training forward, loss and its parts) comes from
``edgepose.training.families``; validation (``edgepose.training.validation``) decodes with the family's
deployment decoder.

YOLOv5/KAPAO recipe: three parameter groups (BatchNorm weights, other weights with decay, biases),
a warm-up that ramps learning rate (and SGD momentum, and gradient accumulation up to the nominal
batch), then a cosine decay to ``lrf * lr`` over all iterations, and an exponential moving average of
the weights (ModelEMA) that is what gets saved and evaluated. EMA decay and its warm-up are scaled to
the run length: the official 0.9999 / 2000 updates average over far more steps than a CPU run takes.

The official optimizer is SGD (Nesterov, momentum 0.937, lr 0.01, nominal batch 64). The default here
is AdamW (lr 0.002, no accumulation): training kapao-n from scratch on the synthetic stream at 320 px,
its mean loss after 3,200 images was 0.222 against 0.272 for SGD without accumulation and 0.320 for
SGD with the official accumulation to 64 (same data, seed and schedule).

The forward runs in bf16 under autocast where the hardware computes bf16 natively (``--amp auto``,
``edgepose.training.amp``); ``benchmarks/train_step.py`` measures what it gains (README, Performance).

Each epoch ends with an optimizer step (so no gradient is half-accumulated) and an atomic save of
``state.pt`` (model, EMA, optimizer, epoch, RNG, history); ``resume=True`` continues from it exactly.
The EMA weights go to ``last.pt`` (and ``best.pt`` when validation improves) via ``save_checkpoint``.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from edgepose.errors import CheckpointError, DataError, UsageError
from edgepose.models.checkpoints import atomic_torch_save
from edgepose.preprocess import parse_imgsz
from edgepose.skeletons import COCO_17, Skeleton, get_skeleton
from edgepose.training.amp import autocast_dtype
from edgepose.training.datasets import (
    AugmentConfig,
    CocoKeypointDataset,
    EpochSampler,
    PoseDataset,
    SyntheticStream,
    collate,
    find_coco_split,
)
from edgepose.training.families import training_family
from edgepose.training.validation import ValidationSet, evaluate_model

STATE_FILE = "state.pt"
NOMINAL_BATCH = 64
DEFAULT_LR = {"sgd": 0.01, "adamw": 0.002}


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in ``state.pt`` so a resumed run is the same run."""

    model: str
    data: str = "synthetic"
    epochs: int = 100
    imgsz: tuple[int, int] = (384, 384)
    batch: int = 16
    skeleton: str = "coco-17"
    optimizer: str = "adamw"
    lr: float = 0.002
    lrf: float = 0.2
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    nominal_batch: int = NOMINAL_BATCH
    images_per_epoch: int = 2000
    val_images: int = 100
    eval_every: int = 0
    seed: int = 0
    workers: int = 1
    arch: str | None = None
    amp: str = "auto"  # mixed precision: auto | bf16 | off (edgepose.training.amp)
    augment: dict = field(default_factory=lambda: asdict(AugmentConfig()))
    loss: dict = field(default_factory=dict)  # empty: the family's defaults, filled in when the run starts

    def to_dict(self) -> dict:
        d = asdict(self)
        d["imgsz"] = list(self.imgsz)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["imgsz"] = tuple(d["imgsz"])
        d.setdefault("amp", "off")  # runs saved before mixed precision existed trained in float32
        return cls(**d)


class ModelEMA:
    """Exponential moving average of every float in the state dict (YOLOv5's ModelEMA).

    decay(u) = decay * (1 - exp(-u / tau)) ramps up from 0 so the early, poor weights fade quickly.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0
    ) -> None:
        self.ema = deepcopy(model).eval()
        self.decay, self.tau, self.updates = float(decay), float(tau), int(updates)
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        with torch.no_grad():
            for name, v in self.ema.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(msd[name].detach(), alpha=1 - d)


def ema_schedule(total_steps: int) -> tuple[float, float]:
    """(decay, tau) for a run of ``total_steps`` optimizer steps: an averaging window of ~10% of it."""
    window = max(total_steps / 10.0, 10.0)
    return min(0.9999, 1.0 - 1.0 / window), min(2000.0, max(total_steps / 10.0, 5.0))


def param_groups(model: nn.Module) -> tuple[list, list, list]:
    """(BatchNorm weights: no decay, other weights: decay, biases: no decay) as in the official train.py."""
    bn, weights, biases = [], [], []
    for m in model.modules():
        if isinstance(getattr(m, "bias", None), nn.Parameter):
            biases.append(m.bias)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn.append(m.weight)
        elif isinstance(getattr(m, "weight", None), nn.Parameter):
            weights.append(m.weight)
    return bn, weights, biases


def make_optimizer(model: nn.Module, cfg: TrainConfig, accumulate: int) -> torch.optim.Optimizer:
    bn, weights, biases = param_groups(model)
    if cfg.optimizer == "sgd":
        decay = cfg.weight_decay * cfg.batch * accumulate / cfg.nominal_batch
        opt: torch.optim.Optimizer = torch.optim.SGD(bn, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    elif cfg.optimizer == "adamw":
        decay = 0.01
        opt = torch.optim.AdamW(bn, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=0.0)
    else:
        raise UsageError(f"unknown optimizer '{cfg.optimizer}'; use sgd or adamw")
    opt.add_param_group({"params": weights, "weight_decay": decay})
    opt.add_param_group({"params": biases, "weight_decay": 0.0})
    return opt


# ---------------------------------------------------------------------------------------------- setup
def _build_model(
    spec: str, arch: str | None, num_keypoints: int, log: Callable[[str], None]
) -> tuple[nn.Module, str]:
    """A zoo name (random init) or a checkpoint; a head for another K is re-initialised, the rest kept."""
    from edgepose.models.zoo import ZOO, build_model

    if spec in ZOO and not Path(spec).is_file():
        model = build_model(spec, num_keypoints=num_keypoints)
        if hasattr(model, "init_weights"):  # the official from-scratch initialisation (DEKR, SAHR)
            model.init_weights()
        return model, spec
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"'{spec}' is neither a zoo model ({', '.join(sorted(ZOO))}) nor a checkpoint file")
    from edgepose.models.checkpoints import load_checkpoint

    model, info = load_checkpoint(path, arch=arch)
    name = str(info.get("name") or arch or model.cfg.name)
    if model.cfg.num_keypoints != num_keypoints:
        fresh = type(model)(replace(model.cfg, num_keypoints=num_keypoints))
        own = fresh.state_dict()
        same = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
        fresh.load_state_dict(same, strict=False)
        log(
            f"{path.name} has {model.cfg.num_keypoints} keypoints, the data {num_keypoints}: "
            f"kept {len(same)}/{len(own)} tensors, new head"
        )
        model = fresh
    return model, name


def _datasets(cfg: TrainConfig, skeleton: Skeleton) -> tuple[PoseDataset, ValidationSet | None]:
    aug = AugmentConfig(**cfg.augment)
    if cfg.data == "synthetic":
        if skeleton.num_keypoints != COCO_17.num_keypoints:
            raise DataError(
                f"synthetic data has {COCO_17.num_keypoints} keypoints but skeleton '{skeleton.name}' has "
                f"{skeleton.num_keypoints}; use --skeleton coco-17"
            )
        train_set: PoseDataset = SyntheticStream(
            "train-v1", cfg.seed, cfg.imgsz, cfg.images_per_epoch, augment=True, config=aug
        )
        val = ValidationSet.synthetic("val-v1", cfg.val_images, seed=cfg.seed) if cfg.eval_every else None
        return train_set, val
    images, ann = find_coco_split(cfg.data, "train")
    train_set = CocoKeypointDataset(images, ann, cfg.imgsz, skeleton, augment=True, config=aug, seed=cfg.seed)
    val = None
    if cfg.eval_every:
        try:
            vimages, vann = find_coco_split(cfg.data, "val")
        except DataError:
            vimages = None
        if vimages is not None and vann != ann:
            vset = CocoKeypointDataset(vimages, vann, cfg.imgsz, skeleton, augment=False)
            val = ValidationSet.from_dataset(vset, cfg.val_images)
    return train_set, val


def _load_state(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist; start a run without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable edgepose training state ({e})") from e


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- the run
class Trainer:
    """One training run: everything ``train`` sets up, and the epoch loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        device: torch.device,
        state: dict | None,
        progress: bool,
        command: str,
        callback: Callable[[dict], bool | None] | None,
    ) -> None:
        self.cfg, self.out, self.device, self.command, self.callback = cfg, out, device, command, callback
        self.console, self.bar = _progress(progress)
        self.log = self.console.print if self.console is not None else (lambda *_: None)
        self.skeleton = get_skeleton(cfg.skeleton)
        self.train_set, self.val_set = _datasets(cfg, self.skeleton)
        # Data randomness is seeded per (seed, epoch, index) in the datasets; torch's global RNG only
        # initialises the weights, and is saved with the state for anything else that draws from it.
        torch.manual_seed(cfg.seed)
        net, self.arch = _build_model(cfg.model, cfg.arch, self.skeleton.num_keypoints, self.log)
        self.net = net.to(device).train()
        self.family = training_family(self.net, cfg.imgsz, cfg.loss)
        self.amp = autocast_dtype(cfg.amp, device)
        self.cfg = cfg = replace(cfg, loss=self.family.loss_dict())

        self.nb = len(self.train_set) // cfg.batch
        self.sampler = EpochSampler(len(self.train_set), self.nb * cfg.batch, cfg.seed)
        self._loader: DataLoader | None = None
        if self.nb < 1:
            raise DataError(
                f"the training data has {len(self.train_set)} images, fewer than one batch of {cfg.batch}"
            )
        self.accumulate = max(round(cfg.nominal_batch / cfg.batch), 1)
        self.total_iters = self.nb * cfg.epochs
        self.warmup = min(max(round(cfg.warmup_epochs * self.nb), 1), self.total_iters)
        self.opt = make_optimizer(self.net, cfg, self.accumulate)
        decay, tau = ema_schedule(self.total_iters // self.accumulate + cfg.epochs)
        self.ema = ModelEMA(self.net, decay, tau)

        self.start_epoch, self.history, self.wall_before, self.best_ap = 0, [], 0.0, -1.0
        if state is not None:
            self.net.load_state_dict(state["model"])
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = int(state["ema_updates"])
            self.opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            self.start_epoch = int(state["epoch"]) + 1
            self.history = list(state["history"])
            self.wall_before = float(state["wall_time"])
            self.best_ap = float(state["best_ap"])

    def loader(self) -> DataLoader:
        """The training loader, made once: its workers are spawned (fork is unsafe once torch, OpenMP
        and OpenCV thread pools exist in this process) and kept for the whole run."""
        if self._loader is None:
            c = self.cfg
            workers = max(int(c.workers), 0)
            self._loader = DataLoader(
                self.train_set,
                batch_size=c.batch,
                sampler=self.sampler,
                num_workers=workers,
                collate_fn=collate,
                drop_last=True,
                worker_init_fn=_worker_init if workers else None,
                multiprocessing_context="spawn" if workers else None,
                persistent_workers=bool(workers),
            )
        return self._loader

    def lr_factor(self, it: int) -> float:
        """Cosine from 1 to ``lrf`` over all iterations."""
        c = self.cfg
        return ((1 + math.cos(math.pi * it / self.total_iters)) / 2) * (1 - c.lrf) + c.lrf

    def schedule(self, it: int) -> int:
        """Set learning rates (and SGD momentum) for iteration ``it``; returns the accumulation count."""
        c = self.cfg
        target = c.lr * self.lr_factor(it)
        if it >= self.warmup:
            for g in self.opt.param_groups:
                g["lr"] = target
            return self.accumulate
        frac = it / self.warmup
        for j, g in enumerate(self.opt.param_groups):
            # Biases start high under SGD (warmup_bias_lr) and come down; everything else ramps up from 0.
            start = c.warmup_bias_lr if (j == 2 and c.optimizer == "sgd") else 0.0
            g["lr"] = start + frac * (target - start)
            if c.optimizer == "sgd":
                g["momentum"] = c.warmup_momentum + frac * (c.momentum - c.warmup_momentum)
        return max(1, round(1 + frac * (self.accumulate - 1)))

    def run(self) -> Path:
        c = self.cfg
        if self.start_epoch >= c.epochs:
            self.log(f"{self.out} has finished all {c.epochs} epochs; nothing to resume")
            return _final(self.out)
        if self.start_epoch:
            self.log(f"resuming {self.out} at epoch {self.start_epoch + 1}/{c.epochs}")
        precision = f"mixed precision ({str(self.amp).removeprefix('torch.')})" if self.amp else "float32"
        self.log(f"training in {precision}")
        self.out.mkdir(parents=True, exist_ok=True)
        t_run = time.time()
        with self.bar or nullcontext():
            for epoch in range(self.start_epoch, c.epochs):
                record = self.train_epoch(epoch)
                if self.val_set is not None and (epoch + 1 == c.epochs or (epoch + 1) % c.eval_every == 0):
                    record.update(evaluate_model(self.ema.ema, self.val_set, c.imgsz, self.skeleton))
                record["wall_s"] = self.wall_before + time.time() - t_run
                self.history.append(record)
                self.save(epoch, record)
                self.log(_summary(record, c.epochs, self.family.columns))
                if self.callback is not None and self.callback(record):
                    break
        return _final(self.out)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        c, nb, columns = self.cfg, self.nb, self.family.columns
        self.net.train()
        self.sampler.set_epoch(epoch)
        loader = self.loader()
        task = self.bar.add_task(f"epoch {epoch + 1}/{c.epochs}", total=nb) if self.bar else None
        sums, seen, pending, t0 = torch.zeros(len(columns)), 0, 0, time.time()
        for i, (imgs, people) in enumerate(loader):
            accumulate = self.schedule(i + nb * epoch)
            x = imgs.to(self.device).float().mul_(1.0 / 255.0)
            loss, items = self.family.step(self.net, x, people, self.amp)
            if not torch.isfinite(loss):
                raise DataError(f"the loss became {float(loss)} at epoch {epoch + 1}; try a lower --lr")
            loss.backward()
            pending += 1
            # Step when enough micro-batches have accumulated, and always at the end of the epoch, so
            # the saved state never holds half-accumulated gradients.
            if pending >= accumulate or i == nb - 1:
                nn.utils.clip_grad_norm_(self.net.parameters(), max_norm=10.0)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.ema.update(self.net)
                pending = 0
            sums += items.cpu()
            seen += imgs.shape[0]
            if self.bar is not None:
                parts = " ".join(f"{n} {v:.4f}" for n, v in zip(columns, (sums / (i + 1)).tolist()))
                self.bar.update(
                    task,
                    advance=1,
                    description=(
                        f"epoch {epoch + 1}/{c.epochs} {parts} {seen / (time.time() - t0):.1f} img/s"
                    ),
                )
        mean = (sums / nb).tolist()
        return {
            "epoch": epoch + 1,
            "lr": self.opt.param_groups[1]["lr"],
            **dict(zip(columns, mean)),
            "loss": sum(mean),
            "img_per_s": seen / (time.time() - t0),
        }

    def save(self, epoch: int, record: dict[str, Any]) -> None:
        """``last.pt`` (and ``best.pt``) with the EMA weights, then the resumable ``state.pt``."""
        extra = {
            "epoch": epoch + 1,
            "command": self.command,
            "wall_time_s": record["wall_s"],
            "train": self.cfg.to_dict(),
            "metrics": record,
        }
        _save_weights(self.out / "last.pt", self.ema.ema, self.arch, extra)
        if record.get("AP", -1.0) > self.best_ap:
            self.best_ap = float(record["AP"])
            _save_weights(self.out / "best.pt", self.ema.ema, self.arch, extra)
        state = {
            "config": self.cfg.to_dict(),
            "epoch": epoch,
            "model": self.net.state_dict(),
            "ema": self.ema.ema.state_dict(),
            "ema_updates": self.ema.updates,
            "optimizer": self.opt.state_dict(),
            "rng": torch.get_rng_state(),
            "history": self.history,
            "wall_time": record["wall_s"],
            "best_ap": self.best_ap,
        }
        atomic_torch_save(self.out / STATE_FILE, state)
        _write_history(self.out / "results.csv", self.history)


def train(
    model: str | Path,
    data: str | Path = "synthetic",
    epochs: int = 100,
    imgsz: int | str | tuple[int, int] = 384,
    batch: int = 16,
    output: str | Path = "runs/train",
    resume: bool = False,
    skeleton: str | Path = "coco-17",
    lr: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    eval_every: int = 0,
    progress: bool = True,
    *,
    arch: str | None = None,
    optimizer: str = "adamw",
    nominal_batch: int | None = None,
    images_per_epoch: int = 2000,
    val_images: int = 100,
    mosaic: float = 0.0,
    workers: int = 1,
    threads: int = 2,
    amp: str = "auto",
    command: str | None = None,
    callback: Callable[[dict], bool | None] | None = None,
) -> Path:
    """Train or fine-tune a KAPAO, DEKR or SAHR model; returns the best (else the last) EMA checkpoint.

    ``model`` is a zoo name (random init) or a checkpoint (``arch`` names a plain state dict's zoo model);
    ``data`` is ``"synthetic"`` or a folder of COCO keypoint data (its ``*val*`` annotation file, if
    any, is the validation set). ``output`` receives ``last.pt``/``best.pt`` (edgepose checkpoints),
    ``state.pt`` (what ``resume`` reads; the saved settings win over the arguments) and ``results.csv``.
    Gradients accumulate up to ``nominal_batch`` images per optimizer step; by default 64 for SGD (as
    YOLOv5) and one batch for AdamW, which learns faster on short CPU budgets (see the module docstring).
    ``callback(record)`` runs after every epoch; returning True stops the run, which can be resumed.
    """
    out = Path(output)
    state_path = out / STATE_FILE
    if resume:
        state = _load_state(state_path)
        cfg = TrainConfig.from_dict(state["config"])
    else:
        if state_path.exists():
            raise UsageError(
                f"{out} already holds a training run; pass --resume to continue it or pick another --output"
            )
        state = None
        if optimizer not in DEFAULT_LR:
            raise UsageError(f"unknown optimizer '{optimizer}'; use sgd or adamw")
        if nominal_batch is None:
            nominal_batch = NOMINAL_BATCH if optimizer == "sgd" else batch
        if int(batch) < 1 or int(epochs) < 1 or int(nominal_batch) < 1:
            raise UsageError("--batch, --epochs and the nominal batch must be at least 1")
        if str(data) != "synthetic" and not Path(data).is_dir():
            raise DataError(f"--data must be 'synthetic' or a folder of COCO keypoint data, not {data}")
        cfg = TrainConfig(
            model=str(model),
            data=str(data),
            epochs=int(epochs),
            imgsz=parse_imgsz(imgsz, 64),
            batch=int(batch),
            skeleton=str(skeleton),
            optimizer=optimizer,
            lr=float(lr) if lr else DEFAULT_LR[optimizer],
            nominal_batch=int(nominal_batch),
            images_per_epoch=int(images_per_epoch),
            val_images=int(val_images),
            eval_every=int(eval_every),
            seed=int(seed),
            workers=int(workers),
            arch=arch,
            amp=amp,
            augment=asdict(AugmentConfig(mosaic=float(mosaic))),
        )
    dev = _training_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(int(threads))
    cmd = command if command is not None else " ".join(sys.argv)
    return Trainer(cfg, out, dev, state, progress, cmd, callback).run()


def _training_device(name: str) -> torch.device:
    """The torch device for ``--device``, refused in one sentence when this machine lacks it."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"unknown --device '{name}'; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: this torch build or machine has no CUDA device; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported --device '{name}'; use cpu, cuda or cuda:N")
    return dev


def _save_weights(path: Path, model: nn.Module, arch: str, extra: dict) -> None:
    from edgepose.models.checkpoints import save_checkpoint

    save_checkpoint(path, model, arch, **extra)


def _final(out: Path) -> Path:
    best = out / "best.pt"
    return best if best.is_file() else out / "last.pt"


def _write_history(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for r in history:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, path)


def _summary(r: dict, epochs: int, columns: tuple[str, ...]) -> str:
    parts = " ".join(f"{n} {r[n]:.4f}" for n in columns)
    text = (
        f"epoch {r['epoch']}/{epochs}: loss {r['loss']:.4f} ({parts}) lr {r['lr']:.5f} "
        f"{r['img_per_s']:.1f} img/s"
    )
    if "AP" in r:
        text += f" AP {r['AP']:.3f}"
    return text


class _LineProgress:
    """The progress bar's interface as plain lines, for a console that is not a terminal (a log file,
    ``nohup``, CI), where a live bar shows nothing until the epoch ends: one line per tenth of a task."""

    def __init__(self, console: Any, steps: int = 10) -> None:
        self.console, self.steps = console, steps
        self.tasks: list[list[int]] = []  # per task: done, total, lines printed

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int) -> int:
        self.tasks.append([0, total, 0])
        return len(self.tasks) - 1

    def update(self, task: int, advance: int = 1, description: str = "") -> None:
        state = self.tasks[task]
        state[0] += advance
        done, total, printed = state
        due = self.steps if done >= total else done * self.steps // max(total, 1)
        if due > printed:
            state[2] = due
            self.console.print(f"{description} [{done}/{total}]", highlight=False, soft_wrap=True)


def _progress(enabled: bool, console: Any = None):
    """(console, progress bar) or (None, None) when progress output is off. A live bar on a terminal,
    plain lines elsewhere."""
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console(stderr=True, soft_wrap=True)
    if not console.is_terminal:
        return console, _LineProgress(console)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    return console, bar
