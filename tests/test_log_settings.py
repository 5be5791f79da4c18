"""Triton's log switches as a filter on the server's loggers (the HTTP and gRPC calls are tested with tritonclient)."""

from __future__ import annotations

import logging

import pytest

from inferd.errors import InvalidInput
from inferd.serve.log_settings import SERVER_LOGGERS, LogSettings


def _passes(settings: LogSettings, level: int) -> bool:
    return settings.filter(logging.LogRecord("inferd.serve", level, __file__, 1, "message", None, None))


def test_switches_filter_by_level_and_verbosity() -> None:
    settings = LogSettings()
    settings.update({"log_warning": False})
    assert [_passes(settings, level) for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)] \
        == [False, True, False, True]  # no DEBUG until verbose
    settings.update({"log_verbose_level": 1, "log_warning": True, "log_error": False})
    assert [_passes(settings, level) for level in (logging.DEBUG, logging.WARNING, logging.CRITICAL)] \
        == [True, True, False]


def test_installed_on_the_server_loggers_and_verbose_lowers_their_level() -> None:
    settings = LogSettings()
    levels = {name: logging.getLogger(name).level for name in SERVER_LOGGERS}
    settings.install()
    try:
        settings.update({"log_verbose_level": 2})
        assert all(settings in logging.getLogger(name).filters for name in SERVER_LOGGERS)
        assert all(logging.getLogger(name).level == logging.DEBUG for name in SERVER_LOGGERS)
    finally:
        settings.uninstall()
    assert all(settings not in logging.getLogger(name).filters for name in SERVER_LOGGERS)
    assert {name: logging.getLogger(name).level for name in SERVER_LOGGERS} == levels


def test_a_bad_update_changes_nothing() -> None:
    settings = LogSettings()
    with pytest.raises(InvalidInput, match="log_verbose_level must be a whole number"):
        settings.update({"log_info": False, "log_verbose_level": 1.5})
    assert settings.as_triton()["log_info"] is True
