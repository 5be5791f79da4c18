"""Calibration inputs for static int8: an image folder, an .npz of arrays, or the model's sample photos.

Activation ranges are only as good as the inputs they were measured on, so a
calibration source that is missing or empty is an error, never a silent fallback.
Feeds are made when they are used, one at a time: a few hundred inputs of a
736x736 detector would otherwise hold gigabytes before the first one is run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from inferd.errors import InvalidInput
from inferd.io import image_input
from inferd.manifest import Manifest
from inferd.optimize.errors import OptimizeError
from inferd.optimize.photos import AugmentedPhotos
from inferd.types import ImageType

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
Feeds = dict[str, np.ndarray]
SAMPLE_PHOTOS = 64  # augmented photos stand in for calibration data: enough variety, a bounded cost


class LazyFeeds(Sequence[Feeds]):
    """`count` feeds, each made by `make(index)` when it is read and not kept."""

    def __init__(self, count: int, make: Callable[[int], Feeds]) -> None:
        self._count, self._make = count, make

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Feeds: ...

    @overload
    def __getitem__(self, index: slice) -> LazyFeeds: ...

    def __getitem__(self, index: int | slice) -> Feeds | LazyFeeds:
        if isinstance(index, slice):
            chosen = range(self._count)[index]
            return LazyFeeds(len(chosen), lambda i: self._make(chosen[i]))
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._make(index % self._count)


class FeedReader(CalibrationDataReader):
    """Hands onnxruntime's calibrator the feeds `start` to `stop` one at a time, made as they are asked for."""

    def __init__(self, feeds: Sequence[Feeds], start: int = 0, stop: int | None = None) -> None:
        self._feeds, self._range = feeds, range(start, len(feeds) if stop is None else min(stop, len(feeds)))
        self._iterator: Iterator[int] = iter(self._range)

    def get_next(self) -> Feeds | None:
        index = next(self._iterator, None)
        return None if index is None else self._feeds[index]

    def rewind(self) -> None:
        self._iterator = iter(self._range)

    def __len__(self) -> int:
        return len(self._range)


def calibration_feeds(manifest: Manifest, source: str | os.PathLike[str] | None, limit: int = 200) -> Sequence[Feeds]:
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


def image_folder_feeds(manifest: Manifest, folder: Path, limit: int) -> Sequence[Feeds]:
    from inferd.io import preprocess_image

    spec = single_image_input(manifest)
    paths = image_paths(folder)[:limit]
    if not paths:
        raise OptimizeError(
            f"calibration folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "add a few hundred representative pictures"
        )
    return LazyFeeds(len(paths), lambda i: {spec.name: preprocess_image(paths[i], spec)[np.newaxis]})


def npz_feeds(manifest: Manifest, path: Path, limit: int) -> Sequence[Feeds]:
    """Rows of the user's arrays (read once, as the .npz format allows), cast to float32 one row at a time."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {spec.name: data[spec.name] for spec in manifest.inputs if spec.name in data}
    missing = [spec.name for spec in manifest.inputs if spec.name not in arrays]
    if missing:
        raise OptimizeError(f"{path} has no arrays named {missing}; key the arrays by the model's input names")
    count = min(limit, *(len(a) for a in arrays.values()))
    return LazyFeeds(count, lambda i: {name: a[i : i + 1].astype(np.float32) for name, a in arrays.items()})


def sample_feeds(manifest: Manifest, limit: int) -> Sequence[Feeds]:
    """Augmented scikit-image photographs: real pixel statistics, for image models without data of their own."""
    spec = single_image_input(manifest, hint="pass calibration data (a folder of images or an .npz keyed by input name)")
    photos = AugmentedPhotos(spec, seed=1)
    return LazyFeeds(min(limit, SAMPLE_PHOTOS), lambda i: {spec.name: photos(i)[np.newaxis]})


def single_image_input(manifest: Manifest, hint: str = "pass an .npz keyed by input name") -> ImageType:
    """`inferd.io.image_input`, failing as an OptimizeError with a hint about the data to pass instead."""
    try:
        return image_input(manifest, hint=hint)
    except InvalidInput as exc:
        raise OptimizeError(exc.message) from None
