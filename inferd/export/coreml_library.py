"""coremltools itself, as the export uses it: imported on demand and quietly, its warnings gathered into notes for
the user, its deployment targets checked by name."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

from inferd.export.errors import ExportError

OLDEST_TARGET = "iOS15"  # ML programs need iOS15/macOS12


def import_coremltools() -> Any:
    # coremltools probes TensorFlow at import; keep TensorFlow's C++ start-up chatter out of the user's terminal.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with quiet():
            import coremltools
    except ImportError as exc:
        raise ExportError(f"the Core ML export needs coremltools: pip install 'inferd[coreml]' ({exc})") from exc
    return coremltools


@contextlib.contextmanager
def quiet(collect: list[str] | None = None) -> Iterator[None]:
    """coremltools draws tqdm bars on stderr and warns about untested torch versions; inferd reports progress itself.

    With `collect`, coremltools' warnings are gathered there instead of dropped
    (the compression passes warn about each weight they leave uncompressed).
    """
    logger = logging.getLogger("coremltools")
    level, propagate, handler = logger.level, logger.propagate, None
    logger.setLevel(logging.CRITICAL if collect is None else logging.WARNING)
    if collect is not None:
        handler = _Collector(collect)
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate
        if handler is not None:
            logger.removeHandler(handler)


class _Collector(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage().strip())


def notes(messages: list[str]) -> tuple[str, ...]:
    """One line per distinct message, counted: a pass warns once per weight it skips."""
    counts: dict[str, int] = {}
    for message in messages:
        general = re.sub(r"on \S+?\. Skipped this op\.", "on some weights, which stay uncompressed.", message)
        counts[general] = counts.get(general, 0) + 1
    return tuple(f"{text} ({count} weights)" if count > 1 else text for text, count in counts.items())


def deployment_target(ct: Any, name: str) -> Any:
    targets = ct.target.__members__
    oldest = targets[OLDEST_TARGET]
    usable = [n for n, t in targets.items() if t >= oldest]
    lookup = {n.lower(): n for n in usable}
    if name.lower() not in lookup:
        raise ExportError(f"minimum deployment target {name!r} is not one coremltools {ct.__version__} knows for ML "
                          f"programs; choose one of {', '.join(usable)}")
    return targets[lookup[name.lower()]]
