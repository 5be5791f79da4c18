"""The Grafana dashboard and the Prometheus rules inferd ships, as files a deployment copies as they are."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
DASHBOARD = _HERE / "dashboard.json"
RULES = _HERE / "rules.yml"
