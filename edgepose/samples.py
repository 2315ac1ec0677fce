"""Sample media shipped inside the package: synthetic people images and a short video.

They are the embedded default for README's first command, the image content for BatchNorm calibration
of random weights, and the real pixels every parity check runs on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepose.preprocess import IMAGE_SUFFIXES, read_image


def assets_dir() -> Path:
    # The package is always installed as files (never zipped), so the folder beside this module is it.
    return Path(__file__).resolve().parent / "assets"


def sample_image_paths() -> list[Path]:
    folder = assets_dir() / "samples"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def sample_video_path() -> Path:
    return assets_dir() / "samples" / "people.mp4"


def sample_images(limit: int | None = None) -> list[np.ndarray]:
    """The shipped sample images as BGR arrays (at most ``limit``)."""
    paths = sample_image_paths()[:limit]
    if not paths:
        raise FileNotFoundError(f"no sample images in {assets_dir() / 'samples'}: the package is incomplete")
    return [read_image(p) for p in paths]


#: how the shipped sample media were made (stream 7 of val-v1: no training stream and no evaluation seed)
SAMPLE_SEED = 7
SAMPLE_IMAGES = 4
SAMPLE_VIDEO_SECONDS = 4.0


def write_sample_media(folder: Path, seed: int = SAMPLE_SEED) -> list[Path]:
    """Regenerate the shipped samples: JPEG stills (quality 90, small enough to ship) and the video."""
    import shutil
    import tempfile

    import cv2

    from edgepose.data.synthetic import generate_dataset, render_sample, sample_seed

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(SAMPLE_IMAGES):
        img, _ = render_sample(sample_seed(seed, i), "val-v1")
        path = folder / f"people_{i}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        written.append(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = generate_dataset(Path(tmp) / "v", 0, seed, "val-v1", video_seconds=SAMPLE_VIDEO_SECONDS)
        shutil.copy(out / "video.mp4", folder / "people.mp4")
    written.append(folder / "people.mp4")
    return written


if __name__ == "__main__":  # python -m edgepose.samples: rewrite edgepose/assets/samples
    for p in write_sample_media(assets_dir() / "samples"):
        print(p)
