"""Calibration inputs for static int8: an image folder, an .npz of arrays, or the model's sample photos.

Activation ranges are only as good as the inputs they were measured on, so a
calibration source that is missing or empty is an error, never a silent fallback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from inferd.errors import InvalidInput
from inferd.io import image_input
from inferd.manifest import Manifest
from inferd.optimize.errors import OptimizeError
from inferd.types import ImageType

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
Feeds = dict[str, np.ndarray]


class FeedReader(CalibrationDataReader):
    """Hands onnxruntime's calibrator one batch-of-1 feed at a time."""

    def __init__(self, feeds: Sequence[Feeds]) -> None:
        self._feeds = list(feeds)
        self._iterator: Iterator[Feeds] = iter(self._feeds)

    def get_next(self) -> Feeds | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def calibration_feeds(manifest: Manifest, source: str | os.PathLike[str] | None, limit: int = 200) -> list[Feeds]:
    """Single-sample feeds (leading dimension 1) from `source`, at most `limit` of them."""
    if source is None:
        return sample_feeds(manifest, limit)
    path = Path(source)
    if path.is_dir():
        return image_folder_feeds(manifest, path, limit)
    if path.suffix == ".npz" and path.is_file():
        return npz_feeds(manifest, path, limit)
    if not path.exists():
        raise OptimizeError(f"calibration data {path} does not exist: pass a folder of images or an .npz file")
    raise OptimizeError(f"calibration data {path} is neither a folder of images nor an .npz file of arrays")


def image_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_folder_feeds(manifest: Manifest, folder: Path, limit: int) -> list[Feeds]:
    from inferd.io import preprocess_image

    spec = single_image_input(manifest)
    paths = image_paths(folder)
    if not paths:
        raise OptimizeError(
            f"calibration folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "add a few hundred representative pictures"
        )
    return [{spec.name: preprocess_image(p, spec)[np.newaxis]} for p in paths[:limit]]


def npz_feeds(manifest: Manifest, path: Path, limit: int) -> list[Feeds]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {spec.name: data[spec.name] for spec in manifest.inputs if spec.name in data}
    missing = [spec.name for spec in manifest.inputs if spec.name not in arrays]
    if missing:
        raise OptimizeError(f"{path} has no arrays named {missing}; key the arrays by the model's input names")
    count = min(len(a) for a in arrays.values())
    return [{name: a[i : i + 1].astype(np.float32) for name, a in arrays.items()} for i in range(min(count, limit))]


def sample_feeds(manifest: Manifest, limit: int) -> list[Feeds]:
    """Augmented scikit-image photographs: real pixel statistics, for image models without data of their own."""
    from inferd.optimize.evalset import augmented_photos

    spec = single_image_input(manifest, hint="pass calibration data (a folder of images or an .npz keyed by input name)")
    return [{spec.name: t[np.newaxis]} for t in augmented_photos(spec, min(limit, 64), seed=1)]


def single_image_input(manifest: Manifest, hint: str = "pass an .npz keyed by input name") -> ImageType:
    """`inferd.io.image_input`, failing as an OptimizeError with a hint about the data to pass instead."""
    try:
        return image_input(manifest, hint=hint)
    except InvalidInput as exc:
        raise OptimizeError(exc.message) from None
