"""The PP-OCR text-direction classifier (zoo "text-cls", ONNX opset 11) as a package, and real text crops for it.

The crops are the printed lines of scikit-image's `page()` scan, cut into 4:1
windows (the classifier's 48x192 input), upright and turned 180 degrees: the
two classes the model tells apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from inferd.convert import ImagePreprocessing, convert_onnx
from inferd.package import ModelPackage
from tests.zoo import zoo_file

# PaddleOCR's preprocessing for it: BGR, (pixel / 255 - 0.5) / 0.5, 48 pixels high, 192 wide.
PREPROCESSING = ImagePreprocessing(scale=1 / 127.5, bias=(-1.0,), color_layout="BGR", resize="stretch")
INPUT_SHAPE = (1, 3, 48, 192)


def text_cls_package() -> ModelPackage:
    """The classifier converted as a user converts it; still at opset 11, as the file is."""
    return convert_onnx(zoo_file("text-cls"), image=PREPROCESSING, input_shape=INPUT_SHAPE,
                        metadata={"name": "text-cls"})


def text_crops() -> list[Image.Image]:
    """Windows of the page's text lines, upright then each turned 180 degrees."""
    from skimage import data

    page = data.page()
    ink = (page < 110).mean(axis=1)
    rows = np.flatnonzero(ink > 0.02)
    # consecutive inked rows form a line; keep lines tall enough to be text
    lines = [run for run in np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if len(run) >= 8]
    upright = []
    for run in lines:
        top, bottom = max(0, run[0] - 2), min(page.shape[0], run[-1] + 3)
        width = 4 * (bottom - top)
        for left in range(0, page.shape[1] - width + 1, width // 2):
            upright.append(Image.fromarray(page[top:bottom, left:left + width]).convert("RGB"))
    return upright + [crop.rotate(180) for crop in upright]
