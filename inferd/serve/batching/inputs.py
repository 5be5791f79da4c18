"""What a queued request carries and how requests merge into one engine run: tensors, or a text model's strings.

The scheduler (`inferd.serve.batching.scheduler`) only decides which requests
leave together; an inputs object checks each request on arrival (unless a face
has checked it already, in its protocol's terms: `Checked`), says which
requests may share a batch (equal signatures), and runs a batch on a worker
thread: merge, infer, split the outputs back per request, with the rows of
each request as the bounds (`inferd.runtime.batches`).

Tensors merge by concatenation along the batch axis when their other
dimensions match. Text cannot merge that way: tokenizing pads a batch to its
longest text, so requests tokenized apart would have id tensors of different
widths, and padding them again at merge time would need to know which tensor
is the mask and what the pad id is, which the tokenizer already knows. So a
text model's requests carry their strings, and each merged batch is tokenized
at once on the worker thread, off the event loop: one padding per batch,
exactly what the model computes for those texts sent together.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from inferd.errors import InvalidInput
from inferd.io import TextTokenizer, infer_in_chunks, load_tokenizer, texts_from
from inferd.runtime import CompiledModel
from inferd.runtime.batches import rows, split, stack
from inferd.serve.phases import Phases
from inferd.serve.text import text_spec

Signature = tuple[tuple[str, tuple[int, ...], str], ...]
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Checked:
    """A request's inputs after its one check against the model, made by a face in its protocol's terms (V2
    names datatypes its own way): the batcher queues them as they are instead of checking them again."""

    feeds: dict[str, np.ndarray]

_TEXT_SIGNATURE: Signature = (("text", (), "str"),)
"""Every text request may join every other: the merged batch is tokenized, and so padded, as one."""


class BatchInputs(Protocol):
    """How one model's requests become engine runs: checked on arrival, grouped, then merged and run together."""

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The request's inputs, validated (raising InvalidInput) before it may queue; the leading axis counts rows."""
        ...

    def signature(self, feeds: Mapping[str, np.ndarray]) -> Signature:
        """Requests with equal signatures may share a batch."""
        ...

    def run(self, requests: list[dict[str, np.ndarray]]) -> tuple[list[Outputs], Phases]:
        """On a worker thread: merge, infer, and split the outputs back per request; also the seconds each of those
        took (input, infer, output)."""
        ...


class TensorInputs:
    """Tensors, merged by concatenation along the batch axis when their other dimensions match."""

    def __init__(self, model: CompiledModel) -> None:
        self.model = model

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.model.check_inputs(feeds)

    def signature(self, feeds: Mapping[str, np.ndarray]) -> Signature:
        """What must match for two requests to share a batch: every input's non-batch shape and dtype."""
        return tuple((name, tuple(value.shape[1:]), value.dtype.str) for name, value in feeds.items())

    def run(self, requests: list[dict[str, np.ndarray]]) -> tuple[list[Outputs], Phases]:
        """Stack, run, and split the outputs back by each request's rows.

        Stacking and splitting happen here, on the worker thread, rather than on
        the event loop because copying megabytes of pixels would stall every other
        request for that long; so does aligning a lone request's arrays, which may
        be unaligned views of its body (engines may read them with aligned loads).
        """
        started = time.perf_counter()
        if len(requests) == 1:
            merged = {name: value if value.flags.aligned else value.copy() for name, value in requests[0].items()}
        else:
            merged = stack(requests)
        stacked = time.perf_counter()
        outputs = self.model.engine.infer(merged)
        inferred = time.perf_counter()
        results = [outputs] if len(requests) == 1 else split(outputs, [rows(feeds) for feeds in requests])
        return results, Phases(input_s=stacked - started, infer_s=inferred - stacked,
                               output_s=time.perf_counter() - inferred)


class TextInputs:
    """A text model's requests: they hold strings, and each merged batch is tokenized as one.

    A batch runs in chunks of at most `chunk_rows` texts, grouped by length, so
    that one request with thousands of texts costs time, not memory for a
    thousands × max_length activation tensor, and short texts are not padded to a long one.
    """

    def __init__(self, model: CompiledModel, *, name: str | None = None, chunk_rows: int = 32,
                 tokenizer: TextTokenizer | None = None) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self.model = model
        self.name = name or model.name
        self.spec = text_spec(model, self.name)
        self.tokenizer = tokenizer or load_tokenizer(model.package)
        self.chunk_rows = chunk_rows

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if list(feeds) != [self.spec.name]:
            raise InvalidInput(f"model {self.name!r} takes one input {self.spec.name!r} (a list of texts); "
                               f"got {sorted(feeds)}")
        values = feeds[self.spec.name]
        if isinstance(values, np.ndarray) and values.ndim == 1:
            values = values.tolist()
        if not isinstance(values, list | tuple):
            shape = f" of shape {list(values.shape)}" if isinstance(values, np.ndarray) else ""
            raise InvalidInput(f"input {self.spec.name!r} must be a flat list of texts; got {type(values).__name__}{shape}")
        return {self.spec.name: text_rows(values)}

    def signature(self, feeds: Mapping[str, np.ndarray]) -> Signature:
        return _TEXT_SIGNATURE

    def run(self, requests: list[dict[str, np.ndarray]]) -> tuple[list[Outputs], Phases]:
        """Tokenizing is the batch's input phase; putting the chunks' outputs back in order and splitting them, its
        output phase."""
        started = time.perf_counter()
        texts = [text for feeds in requests for text in feeds[self.spec.name].tolist()]
        input_s = infer_s = 0.0
        mark = started  # the end of the previous chunk's run: the next chunk is tokenized from there

        def infer(tokens: dict[str, np.ndarray]) -> Outputs:
            nonlocal input_s, infer_s, mark
            ready = time.perf_counter()
            input_s += ready - mark
            outputs = self.model.engine.infer(tokens)
            mark = time.perf_counter()
            infer_s += mark - ready
            return outputs

        outputs = infer_in_chunks(self.tokenizer, texts, infer, chunk_rows=self.chunk_rows)
        results = split(outputs, [rows(feeds) for feeds in requests])
        return results, Phases(input_s=input_s, infer_s=infer_s, output_s=time.perf_counter() - mark)


def text_rows(values: Iterable[object]) -> np.ndarray:
    """A text request's strings as the batcher carries them, once checked (`inferd.io.texts_from`): a 1-D object
    array, since the scheduler counts rows on the leading axis of an array."""
    texts = texts_from(values)
    array = np.empty(len(texts), dtype=object)
    array[:] = texts
    return array
