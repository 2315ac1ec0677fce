"""OKS average precision with pycocotools, for any skeleton.

``evaluate_results`` scores COCO keypoint results against annotations; ``predict_results`` runs a
predictor over an annotated image folder to make them, and ``evaluate`` does both. The OKS sigmas are
passed in, so CrowdPose-14 or a user's skeleton is scored with its own constants rather than COCO's 17.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgepose.data.coco import check_images, load_keypoint_annotations, validate_keypoint_annotations
from edgepose.errors import DataError
from edgepose.poses import Poses
from edgepose.preprocess import read_image

STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR")
_STAT_INDEX = (0, 1, 2, 3, 4, 5)  # positions in COCOeval.stats for keypoints


def _load(annotations: str | Path | dict, num_keypoints: int | None) -> dict:
    if isinstance(annotations, dict):
        return validate_keypoint_annotations(annotations, num_keypoints)
    return load_keypoint_annotations(annotations, num_keypoints)


def _check_results(results: Iterable[dict], k: int, image_ids: set) -> list[dict]:
    """Copies of ``results`` that pycocotools can read (it adds fields to what it is given)."""
    out = []
    for r in results:
        if not isinstance(r, dict) or "image_id" not in r or "keypoints" not in r:
            raise DataError("each result must be a dict with 'image_id', 'keypoints' and 'score'")
        kp = [float(v) for v in r["keypoints"]]
        if len(kp) != 3 * k:
            raise DataError(f"a result has {len(kp) // 3} keypoints but the skeleton has {k}")
        if not all(math.isfinite(v) for v in kp):
            raise DataError(f"a result for image {r['image_id']} has non-finite keypoint coordinates")
        if r["image_id"] not in image_ids:
            raise DataError(f"a result names image_id {r['image_id']}, which is not in the annotations")
        item = {
            "image_id": r["image_id"],
            "category_id": int(r.get("category_id", 1)),
            "keypoints": kp,
            "score": float(r.get("score", 1.0)),
        }
        if "bbox" in r:
            item["bbox"] = [float(v) for v in r["bbox"]]
        out.append(item)
    if any("bbox" not in r for r in out):  # pycocotools picks one code path for all results by the first
        for r in out:
            r.pop("bbox", None)
    return out


def evaluate_results(
    annotations: str | Path | dict,
    results: list[dict],
    sigmas: np.ndarray,
    image_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO keypoint AP, AP50, AP75, APM, APL and AR (0-1) of ``results`` against ``annotations``.

    ``image_ids`` restricts the evaluation to those images. No results gives all zeros; an area
    range without any ground truth (pycocotools' -1) is reported as 0.0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if sig.size == 0 or not np.all(sig > 0):
        raise DataError("OKS sigmas must be a non-empty list of positive numbers")
    data = _load(annotations, sig.size)
    all_ids = {img["id"] for img in data["images"]}
    dets = _check_results(results, sig.size, all_ids)
    ids = None
    if image_ids is not None:
        ids = sorted({int(i) for i in image_ids})
        unknown = [i for i in ids if i not in all_ids]
        if unknown:
            raise DataError(f"image_ids names {unknown[0]}, which is not in the annotations")
        keep = set(ids)
        dets = [d for d in dets if d["image_id"] in keep]
    if not dets:
        return dict.fromkeys(STAT_NAMES, 0.0)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = sig
        if ids is not None:
            ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: max(0.0, float(ev.stats[i])) for name, i in zip(STAT_NAMES, _STAT_INDEX)}


def oks_matrix(
    pred_xy: np.ndarray,
    gt_keypoints: np.ndarray,
    gt_boxes: np.ndarray,
    gt_areas: np.ndarray,
    sigmas: np.ndarray,
) -> np.ndarray:
    """(N, M) OKS of N predicted poses (N, K, 2) with M ground-truth people, as pycocotools computes it.

    ``gt_keypoints`` (M, K, 3) with visibility, ``gt_boxes`` (M, 4) xywh, ``gt_areas`` (M,). Only labelled
    keypoints count; a person without any is compared by how far each keypoint lies outside the box grown
    by its size on every side (pycocotools' rule, which gives such a person an OKS of 1 for anything
    inside that box).
    """
    pred = np.asarray(pred_xy, np.float64).reshape(len(pred_xy), -1, 2)
    gt = np.asarray(gt_keypoints, np.float64).reshape(len(gt_keypoints), -1, 3)
    boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    areas = np.asarray(gt_areas, np.float64).reshape(-1)
    var = (2.0 * np.asarray(sigmas, np.float64).reshape(-1)) ** 2
    out = np.zeros((len(pred), len(gt)))
    for j in range(len(gt)):
        labelled = gt[j, :, 2] > 0
        if labelled.any():
            dx = pred[:, :, 0] - gt[j, None, :, 0]
            dy = pred[:, :, 1] - gt[j, None, :, 1]
        else:
            x, y, w, h = boxes[j]
            dx = np.maximum(0.0, (x - w) - pred[:, :, 0]) + np.maximum(0.0, pred[:, :, 0] - (x + 2 * w))
            dy = np.maximum(0.0, (y - h) - pred[:, :, 1]) + np.maximum(0.0, pred[:, :, 1] - (y + 2 * h))
        e = (dx**2 + dy**2) / var / (areas[j] + np.spacing(1)) / 2.0
        if labelled.any():
            e = e[:, labelled]
        out[:, j] = np.exp(-e).mean(axis=1)
    return out


def ground_truth_as_results(annotations: str | Path | dict) -> list[dict]:
    """Every non-crowd ground-truth person with labelled keypoints as a result with score 1.0."""
    data = _load(annotations, None)
    out = []
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) == 0:
            continue
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[:, 2] = kp[:, 2] > 0
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann.get("category_id", 1),
                "keypoints": [float(v) for v in kp.reshape(-1)],
                "score": 1.0,
            }
        )
    return out


def predict_results(
    predict: Callable[[np.ndarray], Poses],
    annotations: str | Path | dict,
    images_dir: str | Path,
    num_keypoints: int,
    progress: bool = False,
) -> list[dict]:
    """COCO keypoint results of ``predict`` (BGR image -> ``Poses``) on every annotated image.

    Kept apart from scoring so one pass of a slow model can be scored on several image subsets
    (``evaluate_results(..., image_ids=...)``).
    """
    data = _load(annotations, num_keypoints)
    paths = check_images(data, images_dir)
    items: Iterable = list(zip(data["images"], paths))
    if progress:
        from rich.progress import track

        items = track(items, description="evaluating", total=len(paths))
    results: list[dict] = []
    for entry, path in items:
        poses = predict(read_image(path))
        if len(poses) and poses.num_keypoints != num_keypoints:
            raise DataError(
                f"the model predicts {poses.num_keypoints} keypoints but the annotations have "
                f"{num_keypoints}; evaluate against annotations of the model's skeleton"
            )
        results.extend(poses.to_coco_results(entry["id"]))
    return results


def evaluate(
    predict: Callable[[np.ndarray], Poses],
    annotations: str | Path | dict,
    images_dir: str | Path,
    sigmas: np.ndarray,
    progress: bool = False,
) -> dict[str, float]:
    """Run ``predict`` (BGR image -> ``Poses``) on every annotated image and score it with OKS AP."""
    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    data = _load(annotations, sig.size)
    return evaluate_results(data, predict_results(predict, data, images_dir, sig.size, progress), sig)


def run_bundle_eval(
    bundle: str | Path,
    annotations: str | Path,
    images_dir: str | Path,
    preset: str = "accuracy",
    runtime: str | None = None,
    device: str | None = None,
    progress: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> dict:
    """OKS AP of a bundle (what ``edgepose eval`` and the quantization gate run); ``overrides`` are
    decoder parameters on top of the preset (``{"flip": True}``: flip test).

    The annotations are checked against the bundle's skeleton before any inference runs.
    """
    from edgepose.bundle import load_bundle
    from edgepose.estimator import PoseEstimator

    b = load_bundle(bundle)
    skeleton = b.skeleton
    data = load_keypoint_annotations(annotations, num_keypoints=skeleton.num_keypoints)
    with PoseEstimator(b, preset=preset, runtime=runtime, device=device, **dict(overrides or {})) as est:
        metrics = evaluate(est, data, images_dir, skeleton.sigmas_array, progress=progress)
    return {
        "metrics": metrics,
        **metrics,
        "bundle": str(bundle),
        "model": b.model_name,
        "precision": b.precision,
        "runtime": runtime or b.runtime,
        "preset": preset,
        "decoder_overrides": dict(overrides or {}),
        "annotations": str(annotations),
        "images": len(data["images"]),
        "data_info": data.get("info", {}),
    }


def load_results(path: str | Path, annotations: dict) -> list[dict]:
    """Keypoint results from a file: a COCO results list, or ``edgepose predict``'s predictions.json.

    predictions.json numbers its images in the order it saw them, so its results are matched to the
    annotations by file name; a plain results list must already use the annotations' image ids.
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"results file {path} does not exist") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"results file {path} is not readable JSON ({e})") from e
    if isinstance(data, list):
        return data
    if not (isinstance(data, dict) and isinstance(data.get("annotations"), list) and "images" in data):
        raise DataError(f"{path} is neither a COCO results list nor an edgepose predictions.json")
    by_name = {str(img["file_name"]): img["id"] for img in annotations["images"]}
    ids = {}
    for img in data["images"]:
        name = str(img["file_name"])
        if name not in by_name:
            raise DataError(f"{path} has predictions for {name}, which the annotations do not list")
        ids[img["id"]] = by_name[name]
    return [{**r, "image_id": ids[r["image_id"]]} for r in data["annotations"]]
