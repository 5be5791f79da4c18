"""The Core ML runtime backend: predicts only on macOS, so these tests run there and are skipped elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import CAT_LABELS

pytestmark = pytest.mark.skipif(
    sys.platform != "darwin",
    reason="Core ML predicts only on macOS; the export it runs is tested on every platform in test_export_coreml.py",
)


def test_registered_on_macos() -> None:
    pytest.importorskip("coremltools")
    from inferd.runtime.backends import available_backends

    assert "coreml" in [backend.name for backend in available_backends()]


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_classifies_a_cat(default_package: Path, precision: str) -> None:
    pytest.importorskip("coremltools")
    from PIL import Image
    from skimage import data

    from inferd.io import image_input, to_tensor, top_k
    from inferd.runtime import load

    model = load(default_package, backend="coreml", compute_units="cpu_only", precision=precision)
    assert model.load_info.backend == "coreml" and model.load_info.precision == precision
    spec = image_input(model.manifest)
    scores = model.predict({spec.name: to_tensor(Image.fromarray(data.chelsea()), spec)[None]})["logits"]
    assert model.manifest.classifier is not None
    (ranked,) = top_k(scores, model.manifest.classifier.labels, 5)
    assert {p.label for p in ranked} & CAT_LABELS
    again = load(default_package, backend="coreml", compute_units="cpu_only", precision=precision)
    assert again.load_info.cached
