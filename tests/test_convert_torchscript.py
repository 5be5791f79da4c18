"""TorchScript files (torch.jit.save) convert through the PyTorch path; torch.save pickles are refused clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inferd
from inferd.convert import ConvertOptions, ImagePreprocessing, convert_torchscript
from inferd.errors import ConversionError
from inferd.types import ImageType
from tests.convert_models import LABELS, held_out, train_torch_cnn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's retirement notice

DIGIT = ImagePreprocessing(scale=1 / 255, color_layout="GRAY", resize="stretch")


@pytest.fixture(scope="module")
def cnn() -> Any:
    return train_torch_cnn()


@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript_file_converts_with_fidelity(how: str, cnn: Any, tmp_path: Path) -> None:
    path = tmp_path / f"digits_{how}.pt"
    scripted = torch.jit.trace(cnn, torch.zeros(1, 1, 8, 8)) if how == "trace" else torch.jit.script(cnn)
    torch.jit.save(scripted, str(path))
    images, labels = held_out(32)
    package = convert_torchscript(path, input_shape=(1, 1, 8, 8), image=DIGIT, classifier_labels=LABELS,
                                  sample_inputs=[{"image": image[None]} for image in images])
    manifest = package.manifest
    assert manifest.name == f"digits_{how}"
    assert manifest.fidelity is not None and manifest.fidelity.passed
    assert manifest.fidelity.max_abs_diff <= 1e-4 and manifest.fidelity.top1_agreement == 1.0
    assert isinstance(manifest.inputs[0], ImageType) and manifest.inputs[0].shape == (-1, 1, 8, 8)
    saved = package.save(tmp_path / "pkg")
    assert saved.path is not None
    logits = inferd.load(saved.path, precision="fp32").predict({"image": images[:, None]})["logits"]
    with torch.inference_mode():
        assert np.abs(logits - cnn(torch.from_numpy(images[:, None])).numpy()).max() <= 1e-4
    assert np.mean(logits.argmax(1) == labels) >= 0.8


def test_torchscript_loads_directly_once_shape_is_known(cnn: Any, tmp_path: Path) -> None:
    path = tmp_path / "digits.pt"
    torch.jit.save(torch.jit.script(cnn), str(path))
    with pytest.raises(ConversionError, match=r"does not record input shapes.*--input-shape"):
        inferd.load(path, cache_dir=tmp_path / "cache")
    options = ConvertOptions(input_shape=(1, 1, 8, 8))
    first = inferd.load(path, convert_options=options, cache_dir=tmp_path / "cache", precision="fp32")
    second = inferd.load(path, convert_options=options, cache_dir=tmp_path / "cache", precision="fp32")
    assert (first.load_info.conversion_cached, second.load_info.conversion_cached) == (False, True)
    images, _ = held_out(4)
    assert second.predict({"input": images[:, None]})["output"].shape == (4, 10)


def test_torch_save_pickles_are_not_torchscript(cnn: Any, tmp_path: Path) -> None:
    for name, value in (("weights.pth", cnn.state_dict()), ("module.pt", torch.nn.Sequential(torch.nn.Linear(4, 2)))):
        torch.save(value, tmp_path / name)
        with pytest.raises(ConversionError, match=r"not a TorchScript archive.*torch\.jit\.save"):
            inferd.load(tmp_path / name, cache_dir=tmp_path / "cache")
