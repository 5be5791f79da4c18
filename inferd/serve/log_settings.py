"""Triton's logging extension: what the server logs, read and changed while it runs.

tritonclient's `get_log_settings` / `update_log_settings` (GET and POST
`/v2/logging`, and gRPC's LogSettings) let an operator turn on verbose logs to
chase a problem, or silence the per-request access lines, without a restart.

inferd's server logs through Python's logging under three loggers: the access
log (INFO, a line per request), model loading and the server itself (INFO,
WARNING, ERROR; DEBUG details when verbose). The settings act as one filter on
those loggers (process-wide, as Python's loggers are; a process serves one
app). Two of Triton's settings have no counterpart that could be
changed safely, so they only take their current values: `log_file` (inferd
writes to stderr, and a client that may choose a file the server appends to
could write into any file the server can open) and `log_format` (access lines
already carry an ISO 8601 time).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from inferd.errors import InvalidInput

SERVER_LOGGERS = ("inferd.access", "inferd.serve", "inferd.repository")
_SWITCHES = ("log_info", "log_warning", "log_error")
_FIXED = {"log_file": "", "log_format": "default"}


class LogSettings(logging.Filter):
    """The server's log switches, applied as a filter on its loggers while `installed`."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = dict.fromkeys(_SWITCHES, True)
        self.verbose_level = 0
        self._levels: dict[str, int] = {}

    def as_triton(self) -> dict[str, Any]:
        return {**_FIXED, **self.enabled, "log_verbose_level": self.verbose_level}

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the settings given (all or none: a bad one changes nothing); returns them all."""
        enabled, verbose = dict(self.enabled), self.verbose_level
        for name, value in changes.items():
            if name in _SWITCHES:
                if not isinstance(value, bool):
                    raise InvalidInput(f"{name} must be true or false, not {value!r}")
                enabled[name] = value
            elif name == "log_verbose_level":
                # 2.0 is a whole number too (JSON has one number type; JSON Schema's "integer" takes it).
                whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                if isinstance(value, bool) or not whole or value < 0:
                    raise InvalidInput(f"log_verbose_level must be a whole number >= 0, not {value!r}")
                verbose = int(value)
            elif name in _FIXED:
                if value != _FIXED[name]:
                    raise InvalidInput(f"{name} stays {_FIXED[name]!r} in inferd (it logs to stderr, access lines "
                                       f"carry an ISO 8601 time); redirect the server's stderr to choose a file")
            else:
                raise InvalidInput(f"unknown log setting {name!r}; inferd has {sorted(self.as_triton())}")
        self.enabled, self.verbose_level = enabled, verbose
        self._apply_verbosity()
        return self.as_triton()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return self.enabled["log_error"]
        if record.levelno >= logging.WARNING:
            return self.enabled["log_warning"]
        if record.levelno >= logging.INFO:
            return self.enabled["log_info"]
        return self.verbose_level > 0

    def install(self) -> None:
        for name in SERVER_LOGGERS:
            logging.getLogger(name).addFilter(self)
        self._apply_verbosity()

    def uninstall(self) -> None:
        for name in SERVER_LOGGERS:
            logger = logging.getLogger(name)
            logger.removeFilter(self)
            if name in self._levels:
                logger.setLevel(self._levels.pop(name))

    def _apply_verbosity(self) -> None:
        """DEBUG records exist only if the loggers let them through: lower their level while verbose."""
        for name in SERVER_LOGGERS:
            logger = logging.getLogger(name)
            if self.verbose_level > 0:
                self._levels.setdefault(name, logger.level)
                logger.setLevel(logging.DEBUG)
            elif name in self._levels:
                logger.setLevel(self._levels.pop(name))
