"""A user's own text encoder (torch.nn.TransformerEncoder over int64 token ids) through inferd's PyTorch converter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import inferd
from inferd.errors import ConversionError
from inferd.types import TensorType, TextType

VOCAB = 1000
IDS = TensorType(name="input_ids", shape=(-1, -1), dtype="int64")


class TinyTextEncoder(torch.nn.Module):
    """Token and position embeddings, a two-layer TransformerEncoder, mean over tokens, a linear head."""

    def __init__(self, vocab: int = VOCAB, dim: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.position = torch.nn.Embedding(128, dim)
        layer = torch.nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2)
        self.head = torch.nn.Linear(dim, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1])
        return self.head(self.encoder(self.embed(input_ids) + self.position(positions)).mean(1))


@pytest.fixture(scope="module")
def encoder() -> TinyTextEncoder:
    torch.manual_seed(0)
    return TinyTextEncoder().eval()


def eager(module: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(ids)).numpy()


@pytest.fixture(scope="module")
def package_dir(encoder: TinyTextEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # "embedding" is also the name dynamo gives nn.Embedding's output inside the graph; the converter must cope.
    package = inferd.convert(encoder, inputs=[IDS], outputs=["embedding"], metadata={"name": "tiny-text"})
    return package.save(tmp_path_factory.mktemp("convert") / "tiny-text").path  # type: ignore[return-value]


def test_converts_with_dynamic_batch_and_sequence(package_dir: Path) -> None:
    manifest = inferd.ModelPackage.load(package_dir).manifest
    fidelity = manifest.fidelity
    assert fidelity is not None and fidelity.passed and fidelity.max_abs_diff <= 1e-4
    assert manifest.source.framework == "pytorch (dynamo exporter)"
    assert manifest.inputs == [IDS]
    assert manifest.outputs[0].name == "embedding" and manifest.outputs[0].shape == (-1, 8)
    graph = onnx.load(str(package_dir / "model.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    written = [name for node in graph.graph.node for name in node.output]
    assert len(written) == len(set(written)) and "embedding" not in {info.name for info in graph.graph.value_info}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runs_other_lengths_than_the_example(encoder: TinyTextEncoder, package_dir: Path, backend: str) -> None:
    model = inferd.load(package_dir, backend=backend, precision="fp32")
    rng = np.random.default_rng(7)
    for shape in ((1, 3), (5, 8), (2, 40)):
        ids = rng.integers(0, VOCAB, shape)
        got = model.predict({"input_ids": ids})["embedding"]
        assert np.abs(got - eager(encoder, ids)).max() <= 1e-4, shape


def test_torchscript_freezing_the_sequence_length_is_caught(encoder: TinyTextEncoder) -> None:
    """Tracing bakes the example's sequence length into reshapes; the check on other sizes refuses that graph."""
    with pytest.raises(ConversionError, match="other batch or sequence sizes"):
        inferd.convert(encoder, inputs=[IDS], exporter="torchscript")


def test_own_text_model_with_its_tokenizer(encoder: TinyTextEncoder, tmp_path: Path) -> None:
    """A TextType input: the tokenizer (built here) ships in the package, and inferd.io tokenizes for it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["the", "a", "cat", "kitten", "dog", "sat", "on", "mat", "stock", "market", "fell"]
    tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    spec = TextType(max_length=16, attention_mask=None)  # this encoder takes token ids only

    with pytest.raises(ConversionError, match="assets"):
        inferd.convert(encoder, inputs=[spec])
    package = inferd.convert(encoder, inputs=[spec], assets={"tokenizer.json": tmp_path / "tokenizer.json"},
                             metadata={"name": "tiny-words"}).save(tmp_path / "tiny-words")
    model = inferd.load(package.path, backend="onnxruntime")
    tokens = inferd.io.tokenize(model, ["the cat sat on the mat", "a dog"])
    assert tokens["input_ids"].tolist() == [[2, 4, 7, 8, 2, 9], [3, 6, 0, 0, 0, 0]]
    got = model.predict(tokens)["output"]
    assert np.abs(got - eager(encoder, tokens["input_ids"])).max() <= 1e-4
