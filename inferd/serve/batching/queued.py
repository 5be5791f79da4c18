"""One request in a model's batch queue, and what a worker thread reports back for the batch it ran.

Kept apart from the scheduler, which only decides when these leave; a request
knows its rows, the signature that says whom it may share a batch with, and its
deadline, which bounds its time in the queue.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from inferd.errors import DeadlineExceeded
from inferd.serve.batching.inputs import Outputs, Signature
from inferd.serve.phases import Phases


@dataclass(eq=False)
class QueuedRequest:
    """One submitted request; compared by identity so it can key the queue dict."""

    feeds: dict[str, np.ndarray]
    rows: int
    signature: Signature
    enqueued: float
    deadline: float | None
    future: asyncio.Future[Outputs] = field(repr=False)
    started: bool = False
    """Set by the worker thread when the request's batch starts on the engine; from then on its deadline no longer
    applies, as the result is on the way."""
    phases: Phases | None = None
    """Where the request's time goes: its face's, which the batcher adds its queue time and its batch's compute to."""

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def deadline_error(self, model: str, now: float) -> DeadlineExceeded:
        """The error for a request of `model` (its served name) whose deadline has passed by `now`."""
        assert self.deadline is not None
        allowed_ms = (self.deadline - self.enqueued) * 1000
        if allowed_ms <= 0:
            return DeadlineExceeded(f"request for model {model!r} reached the queue after its deadline; "
                                    "give it a longer timeout")
        return DeadlineExceeded(
            f"request for model {model!r} waited {(now - self.enqueued) * 1000:.1f} ms in the queue; "
            f"the deadline was {allowed_ms:.1f} ms after it arrived"
        )


@dataclass
class BatchRun:
    """What a worker thread reports back for one batch: the requests it ran (not those expired while handed over),
    when it started them, and their outputs with the seconds the batch spent in each compute phase."""

    ran: list[QueuedRequest]
    started_at: float
    results: list[Outputs]
    phases: Phases
