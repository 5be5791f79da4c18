"""Real photographs for measuring a model where real inputs put it: scikit-image's sample images.

Random pixels are not what cameras produce: a reduced precision or a compression
that looks harmless on noise can flip a probability map on a real picture. The
photographs come from scikit-image (installed with inferd's model extras); where
it is missing, callers fall back to synthetic inputs and say so.
"""

from __future__ import annotations

import importlib.util

import numpy as np

SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")


def photos_available() -> bool:
    return importlib.util.find_spec("skimage") is not None


def sample_photos() -> list[np.ndarray]:
    """Real photographs (RGB uint8) from scikit-image."""
    from skimage import color, data

    photos = []
    for name in SAMPLE_PHOTOS:
        photo = getattr(data, name)()
        photos.append(color.gray2rgb(photo) if photo.ndim == 2 else photo[..., :3])
    return photos
