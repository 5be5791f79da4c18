"""Errors a user can cause while compressing a package."""

from __future__ import annotations

from inferd.errors import InferdError


class OptimizeError(InferdError):
    """A compression request that cannot be carried out as asked; the message says what to change."""


class AccuracyBudgetError(OptimizeError):
    """A compression that loses more accuracy than `max_drop` allows even with layers kept at full precision."""
