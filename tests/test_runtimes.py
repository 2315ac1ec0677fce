"""One conformance suite for every runtime that imports here, on a tiny model with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from edgepose.runtimes import RUNTIMES, available_runtimes, create_runtime, get_runtime

from edgepose.errors import BundleError, RuntimeUnavailable, UsageError
from tests.onnx_models import conv_sigmoid_model, conv_sigmoid_reference

# runtimes that execute a plain ONNX file directly
ONNX_RUNTIMES = [r for r in ("onnxruntime", "openvino") if r in available_runtimes() and r in RUNTIMES]


def _runnable(name: str) -> bool:
    try:
        get_runtime(name)
        return True
    except RuntimeUnavailable:
        return False


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return conv_sigmoid_model(path)


@pytest.mark.parametrize("name", [r for r in ONNX_RUNTIMES if _runnable(r)])
class TestConformance:
    def test_metadata(self, name, tiny):
        with create_runtime(name, tiny[0]) as rt:
            assert [s.name for s in rt.inputs] == ["images"]
            assert rt.inputs[0].shape == (1, 3, 8, 8) and rt.inputs[0].dtype == np.float32
            assert [s.name for s in rt.outputs] == ["y", "z"]
            assert rt.describe()["runtime"] == name and rt.version()

    def test_infer_matches_reference(self, name, tiny):
        x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
        with create_runtime(name, tiny[0]) as rt:
            out = rt.infer({"images": x})
        y, z = conv_sigmoid_reference(x, tiny[1])
        np.testing.assert_allclose(out["y"], y, atol=1e-5)
        np.testing.assert_allclose(out["z"], z, atol=1e-6)

    def test_wrong_feeds_are_refused_with_one_message_shape(self, name, tiny):
        with create_runtime(name, tiny[0]) as rt:
            with pytest.raises(UsageError, match=r"Input tensor: images \| received shape"):
                rt.infer({"images": np.zeros((1, 3, 4, 4), np.float32)})
            with pytest.raises(UsageError, match="received dtype"):
                rt.infer({"images": np.zeros((1, 3, 8, 8), np.float64)})
            with pytest.raises(UsageError, match="expected"):
                rt.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})

    def test_closed_runtime_refuses(self, name, tiny):
        rt = create_runtime(name, tiny[0])
        rt.close()
        rt.close()  # idempotent
        with pytest.raises(UsageError, match="closed"):
            rt.infer({"images": np.zeros((1, 3, 8, 8), np.float32)})

    def test_missing_and_corrupt_model_files(self, name, tmp_path):
        with pytest.raises(BundleError):
            create_runtime(name, tmp_path / "nope.onnx")
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"\x00garbage")
        with pytest.raises(BundleError):
            create_runtime(name, bad)


def test_unknown_runtime_and_device():
    with pytest.raises(UsageError, match="unknown runtime"):
        get_runtime("nosuch")


def test_onnxruntime_options(tiny):
    with create_runtime("onnxruntime", tiny[0], threads=1, optimization="basic") as rt:
        assert rt.providers() == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="optimisation level"):
        create_runtime("onnxruntime", tiny[0], optimization="max")
    with pytest.raises(UsageError, match="no device"):
        create_runtime("onnxruntime", tiny[0], device="tpu")


def test_cpu_threads_come_from_the_option_then_the_environment(tiny, monkeypatch):
    from edgepose.runtimes.base import THREADS_ENV, cpu_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert cpu_threads({}) == 0 and cpu_threads({"threads": 3}) == 3
    monkeypatch.setenv(THREADS_ENV, "2")
    assert cpu_threads({}) == 2 and cpu_threads({"threads": 0}) == 2 and cpu_threads({"threads": 1}) == 1
    with create_runtime("onnxruntime", tiny[0]) as rt:
        assert rt._session.get_session_options().intra_op_num_threads == 2 and rt.describe()["threads"] == 2
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(UsageError, match="EDGEPOSE_THREADS must be a whole number"):
        create_runtime("onnxruntime", tiny[0])
    with pytest.raises(UsageError, match="threads option must be a whole number"):
        cpu_threads({"threads": -2})


def test_missing_gpu_provider_names_the_package(tiny):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu with CUDA: nothing to refuse")
    with pytest.raises(RuntimeUnavailable, match="onnxruntime-gpu"):
        create_runtime("onnxruntime", tiny[0], device="cuda")
