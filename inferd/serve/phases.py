"""Where one request's compute time goes, in the three phases of Triton's statistics extension.

`/v2/models/M/stats` splits compute into input (turning the request's tensors
into the model's input: decoding the body, decoding and preprocessing images,
tokenizing, stacking a batch), infer (the engine) and output (splitting a
batch's outputs, encoding the response), and perf_analyzer refuses a server
whose three counts differ. Part of each phase happens in the face (decoding,
encoding) and part on the batcher's worker thread, once for a whole batch
(stacking, the engine, splitting), so a request carries one `Phases` through
both, and the statistics take it whole when the request has succeeded: the
counts then move together, whenever they are read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(slots=True)
class Phases:
    """Seconds in each phase: one request's, or one batch run's (whose queue time is 0, as it waits as requests)."""

    input_s: float = 0.0
    queue_s: float = 0.0
    infer_s: float = 0.0
    output_s: float = 0.0

    @property
    def compute_s(self) -> float:
        return self.input_s + self.infer_s + self.output_s

    @contextmanager
    def input(self) -> Iterator[None]:
        """Times the block as input work; a block that raises fails the request, whose phases then count for nothing."""
        started = time.perf_counter()
        yield
        self.input_s += time.perf_counter() - started

    @contextmanager
    def output(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.output_s += time.perf_counter() - started

    def add_batch(self, batch: Phases, queue_s: float) -> None:
        """The request's share of the batch it ran in: all of the batch's compute, as Triton counts a batch's
        compute once for each request in it, and its own wait in the queue."""
        self.queue_s += queue_s
        self.input_s += batch.input_s
        self.infer_s += batch.infer_s
        self.output_s += batch.output_s
