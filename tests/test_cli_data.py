"""`edgepose synth` and `edgepose eval` through the CLI, with the checks users hit first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from edgepose.export.pipeline import ExportOptions, export_model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepose.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def data_and_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-data")
    res = _cli("synth", str(root / "val"), "--images", "3", "--seed", "1000")
    assert res.returncode == 0, res.stderr
    bundle = export_model(
        ExportOptions(model="kapao-t", random_weights=True, imgsz="256", output=root / "b"),
        log=lambda m: None,
    )
    return root, bundle.path


def test_synth_writes_coco_and_eval_reads_it(data_and_bundle):
    root, bundle = data_and_bundle
    ann = json.loads((root / "val" / "annotations.json").read_text())
    assert len(ann["images"]) == 3 and ann["info"]["profile"] == "val-v1"
    out = root / "ev.json"
    res = _cli(
        "eval",
        str(bundle),
        "--annotations",
        str(root / "val" / "annotations.json"),
        "--images",
        str(root / "val" / "images"),
        "--json",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    figures = json.loads(out.read_text())
    for key in ("AP", "AP50", "AP75", "APM", "APL", "AR"):
        assert 0.0 <= figures[key] <= 1.0
    assert figures["preset"] == "accuracy" and figures["images"] == 3


def test_eval_refuses_skeleton_mismatch_and_non_keypoint_data(data_and_bundle, tmp_path):
    root, bundle = data_and_bundle
    ann = json.loads((root / "val" / "annotations.json").read_text())
    for a in ann["annotations"]:
        a["keypoints"] = a["keypoints"][: 14 * 3]
    bad = tmp_path / "k14.json"
    bad.write_text(json.dumps(ann))
    res = _cli("eval", str(bundle), "--annotations", str(bad), "--images", str(root / "val" / "images"))
    assert (
        res.returncode != 0 and res.stderr.startswith("error: ") and "14" in res.stderr and "17" in res.stderr
    )
    det = tmp_path / "det.json"
    det.write_text(
        json.dumps(
            {
                "images": ann["images"],
                "annotations": [{"id": 1, "image_id": 0, "bbox": [0, 0, 1, 1], "category_id": 1}],
                "categories": [],
            }
        )
    )
    res = _cli("eval", str(bundle), "--annotations", str(det), "--images", str(root / "val" / "images"))
    assert res.returncode != 0 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_synth_refuses_non_empty_output(data_and_bundle):
    root, _ = data_and_bundle
    res = _cli("synth", str(root / "val"), "--images", "1")
    assert res.returncode != 0 and res.stderr.startswith("error: ")


def test_eval_of_ground_truth_results_file_is_perfect(data_and_bundle, tmp_path):
    from edgepose.evaluation import ground_truth_as_results

    root, _ = data_and_bundle
    ann = root / "val" / "annotations.json"
    gt = tmp_path / "gt_results.json"
    gt.write_text(json.dumps(ground_truth_as_results(ann)))
    out = tmp_path / "ap.json"
    res = _cli("eval", "--annotations", str(ann), "--results", str(gt), "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["AP"] == pytest.approx(1.0)


def test_eval_reads_predict_output_by_file_name(data_and_bundle, tmp_path):
    root, bundle = data_and_bundle
    pred = tmp_path / "pred"
    res = _cli(
        "predict", str(bundle), str(root / "val" / "images"), "--output", str(pred), "--preset", "accuracy"
    )
    assert res.returncode == 0, res.stderr
    direct, via_file = tmp_path / "a.json", tmp_path / "b.json"
    ann = str(root / "val" / "annotations.json")
    assert (
        _cli(
            "eval",
            str(bundle),
            "--annotations",
            ann,
            "--images",
            str(root / "val" / "images"),
            "--json",
            str(direct),
        ).returncode
        == 0
    )
    assert (
        _cli(
            "eval", "--annotations", ann, "--results", str(pred / "predictions.json"), "--json", str(via_file)
        ).returncode
        == 0
    )
    assert json.loads(via_file.read_text())["AP"] == pytest.approx(
        json.loads(direct.read_text())["AP"], abs=1e-3
    )
    res = _cli("eval", str(bundle), "--annotations", ann)
    assert res.returncode == 2 and "--images" in res.stderr
