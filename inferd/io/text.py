"""Text preprocessing: strings in, the token tensors of a transformer out, with the package's own tokenizer.

Tokenization uses Hugging Face `tokenizers` (the Rust library that also backs
`transformers`' fast tokenizers) on the tokenizer.json shipped inside the
package, so serving needs neither torch, `transformers` nor a model hub, and the
vocabulary can never drift from the one the model was exported with.

Each batch is padded to its longest text rather than to `max_length`, as
sentence-transformers does: a batch of short queries then costs a few tokens per
row instead of hundreds. Padding changes no result, since the attention mask
hides the padding from attention and from mean pooling.
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

from inferd.errors import InvalidInput, PackageError, PayloadTooLarge
from inferd.manifest import Manifest
from inferd.types import TextType

MAX_TEXT_CHARS = 100_000
"""Longest text accepted, in characters. The tokenizer reads a text whole before cutting it to
`max_length` tokens, so without a bound one huge string would hold a batch up; 100k characters is
far beyond what any max_length keeps (256 tokens are about 1,000 characters of English)."""


class _Package(Protocol):
    manifest: Manifest
    path: Path | None


class _Model(Protocol):
    """What `embed` needs of a model: a `CompiledModel` (kept abstract so io does not import the runtime)."""

    manifest: Manifest
    package: _Package

    def predict(self, inputs: Any) -> dict[str, np.ndarray]: ...


class TextTokenizer:
    """A package's tokenizer set up as its TextType says: cut to `max_length` tokens, pad to the longest text.

    Safe to share between threads: the settings are fixed here and encoding only reads them.
    """

    def __init__(self, spec: TextType, tokenizer_file: str | os.PathLike[str]) -> None:
        self.spec = spec
        try:
            tokenizer = Tokenizer.from_file(os.fspath(tokenizer_file))
        except Exception as exc:  # tokenizers raises plain Exception for unreadable or malformed files
            raise PackageError(f"cannot read the tokenizer {tokenizer_file}: {exc}") from exc
        padding = tokenizer.padding
        if padding is None:
            raise PackageError(
                f"the tokenizer {tokenizer_file} defines no padding, so texts cannot form a batch; "
                "call enable_padding(pad_id=..., pad_token=...) on it and save it again"
            )
        tokenizer.enable_truncation(max_length=spec.max_length)
        tokenizer.enable_padding(direction=padding["direction"], pad_id=padding["pad_id"],
                                 pad_type_id=padding["pad_type_id"], pad_token=padding["pad_token"])
        self._tokenizer = tokenizer

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's token tensors for a batch of texts: int64 [len(texts), longest text in tokens]."""
        if not texts:
            raise InvalidInput("no texts to tokenize; send at least one")
        encodings = self._tokenizer.encode_batch(list(texts))
        spec = self.spec
        tensors = {spec.input_ids: np.array([e.ids for e in encodings], dtype=np.int64)}
        if spec.attention_mask:
            tensors[spec.attention_mask] = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if spec.token_type_ids:
            tensors[spec.token_type_ids] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return tensors


def text_input(manifest: Manifest, *, hint: str | None = None, name: str | None = None) -> TextType:
    """The one text input of a text model, or an error whose `hint` says what the caller should send instead;
    `name` is the one the caller knows the model by (a server's URL name), by default the package's."""
    name = name or manifest.name
    texts = [spec for spec in manifest.inputs if isinstance(spec, TextType)]
    if len(texts) != 1 or len(manifest.inputs) != 1:
        hint = hint or f"send tensors to /v2/models/{name}/infer"
        raise InvalidInput(f"model {name!r} does not take a single text input; {hint}")
    return texts[0]


def texts_from(values: Iterable[object]) -> list[str]:
    """Validate a batch of texts from a request: strings, or bytes in UTF-8 (V2 BYTES), each within MAX_TEXT_CHARS."""
    if isinstance(values, str | bytes):
        raise InvalidInput(f"expected a list of texts, got one string {values[:40]!r}; wrap it in a list: [\"...\"]")
    texts = []
    for index, value in enumerate(values):
        if isinstance(value, bytes | bytearray | memoryview):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"text {index} is not valid UTF-8 (at byte {exc.start}); encode texts as UTF-8") from None
        if not isinstance(value, str):
            raise InvalidInput(f"text {index} is not a string but {type(value).__name__} {reprlib.repr(value)}; "
                               "send every text as a string")
        if len(value) > MAX_TEXT_CHARS:
            raise PayloadTooLarge(
                f"text {index} has {len(value)} characters; the limit is {MAX_TEXT_CHARS} "
                "(the model reads only its first tokens anyway): send a shorter text or split it"
            )
        texts.append(value)
    if not texts:
        raise InvalidInput("no texts: send at least one string")
    return texts


def load_tokenizer(package: _Package) -> TextTokenizer:
    """The tokenizer of a saved text package, loaded once per package file (it takes tens of milliseconds)."""
    spec = text_input(package.manifest, hint="only text models have a tokenizer")
    if package.path is None:
        raise PackageError("this package is only in memory; save it first (package.save(path))")
    return _cached_tokenizer(spec, str(package.path / spec.tokenizer), package.manifest.files.get(spec.tokenizer, ""))


@lru_cache(maxsize=16)
def _cached_tokenizer(spec: TextType, file: str, sha256: str) -> TextTokenizer:
    """Keyed by the file's recorded digest too, so a package rebuilt in place gets its new tokenizer."""
    return TextTokenizer(spec, file)


def tokenize(model: _Model | _Package, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
    """The token tensors of `texts` for a text model (a loaded model or a saved package), ready for `predict`."""
    package: _Package = model.package if hasattr(model, "package") else model
    return load_tokenizer(package).tokenize(texts_from([texts] if isinstance(texts, str) else texts))


def infer_in_chunks(
    tokenizer: TextTokenizer, texts: Sequence[str], infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    *, chunk_rows: int,
) -> dict[str, np.ndarray]:
    """Tokenize and run `texts` in chunks of at most `chunk_rows`, grouped by length; outputs in the texts' order.

    Grouping by length is what sentence-transformers does: each chunk is padded to
    its own longest text, so short texts are not padded to a long one; chunking
    bounds the activations a long list would otherwise need all at once.
    """
    if chunk_rows < 1:
        raise InvalidInput(f"the batch size must be at least 1, got {chunk_rows}")
    order = np.argsort([-len(text) for text in texts], kind="stable")
    chunks = [infer(tokenizer.tokenize([texts[i] for i in order[start:start + chunk_rows]]))
              for start in range(0, len(texts), chunk_rows)]
    outputs = {}
    for name in chunks[0]:
        merged = np.concatenate([chunk[name] for chunk in chunks])
        outputs[name] = np.empty_like(merged)
        outputs[name][order] = merged
    return outputs


def embed(model: _Model, texts: str | Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """Embeddings of `texts`, one row each, like sentence-transformers' `model.encode(texts)`.

    Texts run in batches of `batch_size`, grouped by length; rows come back in
    the order given. A single string gives a single vector.
    """
    single = isinstance(texts, str)
    batch = texts_from([texts] if single else texts)
    outputs = [spec.name for spec in model.manifest.outputs]
    if len(outputs) != 1:
        raise InvalidInput(f"model {model.manifest.name!r} has outputs {outputs}; embed needs a model with one output")
    embeddings = infer_in_chunks(load_tokenizer(model.package), batch, model.predict, chunk_rows=batch_size)[outputs[0]]
    return embeddings[0] if single else embeddings
