"""The dashboard and the rules against a real Prometheus scraping a real `inferd serve` under a little traffic:
every panel's query and every recording rule returns data (no query that silently matches nothing, no metric
name the server does not expose), the rules load without errors, and the alert on a model that failed to load
goes off for the broken package in the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from inferd.deploy.monitoring import DASHBOARD, RULES
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="prometheus is not installed (Debian's prometheus package; .ci/run installs it)")

MODEL = "efficientnet-lite0"
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval is at a 1 s scrape interval and a short time range


@dataclass(frozen=True)
class Monitored:
    server: str
    prometheus: str
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return list(answer["data"]["result"])


def _wait(what: str, ready: Any, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s} s; logs:\n{log.read_text()[-3000:]}")


def _traffic(url: str, png: bytes) -> None:
    """Successes, client errors and refusals: bursts of concurrent requests against a queue of one."""
    with httpx.Client(base_url=url, timeout=30) as client:
        def predict(_: int) -> int:
            return client.post(f"/predict/{MODEL}", files={"image": ("cat.png", png, "image/png")}).status_code

        statuses: list[int] = []
        with ThreadPoolExecutor(6) as pool:
            for _ in range(4):
                statuses += pool.map(predict, range(6))
                statuses.append(client.post(f"/predict/{MODEL}", files={"image": ("x.png", b"not a picture")}).status_code)
                statuses.append(client.get("/v2/models/no-such-model").status_code)
                time.sleep(0.5)
    assert {200, 429, 400, 404} <= set(statuses), statuses


@pytest.fixture(scope="module")
def monitored(default_repository: Path, chelsea_png: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    root = tmp_path_factory.mktemp("monitoring")
    repository = root / "models"
    repository.mkdir()
    (repository / MODEL).symlink_to(default_repository / MODEL)
    (repository / "broken").mkdir()
    (repository / "broken" / "manifest.json").write_text(json.dumps({"name": "broken"}))
    port, prometheus_port = free_port(), free_port()
    server_url, prometheus_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prometheus_port}"
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "inferd", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))
    log = root / "log.txt"
    processes: list[subprocess.Popen[bytes]] = []
    with log.open("wb") as out:
        try:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "inferd", "serve", str(repository), "--port", str(port), "--max-queue-size", "1",
                 "--max-queue-delay-ms", "100", "--no-access-log"], stdout=out, stderr=out))
            processes.append(subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"], stdout=out, stderr=out))
            _wait("inferd serve is ready", lambda: httpx.get(f"{server_url}/v2/health/ready").status_code == 200, 120, log)
            monitored = Monitored(server_url, prometheus_url, log)
            _wait("prometheus scrapes inferd", lambda: httpx.get(f"{prometheus_url}/-/ready").status_code == 200
                  and monitored.query('up{job="inferd"} == 1'), 60, log)
            _traffic(server_url, chelsea_png)
            # A few scrapes and rule evaluations after the traffic, so every rate has samples on both sides of it.
            _wait("the traffic is scraped", lambda: monitored.query(
                'count_over_time(inferd_requests_total{status="429"}[1m]) >= 3'), 30, log)
            yield monitored
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def variables(monitored: Monitored) -> dict[str, str]:
    """As Grafana sets each variable to "All" of a multi-value variable: every value its own query finds, as a
    regex, the variables before it substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = _label_values(_substitute(variable["query"]["query"], values), monitored)
        assert found, f"the ${variable['name']} variable ({variable['query']['query']}) finds no value"
        values[variable["name"]] = "(" + "|".join(_grafana_escape(v) for v in found) + ")"
    return values


def _substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def _grafana_escape(value: str) -> str:
    """A regex metacharacter escaped inside a PromQL string, as Grafana's Prometheus datasource escapes it."""
    return re.sub(r"([\\$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def _label_values(query: str, monitored: Monitored) -> list[str]:
    """Grafana's label_values(selector, label), through Prometheus's series API."""
    parsed = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert parsed, query
    selector, label = parsed.groups()
    answer = httpx.get(f"{monitored.prometheus}/api/v1/series", params={"match[]": selector}, timeout=10).json()
    assert answer["status"] == "success", answer
    return sorted({series[label] for series in answer["data"] if series.get(label)})


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(f"{panel['title']} [{target['refId']}]", target["expr"])
            for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_variables_find_the_server_and_its_model(monitored: Monitored, variables: dict[str, str]) -> None:
    assert variables["model"] == f"({MODEL})"  # the broken package never loaded, so it serves nothing to show
    address = monitored.server.removeprefix("http://").replace(".", "\\\\.")
    assert variables["instance"] == f"({address})"


def test_every_panel_query_returns_data(monitored: Monitored, variables: dict[str, str]) -> None:
    empty = [title for title, expr in _panel_queries() if not monitored.query(_substitute(expr, variables))]
    assert not empty, f"panel queries that match nothing: {empty}"


def test_every_recording_rule_returns_data_and_every_rule_is_healthy(monitored: Monitored) -> None:
    groups = httpx.get(f"{monitored.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) == len(shipped)
    assert [(rule["name"], rule["health"], rule.get("lastError", "")) for rule in rules if rule["health"] != "ok"] == []
    records = [rule["name"] for rule in rules if rule["type"] == "recording"]
    assert {rule["record"] for rule in shipped if "record" in rule} == set(records)
    empty = [name for name in records if not monitored.query(f'{name}{{job="inferd"}}')]
    assert not empty, f"recording rules without data: {empty}"


def test_the_ratios_see_the_traffic(monitored: Monitored) -> None:
    """The refusals were counted as refusals, not as unavailability (429 is not an error of the SLO)."""
    [refused] = monitored.query(f'job_model:inferd_refusals:ratio_rate5m{{model="{MODEL}"}}')
    [errors] = monitored.query(f'job_model:inferd_request_errors:ratio_rate5m{{model="{MODEL}"}}')
    assert 0 < float(refused["value"][1]) < 1 and float(errors["value"][1]) == 0


def test_the_broken_package_sets_off_its_alert(monitored: Monitored) -> None:
    alerts = httpx.get(f"{monitored.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    failed = [a for a in alerts if a["labels"]["alertname"] == "InferdModelLoadFailed"]
    assert [a["labels"]["model"] for a in failed] == ["broken"] and failed[0]["state"] in ("pending", "firing")
    assert not [a for a in alerts if a["labels"]["alertname"] in ("InferdScrapeDown", "InferdTargetsMissing")]
