"""Augmented photographs: natural images for image models that bring no data of their own.

Crops, flips and colour jitter of scikit-image's photographs stand in for calibration data
(`inferd.optimize.calibration`) and make evaluation sets (`inferd.optimize.evalset`), so both draw on them here.
"""

from __future__ import annotations

import numpy as np

from inferd.types import ImageType


class AugmentedPhotos:
    """Random crops, flips and colour jitter of scikit-image's photographs; `photos(index)` is always the same
    tensor for the same index and seed, so a set can be made again, sample by sample, instead of kept."""

    def __init__(self, spec: ImageType, seed: int = 0) -> None:
        from PIL import Image

        from inferd.io.photos import sample_photos

        self.spec, self.seed = spec, seed
        self.photos = [Image.fromarray(p) for p in sample_photos()]

    def __call__(self, index: int) -> np.ndarray:
        from PIL import Image, ImageEnhance

        from inferd.io import to_tensor

        rng = np.random.default_rng((self.seed, index))
        photo = self.photos[index % len(self.photos)]
        width, height = photo.size
        side = int(min(width, height) * rng.uniform(0.4, 1.0))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        image = photo.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
        return to_tensor(image, self.spec)


def augmented_photos(spec: ImageType, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` augmented photos at once, for callers that want them all in memory (small models, benchmarks)."""
    photos = AugmentedPhotos(spec, seed)
    return [photos(index) for index in range(count)]
