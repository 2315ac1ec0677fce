"""OpenVINO: ONNX -> IR export and the runtime on this machine's CPU, against ONNX Runtime and numpy."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino")

from edgepose.export.onnx2openvino import onnx_to_openvino, read_ir_metadata  # noqa: E402
from edgepose.runtimes import create_runtime  # noqa: E402
from edgepose.runtimes.base import AsyncRuntime  # noqa: E402
from edgepose.runtimes.openvino import compute_hint  # noqa: E402

from edgepose.bundle import load_bundle, write_bundle  # noqa: E402
from edgepose.errors import BundleError, ExportError, RuntimeUnavailable, UsageError  # noqa: E402
from edgepose.estimator import open_runtime  # noqa: E402
from tests.onnx_models import conv_sigmoid_model, conv_sigmoid_reference  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return conv_sigmoid_model(tmp_path_factory.mktemp("ov-tiny") / "tiny.onnx", channels=6)


def _dynamic_tiny(path, wb):
    """The tiny conv model with dynamic H/W (a 1x1 conv accepts any size)."""
    proto = onnx.load(str(path))
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    out = path.with_name("tiny_dynamic.onnx")
    onnx.save(proto, str(out))
    return out


def _baked_reshape_model(path):
    """images (1,3,8,8) -> Reshape to a constant (1,3,64): its input size is baked into the graph."""
    shape = numpy_helper.from_array(np.array([1, 3, 64], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["flat"])],
        "baked",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 3, 64])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _x(h=8, w=8, seed=1):
    return np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32)


# -- export ---------------------------------------------------------------------------------------------
def test_fp32_ir_equals_reference_and_describes_itself(tiny, tmp_path):
    path, wb = tiny
    res = onnx_to_openvino(path, tmp_path / "ir", "fp32")
    xml, weights = res["artifacts"]["ir"], res["artifacts"]["ir_weights"]
    assert xml.name == "model.xml" and weights.name == "model.bin" and weights.is_file()
    assert res["manifest"]["openvino"]["ir_precision"] == "fp32"
    assert res["manifest"]["openvino"]["compress_to_fp16"] is False
    meta = read_ir_metadata(xml)
    assert meta["precision"] == "fp32" and meta["dynamic"] == "false" and meta["version"]
    with create_runtime("openvino", xml) as rt:
        out = rt.infer({"images": _x()})
        assert rt.effective_precision() == "fp32"
    y, z = conv_sigmoid_reference(_x(), wb)
    np.testing.assert_allclose(out["y"], y, atol=1e-5)
    np.testing.assert_allclose(out["z"], z, atol=1e-6)


def test_fp16_ir_has_half_the_weights_and_stays_close(tiny, tmp_path):
    path, wb = tiny
    r32 = onnx_to_openvino(path, tmp_path / "a", "fp32")
    r16 = onnx_to_openvino(path, tmp_path / "b", "fp16")
    size32, size16 = (r["artifacts"]["ir_weights"].stat().st_size for r in (r32, r16))
    assert size16 < 0.6 * size32
    assert read_ir_metadata(r16["artifacts"]["ir"])["precision"] == "fp16"
    with create_runtime("openvino", r16["artifacts"]["ir"], precision="fp16") as rt:
        assert rt.inputs[0].dtype == np.float32  # the interface stays fp32; only the weights shrink
        out = rt.infer({"images": _x()})
        # a CPU decompresses fp16 weights and computes in f32: the runtime says so
        assert rt.effective_precision() == "fp32"
        assert rt.describe()["weights_precision"] == "fp16"
    y, _ = conv_sigmoid_reference(_x(), wb)
    assert 0 < np.abs(out["y"] - y).max() < 1e-2  # rounded weights: close, but not bit-equal


def test_dynamic_ir_runs_other_sizes(tiny, tmp_path):
    path, wb = tiny
    res = onnx_to_openvino(_dynamic_tiny(path, wb), tmp_path / "dyn", "fp32", dynamic=True)
    assert res["manifest"]["openvino"]["inputs"]["images"] == [1, 3, None, None]
    with create_runtime("openvino", res["artifacts"]["ir"]) as rt:
        assert rt.inputs[0].shape == (1, 3, None, None)
        for h, w in ((8, 8), (16, 12)):
            out = rt.infer({"images": _x(h, w)})
            np.testing.assert_allclose(out["y"], conv_sigmoid_reference(_x(h, w), wb)[0], atol=1e-5)


def test_dynamic_refused_when_the_size_is_baked_in(tmp_path):
    onnx_path = _baked_reshape_model(tmp_path / "baked.onnx")
    with pytest.raises(ExportError, match="baked into the graph"):
        onnx_to_openvino(onnx_path, tmp_path / "ir", dynamic=True)
    assert onnx_to_openvino(onnx_path, tmp_path / "ir", dynamic=False)["artifacts"]["ir"].is_file()


def test_export_refuses_bad_precisions(tiny, tmp_path):
    with pytest.raises(UsageError, match="unknown precision"):
        onnx_to_openvino(tiny[0], tmp_path, "bf16")
    with pytest.raises(ExportError, match="Q/DQ"):
        onnx_to_openvino(tiny[0], tmp_path, "int8")
    with pytest.raises(ExportError, match="does not exist"):
        onnx_to_openvino(tmp_path / "none.onnx", tmp_path)


# -- runtime ---------------------------------------------------------------------------------------------
def test_precision_is_pinned_not_left_to_the_cpu(tiny):
    """CPUs with bf16/AMX default to bf16; fp32 and fp16 bundles compile with an explicit f32 on CPU."""
    assert compute_hint("fp32", "CPU", True) == compute_hint("fp16", "CPU", True) == "f32"
    assert compute_hint("fp32", "GPU") == "f32" and compute_hint("fp16", "GPU") == "f16"
    for precision in ("fp32", "fp16"):
        with create_runtime("openvino", tiny[0], precision=precision) as rt:
            hint = rt._compiled.get_property("INFERENCE_PRECISION_HINT")
            assert hint.get_type_name() == "f32" and rt.effective_precision() == "fp32"


def test_int8_float_layers_run_bf16_only_where_the_cpu_computes_it(tiny):
    """INT8 bundles: bf16 float layers on AMX / AVX512-BF16 CPUs (what the gate measured), else f32."""
    assert compute_hint("int8", "CPU", native_bf16=True) == "bf16"
    assert compute_hint("int8", "CPU", native_bf16=False) == "f32"
    assert compute_hint("int8", "CPU", native_bf16=True, float_precision="f32") == "f32"
    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with create_runtime("openvino", tiny[0], precision="int8") as rt:
        assert rt.effective_precision() == ("bf16" if native else "fp32")
    with create_runtime("openvino", tiny[0], precision="int8", float_precision="f32") as rt:
        assert rt.effective_precision() == "fp32"
    with pytest.raises(UsageError, match="float_precision"):
        create_runtime("openvino", tiny[0], precision="int8", float_precision="fp8")


def test_devices_that_do_not_exist_are_named_with_the_alternatives(tiny):
    available = ov.Core().available_devices
    with pytest.raises(UsageError, match="no device 'tpu'"):
        create_runtime("openvino", tiny[0], device="tpu")
    for dev in ("GPU", "NPU"):
        if any(a.startswith(dev) for a in available):
            continue
        with pytest.raises(RuntimeUnavailable, match=f"'{dev}' is not available.*available devices: CPU"):
            create_runtime("openvino", tiny[0], device=dev.lower())
    # AUTO with a preference list uses what exists, with the f32 pin passed to each device
    with create_runtime("openvino", tiny[0], device="AUTO:GPU,NPU,CPU") as rt:
        assert rt.device.startswith("AUTO:") and "CPU" in rt.device and rt.effective_precision() == "fp32"
        np.testing.assert_allclose(
            rt.infer({"images": _x()})["y"], conv_sigmoid_reference(_x(), tiny[1])[0], atol=1e-5
        )


def test_options_are_applied_and_bad_ones_refused(tiny, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    with create_runtime("openvino", tiny[0], threads=1, cpu_pinning=False) as rt:
        assert rt._compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert rt._compiled.get_property("ENABLE_CPU_PINNING") is False
    monkeypatch.setenv("EDGEPOSE_THREADS", "1")  # the default of every CPU runtime in this process
    with create_runtime("openvino", tiny[0]) as rt:
        assert rt._compiled.get_property("INFERENCE_NUM_THREADS") == 1 and rt.describe()["threads"] == 1
    monkeypatch.delenv("EDGEPOSE_THREADS")
    with create_runtime("openvino", tiny[0], hint="throughput", streams=2, cache_dir=cache) as rt:
        assert rt._compiled.get_property("NUM_STREAMS") == 2
        assert rt.describe()["hint"] == "throughput"
        first = rt.infer({"images": _x()})["z"]
    assert any(cache.iterdir()), "the compiled model was not cached"
    with create_runtime("openvino", tiny[0], cache_dir=cache, streams="auto") as rt:  # loads from the cache
        np.testing.assert_array_equal(rt.infer({"images": _x()})["z"], first)
    for bad, match in (
        ({"hint": "fastest"}, "performance hint"),
        ({"streams": "many"}, "streams"),
        ({"precision": "int4"}, "unknown precision"),
        ({"batch": 4}, "no option 'batch'"),
    ):
        with pytest.raises(UsageError, match=match):
            create_runtime("openvino", tiny[0], **bad)


def test_model_files_it_cannot_run(tiny, tmp_path):
    res = onnx_to_openvino(tiny[0], tmp_path / "ir")
    res["artifacts"]["ir_weights"].unlink()
    with pytest.raises(BundleError, match="has no model.bin"):
        create_runtime("openvino", res["artifacts"]["ir"])
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    with pytest.raises(BundleError, match="runs .onnx or .xml"):
        create_runtime("openvino", other)


def test_outputs_are_copies_not_views_of_the_request(tiny):
    with create_runtime("openvino", tiny[0]) as rt:
        a = rt.infer({"images": _x(seed=1)})["y"]
        keep = a.copy()
        rt.infer({"images": _x(seed=2)})
        np.testing.assert_array_equal(a, keep)


def test_async_queue_keeps_requests_in_flight_and_matches_sync(tiny):
    with create_runtime("openvino", tiny[0], hint="throughput") as rt:
        assert isinstance(rt, AsyncRuntime)
        results: dict[int, np.ndarray] = {}
        lock = threading.Lock()

        def done(outputs, userdata):
            with lock:
                results[userdata] = outputs["z"]

        queue = rt.async_queue(done, requests=3)
        assert queue.requests == 3
        buffer = np.empty((1, 3, 8, 8), np.float32)
        for i in range(10):
            buffer[:] = _x(seed=i)  # the caller reuses one buffer: submit must have copied it
            queue.submit({"images": buffer}, i)
        queue.wait_all()
        assert sorted(results) == list(range(10))
        for i in range(10):
            np.testing.assert_allclose(results[i], rt.infer({"images": _x(seed=i)})["z"], atol=1e-6)
        with pytest.raises(UsageError, match="received shape"):
            queue.submit({"images": np.zeros((1, 3, 4, 4), np.float32)})


def test_async_callback_errors_reach_the_caller(tiny):
    with create_runtime("openvino", tiny[0]) as rt:

        def fail(outputs, userdata):
            raise ValueError(f"bad frame {userdata}")

        queue = rt.async_queue(fail, requests=2)
        queue.submit({"images": _x()}, 7)
        with pytest.raises(ValueError, match="bad frame 7"):
            queue.wait_all()
        queue.wait_all()  # reported once


# -- bundles ---------------------------------------------------------------------------------------------
def _manifest(target, runtime, precision="fp32"):
    return {
        "model": {"name": "tiny", "family": "kapao"},
        "input": {"name": "images", "shape": [1, 3, 8, 8]},
        "outputs": [{"name": "y"}, {"name": "z"}],
        "decoder": {},
        "target": target,
        "precision": precision,
        "runtime": {"name": runtime},
    }


def test_openvino_bundle_runs_and_other_targets_are_refused(tiny, tmp_path):
    res = onnx_to_openvino(tiny[0], tmp_path / "ir")
    bundle = write_bundle(tmp_path / "ov-bundle", _manifest("openvino", "openvino"), res["artifacts"])
    bundle = load_bundle(bundle.path)
    with open_runtime(bundle) as rt:
        assert rt.name == "openvino" and rt.model_path.name == "model.xml"
        np.testing.assert_allclose(
            rt.infer({"images": _x()})["y"], conv_sigmoid_reference(_x(), tiny[1])[0], atol=1e-5
        )
    with pytest.raises(BundleError, match="has no artifact that onnxruntime runs"):
        open_runtime(bundle, runtime="onnxruntime")
    # a CPU (ONNX) bundle also runs on OpenVINO
    cpu = write_bundle(tmp_path / "cpu-bundle", _manifest("cpu", "onnxruntime"), {"model": tiny[0]})
    with open_runtime(cpu, runtime="openvino") as rt:
        assert rt.model_path.suffix == ".onnx"


def test_kapao_bundle_ir_equals_onnxruntime(tmp_path):
    pytest.importorskip("torch")
    from edgepose.export.pipeline import ExportOptions, export_model

    from edgepose.preprocess import preprocess
    from edgepose.samples import sample_images

    bundle = export_model(
        ExportOptions(model="kapao-t", random_weights=True, imgsz="256", output=tmp_path / "cpu"),
        log=lambda *a: None,
    )
    onnx_path = bundle.artifact("model")
    ir32 = onnx_to_openvino(onnx_path, tmp_path / "ir32", "fp32")["artifacts"]["ir"]
    ir16 = onnx_to_openvino(onnx_path, tmp_path / "ir16", "fp16")["artifacts"]["ir"]
    assert read_ir_metadata(ir32)["model"] == "kapao-t" and read_ir_metadata(ir32)["family"] == "kapao"
    images = [preprocess(img, (256, 256))[0] for img in sample_images(limit=2)]
    with (
        create_runtime("onnxruntime", onnx_path) as ort_rt,
        create_runtime("openvino", ir32) as rt32,
        create_runtime("openvino", ir16, precision="fp16") as rt16,
    ):
        for x in images:
            ref = ort_rt.infer({"images": x})
            o32, o16 = rt32.infer({"images": x}), rt16.infer({"images": x})
            for name, r in ref.items():
                scale = float(np.abs(r).max())
                assert np.abs(o32[name] - r).max() / scale < 1e-4, name
                assert np.abs(o16[name] - r).max() / scale < 3e-2, name
