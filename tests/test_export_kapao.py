"""KAPAO end to end on ONNX Runtime: export -> bundle -> predict, parity recorded, bad input refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgepose.export.parity import MAX_DECODED_PX_FRACTION, MAX_REL_DIFF
from edgepose.export.pipeline import ExportOptions, export_model

import edgepose
from edgepose.bundle import load_bundle
from edgepose.samples import sample_image_paths

SAMPLES = sample_image_paths()


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepose.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def _assert_one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode != 0
    err = res.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "kapao-t"
    res = _cli("export", "kapao-t", "--random-weights", "--imgsz", "256", "--output", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_manifest_records_what_design_lists(tiny_bundle):
    m = load_bundle(tiny_bundle).manifest
    assert m["format_version"] == 1 and m["edgepose_version"] == edgepose.__version__
    assert m["model"]["name"] == "kapao-t" and m["model"]["family"] == "kapao"
    assert m["model"]["skeleton"]["name"] == "coco-17"
    assert m["input"]["shape"] == [1, 3, 256, 256] and m["input"]["pad_value"] == 114
    assert m["input"]["color"] == "RGB" and m["input"]["layout"] == "NCHW"
    assert [o["name"] for o in m["outputs"]] == ["p3", "p4", "p5", "p6"]
    assert set(m["decoder"]["presets"]) == {"accuracy", "realtime"}
    assert m["target"] == "cpu" and m["precision"] == "fp32" and m["runtime"]["name"] == "onnxruntime"
    assert m["artifacts"]["model"]["file"] == "model.onnx" and len(m["artifacts"]["model"]["sha256"]) == 64
    p = m["parity"]
    assert p["reference"] == "torch" and p["max_rel_diff"] <= MAX_REL_DIFF
    assert p["decoded_max_px"] <= MAX_DECODED_PX_FRACTION * 256 and p["decoded_cells"] > 0


def test_onnx_has_raw_head_outputs_and_metadata(tiny_bundle):
    import onnx

    proto = onnx.load(str(tiny_bundle / "model.onnx"))
    assert proto.opset_import[0].version >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    head = json.loads(meta["head"])
    assert meta["model"] == "kapao-t" and head["num_keypoints"] == 17
    # channel-major (B, A, C, H, W): the head convolutions' own order, so the graph ends without Transposes
    assert head["layout"] == "B,A,C,H,W"
    outs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert outs["p3"] == [1, 3, 57, 32, 32] and outs["p6"] == [1, 3, 57, 4, 4]
    assert "Transpose" not in {n.op_type for n in proto.graph.node}
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)


def test_predict_writes_annotated_images_and_json(tiny_bundle, tmp_path):
    out = tmp_path / "pred"
    res = _cli("predict", str(tiny_bundle), str(SAMPLES[0].parent), "--output", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads((out / "predictions.json").read_text())
    assert [im["file_name"] for im in data["images"]] == [p.name for p in SAMPLES]
    for p in SAMPLES:
        assert (out / p.with_suffix(".jpg").name).stat().st_size > 0
    for ann in data["annotations"]:
        assert len(ann["keypoints"]) == 51 and 0 <= ann["score"] <= 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_python_api_matches_cli_and_never_imports_torch(tiny_bundle):
    code = (
        "import sys, json, edgepose\n"
        f"est = edgepose.load({str(tiny_bundle)!r})\n"
        f"poses = est.predict_file({str(SAMPLES[1])!r})\n"
        "info = {'n': len(poses), 'torch': 'torch' in sys.modules, 'k': poses.keypoints.shape[1]}\n"
        "print(json.dumps(info))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["k"] == 17


def test_presets_change_the_decode(tiny_bundle):
    from edgepose.preprocess import read_image

    img = read_image(SAMPLES[0])
    with edgepose.load(tiny_bundle, preset="accuracy") as acc, edgepose.load(tiny_bundle) as rt:
        assert acc.preset == "accuracy" and rt.preset == "realtime"
        assert len(acc(img)) >= len(rt(img))
        poses = acc(img)
        h, w = img.shape[:2]
        assert (poses.keypoints[..., 0] <= w).all() and (poses.keypoints[..., 1] <= h).all()
    with pytest.raises(edgepose.errors.UsageError, match="unknown preset"):
        edgepose.load(tiny_bundle, preset="fastest")


def test_flip_test_runs_a_mirrored_second_pass_through_the_runtime(tiny_bundle, tmp_path):
    import onnxruntime as ort

    from edgepose.decoders.kapao import FLIP_INDEX, FLIPPED
    from edgepose.preprocess import read_image

    bundle = load_bundle(tiny_bundle)
    img = read_image(SAMPLES[0])
    with edgepose.load(tiny_bundle, preset="accuracy", flip=True) as est:
        tensor, _ = est.preprocess(img)
        got = est.infer(tensor)
        poses = est(img)
    with edgepose.load(tiny_bundle, preset="accuracy") as plain_est:
        plain = plain_est(img)
    sess = ort.InferenceSession(str(bundle.artifact("model")), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for prefix, x in (("", tensor), (FLIPPED, np.ascontiguousarray(tensor[..., ::-1]))):
        for name, want in zip(names, sess.run(None, {bundle.input_name: x})):
            np.testing.assert_allclose(got[prefix + name], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[FLIP_INDEX], bundle.skeleton.flip_index())
    assert len(poses) > 0 and not (len(poses) == len(plain) and np.allclose(poses.boxes, plain.boxes))
    out = tmp_path / "pred"
    res = _cli("predict", str(tiny_bundle), str(SAMPLES[0]), "--output", str(out), "--flip")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "predictions.json").read_text())["annotations"]


@pytest.mark.slow
@pytest.mark.parametrize("imgsz,size", [("640", (640, 640)), ("640x384", (640, 384))])
def test_kapao_s_parity_at_issue_sizes(tmp_path, imgsz, size):
    bundle = export_model(
        ExportOptions(model="kapao-s", random_weights=True, imgsz=imgsz, output=tmp_path / "b"),
        log=lambda m: None,
    )
    p = bundle.manifest["parity"]
    assert bundle.input_size == size
    assert p["max_rel_diff"] <= MAX_REL_DIFF
    assert p["decoded_max_px"] <= MAX_DECODED_PX_FRACTION * max(size)
    with edgepose.load(bundle.path) as est:
        poses = est(np.full((480, 640, 3), 90, np.uint8))
    assert poses.keypoints.shape[1:] == (17, 3)


# -- bad input: one line, non-zero exit, nothing written ---------------------------------------------------
def test_zoo_model_without_weights_needs_a_choice(tmp_path):
    res = _cli("export", "kapao-s", "--output", str(tmp_path / "b"))
    _assert_one_line_error(res, "--weights", "--random-weights")
    assert not (tmp_path / "b").exists()


def test_missing_and_corrupt_checkpoints(tmp_path):
    res = _cli(
        "export", "kapao-t", "--weights", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "b")
    )
    _assert_one_line_error(res, "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    res = _cli("export", "kapao-t", "--weights", str(bad), "--output", str(tmp_path / "b"))
    _assert_one_line_error(res, "corrupt.pt")
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt"]


def test_existing_output_and_bad_size_are_refused(tiny_bundle, tmp_path):
    res = _cli("export", "kapao-t", "--random-weights", "--output", str(tiny_bundle))
    _assert_one_line_error(res, "already exists")
    res = _cli("export", "kapao-t", "--random-weights", "--imgsz", "300", "--output", str(tmp_path / "b"))
    _assert_one_line_error(res, "multiple")
    res = _cli("export", "kapao-t", "--random-weights", "--target", "tpu", "--output", str(tmp_path / "b"))
    _assert_one_line_error(res, "unknown target")
    assert not (tmp_path / "b").exists()


def test_predict_bad_inputs(tiny_bundle, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    res = _cli("predict", str(tiny_bundle), str(bad), "--output", str(tmp_path / "o"))
    _assert_one_line_error(res, "broken.jpg", "not a readable image")
    assert not (tmp_path / "o").exists()
    res = _cli("predict", str(tiny_bundle), str(tmp_path / "nothing.jpg"), "--output", str(tmp_path / "o"))
    _assert_one_line_error(res, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = _cli("predict", str(tiny_bundle), str(empty), "--output", str(tmp_path / "o"))
    _assert_one_line_error(res, "no images")


def test_bundle_with_missing_file_is_refused(tiny_bundle, tmp_path):
    import shutil

    broken = tmp_path / "broken-bundle"
    shutil.copytree(tiny_bundle, broken)
    (broken / "model.onnx").unlink()
    res = _cli("predict", str(broken), str(SAMPLES[0]), "--output", str(tmp_path / "o"))
    _assert_one_line_error(res, "missing its model file model.onnx")
    assert not (tmp_path / "o").exists()


def test_predict_on_the_shipped_video_writes_every_frame(tiny_bundle, tmp_path):
    import cv2

    from edgepose.samples import sample_video_path

    video = sample_video_path()
    out = tmp_path / "vid"
    res = _cli("predict", str(tiny_bundle), str(video), "--output", str(out))
    assert res.returncode == 0, res.stderr
    src, dst = cv2.VideoCapture(str(video)), cv2.VideoCapture(str(out / "people.mp4"))
    frames = int(src.get(cv2.CAP_PROP_FRAME_COUNT))
    assert frames > 0 and int(dst.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    assert dst.get(cv2.CAP_PROP_FPS) == pytest.approx(src.get(cv2.CAP_PROP_FPS))
    data = json.loads((out / "predictions.json").read_text())
    assert len(data["images"]) == frames


def test_runtime_options_reach_the_runtime(tiny_bundle):
    with edgepose.load(tiny_bundle, runtime_options={"threads": 1, "optimization": "basic"}, conf=0.4) as est:
        assert est.runtime.options == {"threads": 1, "optimization": "basic"}
        assert est.decoder.params.conf == pytest.approx(0.4)


def test_a_zoo_models_tuned_decoder_values_reach_the_manifest(tmp_path, monkeypatch):
    import dataclasses

    from edgepose.errors import UsageError
    from edgepose.families import decoder_config
    from edgepose.models import zoo

    tuned = dataclasses.replace(zoo.ZOO["kapao-t"], decoder={"accuracy": {"overwrite_tol": 20.0}})
    monkeypatch.setitem(zoo.ZOO, "kapao-t", tuned)
    bundle = export_model(
        ExportOptions(model="kapao-t", random_weights=True, imgsz="256", output=tmp_path / "b"),
        log=lambda *_: None,
    )
    presets = load_bundle(bundle.path).manifest["decoder"]["presets"]
    assert presets["accuracy"]["overwrite_tol"] == 20.0
    assert presets["realtime"]["overwrite_tol"] == 50.0  # the family's value: only the named preset changes
    head = zoo.build_model("kapao-t").head_spec()
    with pytest.raises(UsageError, match="unknown decoder preset"):
        decoder_config("kapao", head, {"fastest": {"conf": 0.5}})
    with pytest.raises(UsageError, match="unknown KAPAO decoder parameter"):
        decoder_config("kapao", head, {"accuracy": {"radius": 3}})
