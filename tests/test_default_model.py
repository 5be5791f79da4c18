"""The default model, converted by inferd's own converter, classifies real photographs correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inferd.io import preprocess_image, to_tensor, top_k
from inferd.io.photos import sample_photos
from inferd.package import ModelPackage
from inferd.runtime import load
from tests.conftest import CAT_LABELS


def test_conversion_fidelity_recorded(default_package: Path) -> None:
    fidelity = ModelPackage.load(default_package).manifest.fidelity
    assert fidelity is not None and fidelity.passed
    assert fidelity.max_abs_diff <= 1e-3
    assert fidelity.top1_agreement == 1.0
    assert fidelity.samples >= 7  # the scikit-image photographs


def test_converted_matches_pytorch_on_photos(default_package: Path) -> None:
    """Re-checks the recorded fidelity independently: PyTorch eager vs the package in FP32 on both backends."""
    import torch

    from inferd.zoo import efficientnet_lite0 as zoo

    batch = np.stack([to_tensor(Image.fromarray(photo), zoo.IMAGE) for photo in sample_photos()])
    with torch.inference_mode():
        reference = zoo.torch_model()(torch.from_numpy(batch)).numpy()
    for backend in ("onnxruntime", "openvino"):
        logits = load(default_package, backend=backend, precision="fp32").predict({"image": batch})["logits"]
        assert np.abs(logits - reference).max() <= 1e-3, backend
        assert (logits.argmax(1) == reference.argmax(1)).all(), backend


@pytest.mark.parametrize(("photo", "expected"), [
    ("chelsea", CAT_LABELS),
    ("coffee", {"espresso", "cup"}),
])
def test_classifies_photographs(default_package: Path, photo: str, expected: set[str]) -> None:
    from skimage import data

    model = load(default_package)
    spec = model.manifest.inputs[0]
    assert spec.kind == "image"
    tensor = preprocess_image(Image.fromarray(getattr(data, photo)()), spec)
    classifier = model.manifest.classifier
    assert classifier is not None
    (ranked,) = top_k(model.predict({"image": tensor})["logits"], classifier.labels, 5)
    assert {p.label for p in ranked} & expected, [p.label for p in ranked]
    assert ranked[0].label in expected
