"""SAHR export: the pruned graph (no scale branches) in standard ONNX ops, ORT parity with torch, and sahr-t
end to end through ``export_model`` + ``edgepose.load``. The sahr-w32 case exports the full 512x512 model
(~10 s of this file's ~20 s on a 2-core machine)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgepose.export.pipeline import ExportOptions, export_model  # noqa: E402
from edgepose.export.random_init import randomize_weights  # noqa: E402
from edgepose.export.torch2onnx import torch_to_onnx  # noqa: E402

import edgepose  # noqa: E402
from edgepose.bundle import load_bundle  # noqa: E402
from edgepose.decoders.sahr import PRESETS, SahrHead, decoded_difference  # noqa: E402
from edgepose.models.zoo import build_model  # noqa: E402
from edgepose.preprocess import preprocess  # noqa: E402
from edgepose.samples import sample_images  # noqa: E402
from tests.flip_checks import run_flip_both_ways  # noqa: E402

NAMES = ("heatmaps_lo", "tags", "heatmaps_hi")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ort(path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(NAMES, sess.run(None, {"images": x})))


def _depthwise_9x9(proto) -> list[str]:
    """Initializers shaped like SWAHR's scale head (K, 1, 9, 9): there must be none in a deployed graph."""
    return [i.name for i in proto.graph.initializer if list(i.dims[1:]) == [1, 9, 9]]


def test_sahr_w32_at_512_exports_pruned_and_matches_torch(tmp_path):
    path = tmp_path / "sahr-w32.onnx"
    images = sample_images(limit=1)
    model = build_model("sahr-w32")
    randomize_weights(model, images, (512, 512), seed=0, passes=1)
    torch_to_onnx(copy.deepcopy(model).fuse(), (512, 512), path, list(NAMES))
    proto = onnx.load(str(path))
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    assert not _depthwise_9x9(proto)
    groups = [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert all(g == 1 for g in groups)  # the only grouped convolutions were the scale heads' depthwise ones
    assert [o.name for o in proto.graph.output] == list(NAMES)
    x = preprocess(images[0], (512, 512))[0]
    with torch.no_grad():
        ref = dict(zip(NAMES, (t.numpy() for t in model(torch.from_numpy(x)))))
    got = _ort(path, x)
    shapes = [got[n].shape for n in NAMES]
    assert shapes == [(1, 17, 128, 128), (1, 17, 128, 128), (1, 17, 256, 256)]
    assert sum(s[1] for s in shapes) == 3 * 17  # heatmaps at two resolutions and tags: no scale channels
    rel = max(float(np.abs(got[n] - ref[n]).max() / np.abs(ref[n]).max()) for n in NAMES)
    assert rel <= 1e-3
    diff = decoded_difference(ref, got, SahrHead(17), PRESETS["realtime"])
    assert diff["decoded_cells"] >= 100 and diff["decoded_max_px"] == 0
    assert diff["decoded_tag_max_diff"] <= 1e-3 * float(np.abs(ref["tags"]).max())


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "sahr-t"
    opts = ExportOptions(model="sahr-t", random_weights=True, imgsz="256", output=out)
    return export_model(opts, log=lambda *_: None)


def test_sahr_t_end_to_end_export_bundle_and_predict(tiny_bundle):
    m = load_bundle(tiny_bundle.path).manifest
    assert m["model"]["family"] == "sahr" and m["input"]["shape"] == [1, 3, 256, 256]
    assert [o["name"] for o in m["outputs"]] == list(NAMES)
    assert "scale maps are not in the graph" in m["outputs"][2]["meaning"]
    head = m["decoder"]["head"]
    assert head["strides"] == [4, 2] and head["detection_threshold"] == 0.12
    assert set(m["decoder"]["presets"]) == {"accuracy", "realtime"}
    assert m["decoder"]["presets"]["accuracy"]["project2image"] is True
    assert m["parity"]["max_rel_diff"] <= 1e-3 and m["parity"]["decoded_max_px"] <= 0.5
    proto = onnx.load(str(tiny_bundle.artifact("model")))
    assert not _depthwise_9x9(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert "ConvTranspose" in ops  # one FP32 ONNX for every target: the official transposed form
    assert "Div" not in ops  # the input std is folded into the first convolution
    image = sample_images(limit=1)[0]
    h, w = image.shape[:2]
    for preset in ("realtime", "accuracy"):
        with edgepose.load(tiny_bundle.path, preset=preset) as est:
            poses = est(image)
        assert poses.keypoints.shape[1:] == (17, 3) and len(poses) > 0
        assert (poses.keypoints[..., 0] >= 0).all() and (poses.keypoints[..., 0] <= w).all()
        assert (poses.keypoints[..., 1] >= 0).all() and (poses.keypoints[..., 1] <= h).all()
        found = poses.keypoints[..., 2] > 0
        assert found.any(axis=1).all() and (poses.scores > 0).all()


def test_flip_test_runs_a_mirrored_second_pass_through_the_runtime(tiny_bundle):
    from edgepose.decoders import sahr

    run = run_flip_both_ways(tiny_bundle.path, sahr, SahrHead(17), _ort)
    assert run.got["tags"].shape == (*run.plain["tags"].shape, 2)  # each joint's tag is now a 2-vector
    np.testing.assert_array_equal(run.got["tags"][..., 0], run.plain["tags"])
    for name in NAMES:
        np.testing.assert_allclose(run.got[name], run.want[name], rtol=1e-5, atol=1e-5)
    assert not np.allclose(run.got["heatmaps_hi"], run.plain["heatmaps_hi"], atol=1e-3)


def test_the_same_onnx_runs_on_openvino(tiny_bundle):
    ov = pytest.importorskip("openvino")
    path = tiny_bundle.artifact("model")
    x = preprocess(sample_images(limit=1)[0], (256, 256))[0]
    want = _ort(path, x)
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", config)
    result = compiled({0: x})
    for i, name in enumerate(NAMES):
        assert float(np.abs(result[i] - want[name]).max() / np.abs(want[name]).max()) <= 1e-4


def test_cpu_int8_quantizes_the_deconvolution_in_its_subpixel_form(tmp_path):
    """ONNX Runtime has no INT8 ConvTranspose: its quantizer gets the exact sub-pixel form, whose
    convolution weights are quantized like any other, and the manifest says so."""
    opts = ExportOptions(
        model="sahr-t",
        random_weights=True,
        imgsz="256",
        precision="int8",
        calib="synthetic",
        calib_size=8,
        output=tmp_path / "int8",
    )
    bundle = export_model(opts, log=lambda *_: None)
    proto = onnx.load(str(bundle.artifact("model")))
    ops = {n.op_type for n in proto.graph.node}
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops
    subpixel = [n for n in proto.graph.node if n.op_type == "Conv" and n.name.endswith("_subpixel")]
    assert len(subpixel) == 1
    weight = subpixel[0].input[1]
    dequantized = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert weight in dequantized, "the sub-pixel convolution's weights are quantized"
    assert bundle.manifest["calibration"]["quantizer"]["subpixel_deconv"] is True
