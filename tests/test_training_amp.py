"""Mixed-precision training: the dtype each setting picks, float32 losses, and old runs staying float32."""

from __future__ import annotations

from collections import namedtuple

import pytest

torch = pytest.importorskip("torch")

from edgepose.errors import UsageError  # noqa: E402
from edgepose.models.zoo import build_model  # noqa: E402
from edgepose.training import amp  # noqa: E402
from edgepose.training.datasets import SyntheticStream, collate  # noqa: E402
from edgepose.training.families import training_family  # noqa: E402
from edgepose.training.trainer import TrainConfig  # noqa: E402

CPU = torch.device("cpu")


def test_settings_pick_the_autocast_dtype(monkeypatch):
    assert amp.autocast_dtype("off", CPU) is None
    assert amp.autocast_dtype("bf16", CPU) is torch.bfloat16
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert amp.autocast_dtype("auto", CPU) is torch.bfloat16
    # Without native bf16 oneDNN emulates it, slower than float32: auto stays float32.
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    assert amp.autocast_dtype("auto", CPU) is None
    with pytest.raises(UsageError, match="unknown --amp 'fp8'"):
        amp.autocast_dtype("fp8", CPU)


def test_native_bf16_follows_the_cpu_flags(monkeypatch):
    import edgepose.sysinfo as sysinfo

    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {"isa": ["AVX-512", "AMX-BF16"]})
    assert amp.cpu_has_native_bf16()
    monkeypatch.setattr(sysinfo, "cpu_info", lambda: {"isa": ["AVX2", "AVX-512"]})
    assert not amp.cpu_has_native_bf16()


def test_to_float_converts_every_floating_tensor_and_keeps_the_structure():
    Pair = namedtuple("Pair", "a b")
    half = torch.ones(2, dtype=torch.bfloat16)
    index = torch.arange(3)
    out = amp.to_float({"x": [half, (half, index)], "p": Pair(half, 3)})
    assert out["x"][0].dtype == torch.float32
    assert isinstance(out["x"][1], tuple) and out["x"][1][0].dtype == torch.float32
    assert out["x"][1][1] is index
    assert isinstance(out["p"], Pair) and out["p"].a.dtype == torch.float32 and out["p"].b == 3


@pytest.mark.parametrize("name", ["kapao-t", "dekr-t", "sahr-t"])
def test_a_bf16_step_gives_a_float32_loss_close_to_the_float32_step(name):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = build_model(name).train()
    size = (128, 128)
    family = training_family(net, size, {})
    ds = SyntheticStream("train-v1", 0, size, 4, augment=False)
    imgs, people = collate([ds[i] for i in range(2)])
    x = imgs.float() / 255
    # Same batch-norm statistics for both: compare the forward precision, not two training steps.
    net.eval()
    full, _ = family.step(net, x, people, None)
    mixed, parts = family.step(net, x, people, torch.bfloat16)
    assert mixed.dtype == torch.float32 and parts.dtype == torch.float32
    assert torch.isfinite(mixed)
    # Close to float32, but not equal: the forward really ran in bf16.
    assert float(mixed.detach()) == pytest.approx(float(full.detach()), rel=0.05)
    assert float(mixed.detach()) != float(full.detach())
    mixed.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_runs_saved_before_mixed_precision_resume_in_float32():
    saved = TrainConfig(model="kapao-t").to_dict()
    del saved["amp"]
    assert TrainConfig.from_dict(saved).amp == "off"
    assert TrainConfig(model="kapao-t").amp == "auto"
