"""DEKR export: standard ONNX ops only, ORT (and OpenVINO) parity with torch, and dekr-t end to end through
``export_model`` + ``edgepose.load``. The dekr-w32 case exports the full 512x512 model (~8 s of this file's
~20 s on a 2-core machine)."""

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
from edgepose.decoders.dekr import PRESETS, DekrHead, decoded_difference  # noqa: E402
from edgepose.models.zoo import build_model  # noqa: E402
from edgepose.preprocess import preprocess  # noqa: E402
from edgepose.samples import sample_images  # noqa: E402
from tests.flip_checks import run_flip_both_ways  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _standard_ops_only(path) -> set[str]:
    proto = onnx.load(str(path))
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    return {n.op_type for n in proto.graph.node}


def _export(name: str, size: int, path) -> tuple[torch.nn.Module, np.ndarray]:
    images = sample_images(limit=1)
    model = build_model(name)
    randomize_weights(model, images, (size, size), seed=0, passes=1)
    torch_to_onnx(copy.deepcopy(model).fuse(), (size, size), path, ["heatmap", "offset"])
    return model, preprocess(images[0], (size, size))[0]


def _ort(path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(("heatmap", "offset"), sess.run(None, {"images": x})))


def test_dekr_w32_at_512_exports_with_standard_ops_and_matches_torch(tmp_path):
    path = tmp_path / "dekr-w32.onnx"
    model, x = _export("dekr-w32", 512, path)
    ops = _standard_ops_only(path)
    assert "GridSample" in ops and not ops & {"DeformConv", "MaxRoiPool"}
    with torch.no_grad():
        ref = dict(zip(("heatmap", "offset"), (t.numpy() for t in model(torch.from_numpy(x)))))
    got = _ort(path, x)
    assert got["heatmap"].shape == (1, 18, 128, 128) and got["offset"].shape == (1, 34, 128, 128)
    rel = max(float(np.abs(got[n] - ref[n]).max() / np.abs(ref[n]).max()) for n in ref)
    assert rel <= 1e-3
    diff = decoded_difference(ref, got, DekrHead(17), PRESETS["accuracy"])
    assert diff["decoded_cells"] >= 100 and diff["decoded_max_px"] <= 1e-2


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "dekr-t"
    opts = ExportOptions(model="dekr-t", random_weights=True, imgsz="256", output=out)
    return export_model(opts, log=lambda *_: None)


def test_dekr_t_end_to_end_export_bundle_and_predict(tiny_bundle):
    m = load_bundle(tiny_bundle.path).manifest
    assert m["model"]["family"] == "dekr" and m["input"]["shape"] == [1, 3, 256, 256]
    assert [o["name"] for o in m["outputs"]] == ["heatmap", "offset"]
    assert m["decoder"]["head"]["input_multiple"] == 32 and set(m["decoder"]["presets"]) == {
        "accuracy",
        "realtime",
    }
    assert m["parity"]["max_rel_diff"] <= 1e-3 and m["parity"]["decoded_max_px"] <= 1e-2
    _standard_ops_only(tiny_bundle.artifact("model"))
    image = sample_images(limit=1)[0]
    h, w = image.shape[:2]
    for preset in ("realtime", "accuracy"):
        with edgepose.load(tiny_bundle.path, preset=preset) as est:
            poses = est(image)
        assert poses.keypoints.shape[1:] == (17, 3) and 0 < len(poses) <= 30
        assert (poses.keypoints[..., 0] >= 0).all() and (poses.keypoints[..., 0] <= w).all()
        assert (poses.keypoints[..., 1] >= 0).all() and (poses.keypoints[..., 1] <= h).all()


def test_flip_test_runs_a_mirrored_second_pass_through_the_runtime(tiny_bundle):
    from edgepose.decoders import dekr

    run = run_flip_both_ways(tiny_bundle.path, dekr, DekrHead(17), _ort)
    for name in ("heatmap", "offset"):
        np.testing.assert_allclose(run.got[name], run.want[name], rtol=1e-5, atol=1e-5)
        assert not np.allclose(run.got[name], run.plain[name], atol=1e-3)  # the second pass changed something


def test_the_same_onnx_runs_on_openvino(tiny_bundle):
    ov = pytest.importorskip("openvino")
    path = tiny_bundle.artifact("model")
    x = preprocess(sample_images(limit=1)[0], (256, 256))[0]
    ref = _ort(path, x)
    compiled = ov.Core().compile_model(
        ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    result = compiled({0: x})
    for i, name in enumerate(("heatmap", "offset")):
        assert float(np.abs(result[i] - ref[name]).max() / np.abs(ref[name]).max()) <= 1e-4


def test_conf_override_maps_to_the_family_threshold():
    from edgepose.families import decoder_config, make_decoder
    from edgepose.models.zoo import build_model

    cfg = decoder_config("dekr", build_model("dekr-t").head_spec())
    assert make_decoder(cfg, "realtime", {"conf": 0.33}).params.center_threshold == pytest.approx(0.33)


# --- the rescoring net as a bundle artifact ---------------------------------------------------------


def _official_rescore_file(path, features: int = 74):
    """``final_rescore_coco_kpt.pth`` as the official code saves it: PredictOKSNet's l1/l2/l3 state dict."""
    gen = torch.Generator().manual_seed(3)
    shapes = {"l1": (256, features), "l2": (256, 256), "l3": (1, 256)}
    state = {}
    for name, (out, inp) in shapes.items():
        state[f"{name}.weight"] = torch.randn(out, inp, generator=gen) * 0.1
        state[f"{name}.bias"] = torch.randn(out, generator=gen) * 0.1
    torch.save(state, path)
    return path


def test_rescore_net_ships_in_the_bundle_and_the_accuracy_preset_uses_it(tiny_bundle, tmp_path):
    from edgepose.decoders.dekr_rescore import RescoreNet

    pth = _official_rescore_file(tmp_path / "final_rescore_coco_kpt.pth")
    out = tmp_path / "with-rescore"
    opts = ExportOptions(model="dekr-t", random_weights=True, imgsz="256", output=out, rescore=pth)
    bundle = export_model(opts, log=lambda *_: None)
    # Moved after export: the manifest names the file relative to the bundle, wherever it lives.
    moved = tmp_path / "elsewhere"
    bundle.path.rename(moved)
    bundle = load_bundle(moved)
    assert bundle.manifest["decoder"]["head"]["rescore_file"] == "rescore.npz"
    assert bundle.artifact("rescore") == moved / "rescore.npz"
    assert bundle.decoder_config["head"]["rescore_file"] == str(moved / "rescore.npz")
    assert bundle.manifest["model"]["rescore"] == str(pth)
    image = sample_images(limit=1)[0]
    with (
        edgepose.load(tiny_bundle.path, preset="accuracy") as plain,
        edgepose.load(moved, preset="accuracy") as ours,
    ):
        a, b = plain(image), ours(image)
    # Same weights (same seed), same poses; only the scores differ, by the net's predicted OKS.
    np.testing.assert_allclose(a.keypoints[..., :2], b.keypoints[..., :2], atol=1e-4)
    net = RescoreNet.load(moved / "rescore.npz")
    assert len(a) > 0 and not np.allclose(a.scores, b.scores)
    assert net.num_features == 74


def test_rescore_refuses_other_families_and_bad_files_before_exporting(tmp_path):
    from edgepose.errors import CheckpointError, UsageError

    pth = _official_rescore_file(tmp_path / "r.pth")
    with pytest.raises(UsageError, match="--rescore applies to kapao and dekr models; this is a sahr model"):
        export_model(
            ExportOptions(
                model="sahr-t", random_weights=True, imgsz="256", output=tmp_path / "k", rescore=pth
            ),
            log=lambda *_: None,
        )
    wrong = _official_rescore_file(tmp_path / "crowd.pth", features=59)  # a CrowdPose-14 net
    with pytest.raises(CheckpointError, match="needs 74"):
        export_model(
            ExportOptions(
                model="dekr-t", random_weights=True, imgsz="256", output=tmp_path / "d", rescore=wrong
            ),
            log=lambda *_: None,
        )
    assert not (tmp_path / "k").exists() and not (tmp_path / "d").exists()
