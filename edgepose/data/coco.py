"""Loading and validating COCO *keypoint* annotation files.

pycocotools asserts or crashes deep inside on files that are not what pose evaluation needs; these
checks turn every such case into one ``DataError`` sentence that names the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgepose.errors import DataError
from edgepose.preprocess import list_images


def load_keypoint_annotations(path: str | Path, num_keypoints: int | None = None) -> dict:
    """Read and validate a COCO keypoints file; see ``validate_keypoint_annotations``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"annotation file {path} is not readable JSON ({e})") from e
    return validate_keypoint_annotations(data, num_keypoints, source=str(path))


def validate_keypoint_annotations(
    data: object, num_keypoints: int | None = None, source: str = "annotations"
) -> dict:
    """Check that ``data`` is COCO keypoints with K keypoints per person and return it, normalised.

    Normalising fills fields pycocotools needs and that follow from the rest: ``iscrowd`` (0),
    ``num_keypoints`` (labelled points), ``bbox`` (box of the labelled points) and ``area`` (the box
    area, when no segmentation area is given). The input is not modified.
    """
    if not isinstance(data, dict):
        raise DataError(f"{source} is not a COCO annotation file (expected a JSON object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source} is not a COCO annotation file (no '{key}' list)")
    cats = data["categories"]
    anns = data["annotations"]
    if not anns and not any(isinstance(c, dict) and "keypoints" in c for c in cats):
        raise DataError(
            f"{source} has no keypoint annotations and no keypoint category; it is not COCO keypoints"
        )
    k_cat = {
        len(c["keypoints"]) for c in cats if isinstance(c, dict) and isinstance(c.get("keypoints"), list)
    }
    lengths = set()
    for ann in anns:
        if not isinstance(ann, dict) or "keypoints" not in ann:
            raise DataError(
                f"{source} has annotations without 'keypoints' (detection-only COCO?); "
                "pose evaluation needs COCO keypoint annotations"
            )
        kp = ann["keypoints"]
        if not isinstance(kp, list) or len(kp) % 3 or not kp:
            raise DataError(
                f"{source}: annotation {ann.get('id')} has keypoints that are not a list of x, y, v triples"
            )
        lengths.add(len(kp) // 3)
    if len(lengths) > 1:
        raise DataError(
            f"{source} mixes annotations with {sorted(lengths)} keypoints; use one skeleton per file"
        )
    k = lengths.pop() if lengths else (k_cat.pop() if len(k_cat) == 1 else None)
    if k is not None and k_cat and k not in k_cat:
        raise DataError(
            f"{source}: annotations have {k} keypoints but the category lists {sorted(k_cat)[0]} names"
        )
    if num_keypoints is not None and k is not None and k != num_keypoints:
        raise DataError(f"{source}: annotations have {k} keypoints but the skeleton has {num_keypoints}")
    image_ids = set()
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataError(f"{source} has an image entry without 'id' or 'file_name'")
        image_ids.add(img["id"])
    cat_ids = {c.get("id") for c in cats if isinstance(c, dict)}
    out_anns = []
    for i, ann in enumerate(anns):
        if ann.get("image_id") not in image_ids:
            raise DataError(f"{source}: annotation {ann.get('id', i)} names image_id {ann.get('image_id')} "
                            "that is not in 'images'")  # fmt: skip
        if ann.get("category_id", 1) not in cat_ids:
            raise DataError(f"{source}: annotation {ann.get('id', i)} has a category_id not in 'categories'")
        out_anns.append(_normalise(ann, i))
    ids = [a["id"] for a in out_anns]
    if len(set(ids)) != len(ids) or 0 in ids:
        raise DataError(
            f"{source}: annotation ids must be unique and non-zero (pycocotools treats 0 as 'unmatched')"
        )
    return {**data, "annotations": out_anns}


def _normalise(ann: dict, index: int) -> dict:
    out = dict(ann)
    kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    labelled = kp[:, 2] > 0
    out.setdefault("id", index + 1)
    out.setdefault("category_id", 1)
    out.setdefault("iscrowd", 0)
    out.setdefault("num_keypoints", int(np.count_nonzero(labelled)))
    if "bbox" not in out:
        if labelled.any():
            x0, y0 = kp[labelled, :2].min(0)
            x1, y1 = kp[labelled, :2].max(0)
            out["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        else:
            out["bbox"] = [0.0, 0.0, 0.0, 0.0]
    if "area" not in out:
        out["area"] = float(out["bbox"][2] * out["bbox"][3])
    return out


def check_images(annotations: dict, images_dir: str | Path) -> list[Path]:
    """The image files of ``annotations['images']`` in ``images_dir``, in order; all must exist."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DataError(f"images folder {folder} does not exist")
    paths = [folder / str(img["file_name"]) for img in annotations["images"]]
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths) and not list_images(folder):
        raise DataError(f"images folder {folder} has no images")
    if missing:
        raise DataError(
            f"{len(missing)} of {len(paths)} images named in the annotations are missing from {folder} "
            f"(first: {missing[0].name}); point --images at the folder the annotations describe"
        )
    return paths
