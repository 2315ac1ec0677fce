"""INT8 export for every target: the artifacts are really quantized where they should be and float where
they must stay float, the manifest records how, the accuracy gate acts, and bad input writes nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from edgepose.calibration.data import calibration_tensors, load_calibration
from edgepose.calibration.graph import float_stem, float_tail
from edgepose.calibration.quantize import Int8Request, quantize_for_target
from edgepose.calibration.validation import ValidationSet
from edgepose.export.pipeline import ExportOptions, calibration_methods, export_model

import edgepose
from edgepose.bundle import load_bundle
from edgepose.errors import ExportError
from edgepose.models.zoo import ZOO
from edgepose.samples import sample_image_paths

pytest.importorskip("torch")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepose.cli", *args], capture_output=True, text=True, timeout=600
    )


def _export(out: Path, target: str, **kw) -> Path:
    opts = ExportOptions(
        model=kw.pop("model", "kapao-t"),
        random_weights=True,
        imgsz=kw.pop("imgsz", "256"),
        output=out,
        target=target,
        precision="int8",
        calib=kw.pop("calib", "synthetic"),
        calib_size=kw.pop("calib_size", 12),
        **kw,
    )
    return export_model(opts, log=lambda m: None).path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8")
    return {t: _export(root / t, t) for t in ("cpu", "openvino", "jetson")}


def _weight_quantized(model: onnx.ModelProto) -> dict[str, bool]:
    """Conv name -> whether its weight comes through a DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Conv":
            p = producer.get(n.input[1])
            out[n.name] = p is not None and p.op_type == "DequantizeLinear"
    return out


def test_cpu_int8_is_qdq_with_a_float_tail_and_records_its_calibration(bundles):
    b = load_bundle(bundles["cpu"])
    m = b.manifest
    assert m["precision"] == "int8" and m["runtime"]["name"] == "onnxruntime"
    model = onnx.load(str(b.artifact("model")))
    quantized = _weight_quantized(model)
    tail = [n for n in float_tail(model) if n in quantized]
    assert len(tail) == 4  # one head convolution per output level (P3..P6) ...
    assert not any(quantized[n] for n in tail)  # ... all in float
    stem = float_stem(model)  # the convolution on the image's 3 channels and its SiLU, in float too
    assert [n for n in stem if n in quantized] == ["/model.0/conv/conv/Conv"]
    assert not quantized["/model.0/conv/conv/Conv"]
    assert sum(quantized.values()) == len(quantized) - len(tail) - 1  # every other convolution is INT8
    cal = m["calibration"]
    assert cal["quantizer"]["float_stem"] is True and cal["quantizer"]["float_stem_layers"] == stem
    assert cal["kind"] == "synthetic" and cal["count"] == 12 and cal["held_back"] > 0
    assert len(cal["sha256"]) == 64 and cal["method"] == "meanminmax" and cal["instruction_set"]
    assert cal["quantizer"]["per_channel"] is True and cal["quantizer"]["format"] == "QDQ"
    for key in ("matched", "mean_oks", "mean_keypoint_px", "mean_score_drift"):
        assert key in cal["agreement"]
    assert cal["gate"]["enabled"] is False and "agreement" in cal["gate"]["note"]
    with edgepose.load(bundles["cpu"], preset="accuracy") as est:
        poses = est.predict_file(sample_image_paths()[0])
    assert poses.keypoints.shape[1:] == (17, 3)


def test_openvino_int8_ir_has_fake_quantize_except_the_tail(bundles):
    import openvino as ov

    b = load_bundle(bundles["openvino"])
    assert b.manifest["runtime"]["name"] == "openvino" and b.precision == "int8"
    model = ov.Core().read_model(str(b.artifact("ir")))
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops.values()) > 20
    # A head convolution's weights come straight from a constant (no FakeQuantize): it runs in float.
    head = ops["/model.33/m.0/Conv/WithoutBiases"]
    weight_src = head.input_value(1).get_node()
    while weight_src.get_type_name() in ("Convert", "Reshape"):
        weight_src = weight_src.input_value(0).get_node()
    assert weight_src.get_type_name() == "Constant"
    with edgepose.load(bundles["openvino"], preset="accuracy") as est:
        assert est.runtime.name == "openvino"
        est.predict_file(sample_image_paths()[0])
        # the manifest says what the export CPU ran the float layers in: what the gate measured
        assert b.manifest["openvino"]["cpu_float_layer_precision"] == est.runtime.effective_precision()


@pytest.mark.parametrize("target", ["cpu", "jetson"])
def test_dekr_int8_keeps_its_sampling_grids_and_their_convolutions_in_float(target, tmp_path):
    """The adaptive convolution's grid carries coordinates: no Q/DQ between GridSample and the convolution
    that predicts the displacements, and that convolution's weights stay float. ONNX Runtime's recipe
    quantizes the features GridSample reads (they feed that convolution too); TensorRT's quantizes only
    convolution inputs. The samples stay float up to the MatMul that applies the kernel: a Q/DQ pair
    there, on the largest tensor in the graph, only cost time (no INT8 GridSample or batched MatMul)."""
    out = _export(tmp_path / target, target, model="dekr-t", imgsz="128", calib_size=8)
    model = onnx.load(str(out / "model.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = {i: n for n in model.graph.node for i in n.input}
    quantized = _weight_quantized(model)
    grids = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grids) == 2  # dekr-t: two adaptive blocks, all branches grouped
    for grid_sample in grids:
        if target == "cpu":
            assert producer[grid_sample.input[0]].op_type == "DequantizeLinear"  # the features: INT8
        path, node = [], producer[grid_sample.input[1]]
        while node.op_type != "Conv":
            path.append(node.op_type)
            data = [i for i in node.input if i in producer]
            node = producer[data[-1] if node.op_type == "MatMul" else data[0]]  # MatMul: the affine side
        assert "DequantizeLinear" not in path and "QuantizeLinear" not in path, path
        assert "MatMul" in path and quantized[node.name] is False
        after, node = [], consumers[grid_sample.output[0]]
        while node.op_type != "MatMul":
            after.append(node.op_type)
            node = consumers[node.output[0]]
        assert after == ["Reshape"], after  # straight from the samples to the kernel, in float
        kernel_inputs = [producer[i].op_type for i in node.input if i in producer]
        assert "DequantizeLinear" not in kernel_inputs, kernel_inputs


def test_jetson_int8_is_a_symmetric_qdq_onnx_checked_in_onnxruntime(bundles):
    b = load_bundle(bundles["jetson"])
    model = onnx.load(str(b.artifact("model")))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(inits[z].dtype == np.int8 and not inits[z].any() for z in zero_points)
    producer = {o: n for n in model.graph.node for o in n.output}
    adds = [n for n in model.graph.node if n.op_type == "Add" and n.name.startswith("/model")]
    assert any(
        all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
        for n in adds
    )  # residual adds run between Q/DQ pairs
    cal = b.manifest["calibration"]
    assert cal["quantizer"]["activations"] == "s8" and cal["quantizer"]["symmetric_activations"] is True
    assert "build" in b.manifest["tensorrt"] and b.manifest["precision"] == "int8"
    # TensorRT quantizes the stem too: ONNX Runtime's recipe is the one that keeps it in float
    assert _weight_quantized(model)["/model.0/conv/conv/Conv"] and "float_stem_layers" not in cal["quantizer"]


def _self_labelled_validation(fp32_bundle: Path, folder: Path) -> ValidationSet:
    """Validation data labelled by the FP32 model itself (its 3 best poses per image): FP32 AP is near 1,
    so any INT8 damage shows as an AP drop the gate must act on."""
    images, anns = [], []
    (folder / "images").mkdir(parents=True)
    with edgepose.load(fp32_bundle, preset="accuracy") as est:
        for i, path in enumerate(sample_image_paths()):
            name = f"{path.stem}.png"  # lossless: the gate must see the very pixels that were labelled
            img = cv2.imread(str(path))
            cv2.imwrite(str(folder / "images" / name), img)
            images.append({"id": i, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
            poses = est(img)
            for j in np.argsort(-poses.scores)[:3]:
                kp = poses.keypoints[j].copy()
                kp[:, 2] = 2
                x1, y1, x2, y2 = (float(v) for v in poses.boxes[j])
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i,
                        "category_id": 1,
                        "iscrowd": 0,
                        "keypoints": kp.reshape(-1).tolist(),
                        "num_keypoints": 17,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": max((x2 - x1) * (y2 - y1), 1.0),
                    }
                )
    cats = [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)]}]
    data = {"images": images, "annotations": anns, "categories": cats}
    return ValidationSet(data, folder / "images", "self-labelled samples")


@pytest.fixture(scope="module")
def gate_case(tmp_path_factory) -> tuple:
    """A random kapao-t FP32 bundle, validation data it labelled itself, and 12 calibration images."""
    root = tmp_path_factory.mktemp("gate")
    fp32 = export_model(
        ExportOptions(model="kapao-t", random_weights=True, imgsz="256", output=root / "fp32"),
        log=lambda m: None,
    )
    return fp32, _self_labelled_validation(fp32.path, root / "val"), load_calibration("synthetic", size=12)


def _gate_request(gate_case, workdir: Path, logs: list[str], **kw) -> Int8Request:
    fp32, val, calib = gate_case
    return Int8Request(
        target="cpu",
        fp32_onnx=fp32.artifact("model"),
        workdir=workdir,
        input_name="images",
        input_size=fp32.input_size,
        decoder_cfg=fp32.manifest["decoder"],
        sigmas=fp32.skeleton.sigmas_array,
        calibration=calib,
        validation=val,
        max_ap_drop=0.001,
        log=logs.append,
        **kw,
    )


def test_gate_rounds_float_layers_by_surgery_as_the_quantizer_would(gate_case, tmp_path):
    """A round's build with layers kept in float is the round-0 build with those layers dequantized by
    graph surgery: the same model as re-quantizing with them in ``nodes_to_exclude``, seconds faster."""
    import onnxruntime as ort
    from edgepose.calibration.ort_quant import OrtQuantConfig, quantize_onnx
    from edgepose.calibration.sensitivity import quantized_layers

    req = _gate_request(gate_case, tmp_path, [])
    tensors = list(calibration_tensors(req.calibration.images, req.input_size))
    config = OrtQuantConfig(method=req.method)
    whole = req.quantize(tensors, tmp_path / "whole.onnx", config)
    layers = quantized_layers(onnx.load(str(whole.path)))
    exclude = [layers[0], layers[len(layers) // 2]]
    surgery = req.quantize(tensors, tmp_path / "surgery.onnx", config, exclude)
    assert surgery.excluded_by == "graph surgery" and surgery.summary()["excluded_by"] == "graph surgery"
    requantized = quantize_onnx(
        req.fp32_onnx, tmp_path / "requantized.onnx", "images", tensors, config, exclude
    )
    a, b = (onnx.load(str(q.path)) for q in (surgery, requantized))
    assert quantized_layers(a) == quantized_layers(b) == [n for n in layers if n not in exclude]
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)  # noqa: E731
    assert count(a, "QuantizeLinear") == count(b, "QuantizeLinear")
    runs = [
        ort.InferenceSession(str(q.path), providers=["CPUExecutionProvider"]) for q in (surgery, requantized)
    ]
    for t in tensors[:2]:
        for x, y in zip(*(s.run(None, {"images": t}) for s in runs)):
            np.testing.assert_allclose(x, y, atol=1e-5)


def test_gate_keeps_sensitive_layers_in_float_or_refuses_cleanly(gate_case, tmp_path):
    logs: list[str] = []
    req = _gate_request(gate_case, tmp_path / "work", logs)  # method pinned: no fallbacks
    try:
        result = quantize_for_target(req)
    except ExportError as e:
        msg = str(e)
        assert "\n" not in msg and "kept in float" in msg and "--max-ap-drop" in msg
        assert any(line.startswith("sensitivity:") for line in logs)
        return
    gate = result.manifest["calibration"]["gate"]
    assert gate["enabled"] and gate["ap_drop"] <= 0.001 and "methods_tried" not in gate
    assert gate["rounds"][0]["excluded_layers"] == 0 and len(gate["rounds"]) > 1  # it had to act
    excluded = result.manifest["calibration"]["excluded_layers"]
    quantized = _weight_quantized(onnx.load(str(result.artifacts["model"])))
    assert excluded and not any(quantized[n] for n in excluded)


def test_gate_tries_the_other_calibration_methods_before_layers(gate_case, tmp_path):
    """With the method not pinned, a failing first build makes the gate quantize with each fallback
    method (until one fits) and carry on with the best one: the manifest names it and every AP."""
    logs: list[str] = []
    req = _gate_request(gate_case, tmp_path / "work", logs, fallback_methods=("minmax", "percentile"))
    try:
        result = quantize_for_target(req)
    except ExportError as e:
        msg = str(e)
        assert re.search(r"; meanminmax: AP [0-9.]+; minmax: AP [0-9.]+; percentile: AP", msg), msg
        assert any(line.startswith("gate: calibration method minmax") for line in logs)
        return
    cal = result.manifest["calibration"]
    gate = cal["gate"]
    tried = gate.get("methods_tried")
    assert tried is not None  # at a 0.001 budget the pinned test shows meanminmax alone does not fit
    assert [t["method"] for t in tried][:2] == ["meanminmax", "minmax"]
    assert any(line.startswith("gate: calibration method minmax") for line in logs)
    best = max(tried, key=lambda t: t["AP"])
    assert cal["method"] == best["method"] and gate["rounds"][0]["method"] == best["method"]
    assert gate["rounds"][0]["AP"] == best["AP"]
    assert gate["ap_drop"] <= 0.001


class _Built:
    """What the method search needs of a build: a runtime to open (its AP comes from ``_APS``)."""

    def __init__(self, method: str) -> None:
        self.method = method

    def open(self):
        import contextlib

        return contextlib.nullcontext(self)


@pytest.mark.parametrize(
    ("aps", "chosen", "tried"),
    [
        # nothing fits and the requested method stays best: its own build is kept
        ({"minmax": 0.40, "percentile": 0.41, "entropy": 0.39}, "meanminmax", 4),
        # minmax fits: the search stops there
        ({"minmax": 0.495, "percentile": 0.499, "entropy": 0.0}, "minmax", 2),
        # nothing fits, a fallback is best: it is chosen
        ({"minmax": 0.47, "percentile": 0.48, "entropy": 0.46}, "percentile", 4),
    ],
)
def test_method_search_keeps_the_best_build_and_stops_at_the_first_fit(monkeypatch, aps, chosen, tried):
    from edgepose.calibration import quantize

    monkeypatch.setattr(quantize, "_build", lambda req, tensors, exclude, tag: _Built(req.method))
    monkeypatch.setattr(quantize, "_poses", lambda rt, req, images: [])
    monkeypatch.setattr(quantize, "agreement", lambda ref, cand, sigmas: {})
    monkeypatch.setattr(quantize, "_ap", lambda rt, req, val: aps[rt.method])
    req = Int8Request("cpu", Path("m.onnx"), Path("."), "images", (64, 64), {}, np.ones(17), None)
    req.validation, req.max_ap_drop, req.log = object(), 0.01, lambda m: None
    req.fallback_methods = ("minmax", "percentile", "entropy")
    first = (_Built("meanminmax"), {"first": True}, 0.45)
    (cand, agree, ap), record = quantize._try_methods(req, [], [], [], 0.5, first)
    assert req.method == chosen and cand.method == chosen
    assert ap == (0.45 if chosen == "meanminmax" else aps[chosen])
    assert (agree == {"first": True}) == (chosen == "meanminmax")
    assert [r["method"] for r in record] == ["meanminmax", "minmax", "percentile", "entropy"][:tried]


def test_a_named_calibration_method_is_pinned_and_the_default_may_fall_back():
    assert calibration_methods("percentile") == {"method": "percentile", "fallback_methods": ()}
    default = calibration_methods(None)
    assert default["method"] == "meanminmax"
    assert default["fallback_methods"] == ("minmax", "percentile", "entropy")
    measured = calibration_methods(None, "minmax")  # a zoo entry's measured best comes first
    assert measured == {"method": "minmax", "fallback_methods": ("percentile", "entropy", "meanminmax")}
    assert calibration_methods("entropy", "minmax") == {"method": "entropy", "fallback_methods": ()}


def test_zoo_calibration_defaults_are_known_methods():
    from edgepose.calibration.ort_quant import METHODS

    chosen = {name: info.calib_method for name, info in ZOO.items() if info.calib_method}
    assert chosen.get("sahr-n") == "percentile"
    assert set(chosen.values()) <= set(METHODS)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--precision", "int8"], ["--calib"]),
        (["--calib", "synthetic"], ["--precision int8"]),
        (["--precision", "int8", "--calib", "synthetic", "--max-ap-drop", "0.01"], ["--val"]),
        (["--precision", "int8", "--calib", "synthetic", "--calib-method", "kl"], ["'kl'", "meanminmax"]),
        (["--calib-method", "minmax"], ["--calib-method", "--precision int8"]),
    ],
)
def test_int8_flag_mistakes_are_one_line(tmp_path, args, words):
    out = tmp_path / "b"
    res = _cli("export", "kapao-t", "--random-weights", "--imgsz", "256", "--output", str(out), *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and all(w in res.stderr for w in words), res.stderr
    assert not out.exists()


def test_bad_calibration_folders_write_no_bundle(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    gray = tmp_path / "gray"
    gray.mkdir()
    cv2.imwrite(str(gray / "a.png"), np.full((64, 64), 90, np.uint8))
    for folder, word in ((empty, "no images"), (gray, "3-channel")):
        out = tmp_path / f"b-{folder.name}"
        res = _cli(
            "export",
            "kapao-t",
            "--random-weights",
            "--imgsz",
            "256",
            "--precision",
            "int8",
            "--calib",
            str(folder),
            "--output",
            str(out),
        )
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and word in res.stderr, res.stderr
        assert not out.exists()
