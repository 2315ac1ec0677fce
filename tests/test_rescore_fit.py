"""Fitting DEKR's rescoring net: OKS targets as pycocotools computes them, a fit that learns and loads as
an official checkpoint, collection through a real bundle, and ``edgepose fit-rescore`` end to end."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgepose.decoders.dekr_rescore import RescoreNet, rescore_features  # noqa: E402
from edgepose.evaluation import oks_matrix  # noqa: E402
from edgepose.skeletons import COCO_17  # noqa: E402
from edgepose.training.rescore import (  # noqa: E402
    RescoreData,
    best_oks_targets,
    fit_rescore_net,
    save_rescore_net,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIGMAS = COCO_17.sigmas_array
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _person(rng, x0, y0, scale, visible_p=0.8) -> dict:
    xy = np.stack([x0 + rng.uniform(0, 40 * scale, 17), y0 + rng.uniform(0, 90 * scale, 17)], 1)
    vis = np.where(rng.random(17) < visible_p, 2, 0)
    kps = np.concatenate([xy, vis[:, None]], 1)
    kps[vis == 0, :2] = 0.0  # COCO writes unlabelled points as 0, 0, 0
    return {
        "keypoints": kps.reshape(-1).tolist(),
        "bbox": [float(x0), float(y0), 40.0 * scale, 90.0 * scale],
        "area": 3600.0 * scale**2,
        "num_keypoints": int((vis > 0).sum()),
        "iscrowd": 0,
    }


def test_oks_matrix_equals_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    people = [_person(rng, 20 + 90 * i, 30, 0.5 + 0.4 * i) for i in range(4)]
    people[2]["keypoints"] = [0.0] * 51  # a person with a box but no labelled keypoints
    people[2]["num_keypoints"] = 0
    for i, p in enumerate(people):
        p.update(id=i + 1, image_id=1, category_id=1)
    gt = {
        "images": [{"id": 1, "width": 640, "height": 480}],
        "annotations": people,
        "categories": [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)], "skeleton": []}],
    }
    # Poses near each person (jittered), one inside the unlabelled person's grown box, one far from all.
    base = [np.array(p["keypoints"]).reshape(17, 3)[:, :2] for p in people]
    preds = [b + rng.normal(0, 4, b.shape) for b in (base[0], base[1], base[3])]
    preds += [np.full((17, 2), (people[2]["bbox"][0] + 5, people[2]["bbox"][1] + 5)), np.full((17, 2), 600.0)]
    preds = np.array(preds)
    dets = [
        {
            "image_id": 1,
            "category_id": 1,
            "keypoints": np.c_[p, np.ones(17)].reshape(-1).tolist(),
            "score": 1 - i / 10,
        }
        for i, p in enumerate(preds)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "keypoints")
        ev.params.kpt_oks_sigmas = SIGMAS
        ev.evaluate()
    expected = np.asarray(ev.ious[(1, 1)])  # detections in score order, which is ours
    got = oks_matrix(
        preds,
        np.array([p["keypoints"] for p in people]).reshape(4, 17, 3),
        np.array([p["bbox"] for p in people]),
        np.array([p["area"] for p in people]),
        SIGMAS,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert got[3, 2] == pytest.approx(1.0)  # pycocotools' rule for a person without labelled points


def test_targets_skip_crowds_and_people_without_labelled_keypoints():
    rng = np.random.default_rng(1)
    labelled = _person(rng, 100, 100, 1.0, visible_p=1.0)
    crowd = {**_person(rng, 300, 50, 2.0), "iscrowd": 1}
    unlabelled = {**_person(rng, 400, 200, 1.0), "keypoints": [0.0] * 51, "num_keypoints": 0}
    exact = np.array(labelled["keypoints"]).reshape(17, 3)[None, :, :2]
    on_crowd = np.array(crowd["keypoints"]).reshape(17, 3)[None, :, :2]
    in_unlabelled_box = np.full((1, 17, 2), 420.0)
    preds = np.concatenate([exact, on_crowd, in_unlabelled_box])
    t = best_oks_targets(preds, [labelled, crowd, unlabelled], SIGMAS)
    assert t[0] == pytest.approx(1.0)
    assert t[1] < 0.05 and t[2] < 0.05  # neither the crowd region nor the empty box counts as a match
    assert best_oks_targets(preds, [], SIGMAS).tolist() == [0.0, 0.0, 0.0]
    assert best_oks_targets(np.zeros((0, 17, 2)), [labelled], SIGMAS).shape == (0,)


def _learnable_data(n: int = 3000) -> RescoreData:
    """Random poses whose target is a smooth function of the features: their mean joint score."""
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 200, (n, 17, 2))
    joint = rng.uniform(0, 1, (n, 17))
    return RescoreData(rescore_features(xy, joint).astype(np.float32), joint.mean(1).astype(np.float32), n)


def test_fit_learns_is_deterministic_and_loads_as_an_official_checkpoint(tmp_path):
    from edgepose.models.dekr_checkpoints import load_rescore_checkpoint

    data = _learnable_data()
    fit = fit_rescore_net(data, epochs=40, batch=256, seed=5)
    assert fit.epoch_mse[-1] < 0.2 * fit.baseline_mse, (fit.epoch_mse[-1], fit.baseline_mse)
    again = fit_rescore_net(data, epochs=40, batch=256, seed=5)
    assert all(torch.equal(fit.state_dict[k], again.state_dict[k]) for k in fit.state_dict)
    assert sorted(fit.state_dict) == sorted(
        f"{n}.{p}" for n in ("l1", "l2", "l3") for p in ("weight", "bias")
    )
    path = save_rescore_net(fit, tmp_path / "final_rescore_coco_kpt.pth")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    net = load_rescore_checkpoint(path, 17)  # the loader export --rescore uses, strict on the layout
    s = fit.state_dict
    with torch.no_grad():
        x = torch.from_numpy(data.features[:50])
        h = torch.relu(x @ s["l1.weight"].T + s["l1.bias"])
        h = torch.relu(h @ s["l2.weight"].T + s["l2.bias"])
        ref = (h @ s["l3.weight"].T + s["l3.bias"])[:, 0].numpy()
    np.testing.assert_allclose(net(data.features[:50]), ref, rtol=1e-5, atol=1e-6)
    assert isinstance(net, RescoreNet)


def test_fit_refuses_too_little_data():
    from edgepose.errors import DataError

    with pytest.raises(DataError, match="too few"):
        fit_rescore_net(RescoreData(np.zeros((1, 74), np.float32), np.zeros(1, np.float32), 1))


@pytest.fixture(scope="module")
def dekr_bundle_and_data(tmp_path_factory):
    from edgepose.export.pipeline import ExportOptions, export_model

    from edgepose.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("rescore")
    bundle = export_model(
        ExportOptions(model="dekr-t", random_weights=True, imgsz="256", output=root / "dekr-t"),
        log=lambda *_: None,
    )
    data = generate_dataset(root / "data", 3, seed=7, profile="train-v1")
    return bundle.path, data


def test_collection_sees_every_pose_the_decoder_keeps(dekr_bundle_and_data):
    from edgepose.data.coco import load_keypoint_annotations
    from edgepose.estimator import PoseEstimator
    from edgepose.preprocess import read_image
    from edgepose.training.rescore import collect_rescore_data

    bundle, folder = dekr_bundle_and_data
    got = collect_rescore_data(bundle, folder / "annotations.json", folder / "images")
    ann = load_keypoint_annotations(folder / "annotations.json")
    with PoseEstimator(bundle, preset="accuracy") as est:
        counts = [len(est(read_image(folder / "images" / img["file_name"]))) for img in ann["images"]]
    assert got.images == 3 and len(got) == sum(counts) > 0
    assert got.features.shape == (len(got), 74) and got.features.dtype == np.float32
    assert np.all((got.targets >= 0) & (got.targets <= 1))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgepose.cli", *args], capture_output=True, text=True, timeout=240, env=ENV
    )


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    err = res.stderr.strip()
    assert res.returncode != 0 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err


def test_cli_fits_a_net_that_export_ships_and_refuses_mistakes(dekr_bundle_and_data, tmp_path):
    from edgepose.export.pipeline import ExportOptions, export_model

    from edgepose.bundle import load_bundle

    bundle, folder = dekr_bundle_and_data
    data = ["--annotations", str(folder / "annotations.json"), "--images", str(folder / "images")]
    out = tmp_path / "rescore.pth"
    res = _cli("fit-rescore", str(bundle), *data, "--output", str(out), "--epochs", "2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(out) and "mean squared error" in res.stderr
    shipped = export_model(
        ExportOptions(model="dekr-t", random_weights=True, imgsz="256", output=tmp_path / "b", rescore=out),
        log=lambda *_: None,
    )
    assert load_bundle(shipped.path).artifact("rescore").is_file()

    res = _cli("fit-rescore", str(bundle), *data, "--output", str(out))
    _one_line_error(res, "already exists", "--overwrite")
    other = tmp_path / "sahr.pth"
    sahr = export_model(
        ExportOptions(model="sahr-t", random_weights=True, imgsz="256", output=tmp_path / "sahr"),
        log=lambda *_: None,
    )
    _one_line_error(_cli("fit-rescore", str(sahr.path), *data, "--output", str(other)), "holds a sahr model")
    missing = ["--annotations", str(tmp_path / "none.json"), "--images", str(folder / "images")]
    _one_line_error(_cli("fit-rescore", str(bundle), *missing, "--output", str(other)), "does not exist")
    assert not other.exists()


def test_shipped_rescoring_net_goes_only_with_the_shipped_weights():
    from edgepose.export.pipeline import ResolvedModel, _shipped_rescore

    from edgepose.models.dekr_checkpoints import load_rescore_checkpoint
    from edgepose.models.zoo import shipped_rescore_path

    path = shipped_rescore_path("dekr-n")
    assert path is not None and load_rescore_checkpoint(path, 17).num_features == 74
    shipped = {"source": "shipped: dekr-n.pt"}
    assert _shipped_rescore(ResolvedModel(None, "dekr-n", "dekr", shipped, shipped=True)) == path
    assert _shipped_rescore(ResolvedModel(None, "dekr-n", "dekr", {"source": "runs/x/last.pt"})) is None
    assert shipped_rescore_path("kapao-n") is not None
    assert shipped_rescore_path("dekr-t") is None and shipped_rescore_path("sahr-n") is None


def test_kapao_accuracy_preset_multiplies_scores_by_the_predicted_oks(tmp_path):
    """Not in the official KAPAO: same poses, same order; only the accuracy preset's scores change."""
    from edgepose.export.pipeline import ExportOptions, export_model

    from edgepose.estimator import PoseEstimator
    from edgepose.samples import sample_images

    net_file = save_rescore_net(fit_rescore_net(_learnable_data(), epochs=3), tmp_path / "net.pth")
    out = tmp_path / "kapao-rescored"
    export_model(
        ExportOptions(model="kapao-t", random_weights=True, imgsz="256", output=out, rescore=net_file),
        log=lambda *_: None,
    )
    net = RescoreNet.load(out / "rescore.npz")
    image = sample_images(limit=1)[0]
    for preset in ("accuracy", "realtime"):
        # One bundle, so one set of weights: the plain scores are the same decoder with rescoring off
        # (which the realtime preset is by itself).
        with (
            PoseEstimator(out, preset=preset, rescore=False) as plain,
            PoseEstimator(out, preset=preset) as ours,
        ):
            a, b = plain(image), ours(image)
        assert len(a) == len(b) and (preset == "realtime" or len(a) > 0)
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        expected = a.scores
        if preset == "accuracy":
            expected = a.scores * net(rescore_features(a.keypoints[..., :2], a.keypoints[..., 2]))
        np.testing.assert_allclose(b.scores, expected, rtol=1e-5, atol=1e-7)


def test_collection_reads_kapao_poses_as_decoded(kapao_t_bundle, dekr_bundle_and_data):
    from edgepose.data.coco import load_keypoint_annotations
    from edgepose.estimator import PoseEstimator
    from edgepose.preprocess import read_image
    from edgepose.training.rescore import collect_rescore_data

    _, folder = dekr_bundle_and_data
    got = collect_rescore_data(kapao_t_bundle, folder / "annotations.json", folder / "images")
    ann = load_keypoint_annotations(folder / "annotations.json")
    feats = []
    with PoseEstimator(kapao_t_bundle, preset="accuracy") as est:
        for img in ann["images"]:
            poses = est(read_image(folder / "images" / img["file_name"]))
            if len(poses):
                feats.append(rescore_features(poses.keypoints[..., :2], poses.keypoints[..., 2]))
    np.testing.assert_allclose(got.features, np.concatenate(feats).astype(np.float32), rtol=1e-6)
