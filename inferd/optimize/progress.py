"""Progress of the long parts of compression (calibration, evaluation), told to whoever listens.

The optimize stage draws nothing: the CLI installs a listener (rich progress
bars) for the length of a command, and library callers get silence. A context
variable rather than a parameter keeps the listener out of every signature
between the command and the loop that does the work.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# (task id, description, units done, units in all): called once with 0 done, then after every step
Listener = Callable[[int, str, int, int], None]

_listener: ContextVar[Listener | None] = ContextVar("inferd_optimize_progress", default=None)
_ids = itertools.count()


@contextmanager
def reporting(listener: Listener) -> Iterator[None]:
    """Send the progress of the work done inside the `with` block to `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def task(description: str, total: int) -> Callable[[int], None]:
    """An `advance(units)` for one piece of work of `total` units (samples, say)."""
    listener = _listener.get()
    if listener is None:
        return lambda units: None
    key, done = next(_ids), 0
    listener(key, description, 0, total)

    def advance(units: int) -> None:
        nonlocal done
        done += units
        listener(key, description, done, total)

    return advance
