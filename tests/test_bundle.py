"""Bundle writing is atomic; loading checks version, files and hashes, each with one clear sentence."""

from __future__ import annotations

import json

import pytest

from edgepose.bundle import MANIFEST_NAME, load_bundle, write_bundle
from edgepose.errors import BundleError, UsageError
from edgepose.skeletons import COCO_17
from tests.onnx_models import conv_sigmoid_model


def _manifest() -> dict:
    return {
        "model": {"name": "tiny", "family": "kapao", "skeleton": COCO_17.to_dict()},
        "input": {"name": "images", "shape": [1, 3, 8, 8]},
        "outputs": [{"name": "y"}, {"name": "z"}],
        "decoder": {"family": "kapao"},
        "target": "cpu",
        "precision": "fp32",
        "runtime": {"name": "onnxruntime"},
    }


@pytest.fixture()
def bundle(tmp_path):
    model, _ = conv_sigmoid_model(tmp_path / "model.onnx")
    return write_bundle(tmp_path / "b", _manifest(), {"model": model})


def test_round_trip(bundle):
    loaded = load_bundle(bundle.path)
    assert loaded.manifest["artifacts"]["model"]["file"] == "model.onnx"
    assert len(loaded.manifest["artifacts"]["model"]["sha256"]) == 64
    assert loaded.input_size == (8, 8) and loaded.skeleton.num_keypoints == 17
    assert loaded.artifact("model").is_file()
    assert not [p for p in bundle.path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_missing_file(bundle):
    (bundle.path / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing its model file model.onnx"):
        load_bundle(bundle.path)


def test_modified_file(bundle):
    with open(bundle.path / "model.onnx", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle.path)


def test_other_format_version(bundle):
    mpath = bundle.path / MANIFEST_NAME
    data = json.loads(mpath.read_text())
    data["format_version"] = 99
    data["edgepose_version"] = "9.9.9"
    mpath.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format version 99 .*9.9.9.*re-export"):
        load_bundle(bundle.path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BundleError, match="no edgepose.json"):
        load_bundle(tmp_path / "folder")
    (tmp_path / "folder" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path / "folder")


def test_existing_output_is_not_overwritten(bundle, tmp_path):
    model, _ = conv_sigmoid_model(tmp_path / "other.onnx")
    with pytest.raises(UsageError, match="already exists"):
        write_bundle(bundle.path, _manifest(), {"model": model})
    replaced = write_bundle(bundle.path, _manifest(), {"model": model}, overwrite=True)
    assert replaced.manifest["artifacts"]["model"]["file"] == "other.onnx"
    assert load_bundle(bundle.path).has_artifact("model")


def test_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(TypeError):
        write_bundle(tmp_path / "b", {**_manifest(), "bad": object()}, {})
    assert list(tmp_path.iterdir()) == []
