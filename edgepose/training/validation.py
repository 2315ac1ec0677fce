"""Held-out validation for training runs: synthetic or COCO images with their ground truth, and the OKS AP
of a torch model through the deployment decoder, so the per-epoch figure is the one a bundle would give.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgepose.data.synthetic import sample_seed
from edgepose.skeletons import COCO_17, Skeleton
from edgepose.training.datasets import CocoKeypointDataset

VAL_STREAM = 999  # synthetic validation images: a stream no training run or published eval set uses


@dataclass
class ValidationSet:
    """Held-out images in original pixels with their COCO ground truth, for a quick OKS AP."""

    images: list[np.ndarray]
    image_ids: list[int]
    coco: dict

    @classmethod
    def synthetic(
        cls, profile: str, count: int, seed: int = 0, renderer: Callable | None = None
    ) -> ValidationSet:
        if renderer is None:
            from edgepose.data.synthetic import render_sample as renderer
        images, anns, infos = [], [], []
        for i in range(count):
            img, people = renderer(sample_seed(VAL_STREAM + seed, i), profile)
            images.append(img)
            infos.append(
                {"id": i + 1, "width": img.shape[1], "height": img.shape[0], "file_name": f"{i + 1}.jpg"}
            )
            for p in people:
                get = p.get if isinstance(p, dict) else (lambda n, _p=p: getattr(_p, n, None))
                kp = np.asarray(get("keypoints"), np.float64).reshape(-1, 3)
                x, y, w, h = (float(v) for v in get("bbox"))
                area = get("area")
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": 1,
                        "iscrowd": 0,
                        "keypoints": kp.reshape(-1).tolist(),
                        "num_keypoints": int((kp[:, 2] > 0).sum()),
                        "bbox": [x, y, w, h],
                        "area": float(area) if area is not None else w * h,
                    }
                )
        coco = {"images": infos, "annotations": anns, "categories": [_category(COCO_17)]}
        return cls(images, [im["id"] for im in infos], coco)

    @classmethod
    def from_dataset(cls, ds: CocoKeypointDataset, count: int) -> ValidationSet:
        n = min(count, len(ds))
        ids = [ds.image_id(i) for i in range(n)]
        keep = set(ids)
        coco = {
            "images": [im for im in ds.coco["images"] if int(im["id"]) in keep],
            "annotations": [a for a in ds.coco["annotations"] if int(a["image_id"]) in keep],
            "categories": ds.coco.get("categories") or [_category(ds.skeleton)],
        }
        return cls([ds.load(i, 0).image for i in range(n)], ids, coco)


def _category(skeleton: Skeleton) -> dict:
    return {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(skeleton.keypoints),
        "skeleton": [[a + 1, b + 1] for a, b in skeleton.limbs],
    }


def evaluate_model(
    model: nn.Module, val: ValidationSet, imgsz: tuple[int, int], skeleton: Skeleton, batch: int = 8
) -> dict[str, float]:
    """OKS AP of ``model`` on ``val`` through the deployment path: letterbox, raw outputs, the family's
    numba decoder (``accuracy`` preset). In eval mode each family's ``forward`` returns what its ONNX does."""
    from edgepose.evaluation import evaluate_results
    from edgepose.families import decoder_config, make_decoder
    from edgepose.preprocess import preprocess

    dec_cfg = decoder_config(model.family, model.head_spec())
    decode = make_decoder(dec_cfg, dec_cfg["eval_preset"])
    names = decode.head.output_names
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[dict] = []
    with torch.no_grad():
        for start in range(0, len(val.images), batch):
            chunk = [preprocess(img, imgsz) for img in val.images[start : start + batch]]
            x = torch.from_numpy(np.concatenate([t for t, _ in chunk])).to(device)
            raw = [r.float().cpu().numpy() for r in model(x)]
            for b, (_, meta) in enumerate(chunk):
                poses = decode(dict(zip(names, (r[b : b + 1] for r in raw), strict=True)), meta)
                results += poses.to_coco_results(val.image_ids[start + b])
    model.train(was_training)
    stats = evaluate_results(val.coco, results, skeleton.sigmas_array)
    return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}
