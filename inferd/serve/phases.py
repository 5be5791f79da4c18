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

    def input(self) -> _Timed:
        """Times the block as input work; a block that raises fails the request, whose phases then count for nothing."""
        return _Timed(self, "input_s")

    def output(self) -> _Timed:
        return _Timed(self, "output_s")

    def add_batch(self, batch: Phases, queue_s: float) -> None:
        """The request's share of the batch it ran in: all of the batch's compute, as Triton counts a batch's
        compute once for each request in it, and its own wait in the queue."""
        self.queue_s += queue_s
        self.input_s += batch.input_s
        self.infer_s += batch.infer_s
        self.output_s += batch.output_s


class _Timed:
    """Adds a block's seconds to one phase when it ends without an exception. A plain context manager: every
    request enters two, and a generator-based one costs several times its two clock reads."""

    __slots__ = ("_phase", "_phases", "_started")

    def __init__(self, phases: Phases, phase: str) -> None:
        self._phases, self._phase, self._started = phases, phase, 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            setattr(self._phases, self._phase, getattr(self._phases, self._phase) + time.perf_counter() - self._started)
