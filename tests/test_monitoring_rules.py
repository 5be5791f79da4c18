"""The Prometheus rules inferd ships (inferd/deploy/monitoring/rules.yml), checked and unit-tested by the real
promtool: each alert fires when it should and stays quiet when it should not, each recording rule has its value,
and rules weakened in the ways that matter fail those tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from inferd.deploy.monitoring import RULES

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="promtool is not installed (Debian's prometheus package; .ci/run installs it)")

TESTS = Path(__file__).resolve().parent
UNIT_TESTS = [TESTS / "monitoring_rules_test.yml", TESTS / "monitoring_rules_ticket_test.yml"]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=120)


def _rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    checked = _promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_the_unit_tests_pass() -> None:
    tested = _promtool("test", "rules", *UNIT_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_every_alert_fires_and_stays_quiet_and_every_recording_rule_has_a_value() -> None:
    cases = [case for path in UNIT_TESTS for case in yaml.safe_load(path.read_text())["tests"]]
    alert_checks = [check for case in cases for check in case.get("alert_rule_test", [])]
    expressions = " ".join(check["expr"] for case in cases for check in case.get("promql_expr_test", [])
                           if check["exp_samples"])
    for rule in _rules():
        if "alert" in rule:
            outcomes = {bool(check["exp_alerts"]) for check in alert_checks if check["alertname"] == rule["alert"]}
            assert outcomes == {True, False}, f"{rule['alert']} is not tested both firing and quiet"
        else:
            assert f"{rule['record']}" in expressions, f"no test gives the value of {rule['record']}"


# Each mutation is a plausible mistake; the unit tests must catch every one.
MUTATIONS = {
    "429 counted against availability": ('status=~"5.."', 'status=~"5..|429"'),
    "latency threshold moved off the tested bucket": ('le="0.25"', 'le="0.5"'),
    "fast burn without its short window": (
        "job_model:inferd_request_errors:ratio_rate1h > (14.4 * 0.001)\n"
        "          and job_model:inferd_request_errors:ratio_rate5m > (14.4 * 0.001)",
        "job_model:inferd_request_errors:ratio_rate1h > (14.4 * 0.001)"),
    "refusals alert without its 15 minutes": ("for: 15m", "for: 1m"),
    "saturation threshold too high": ("saturation[5m]) > 0.75", "saturation[5m]) > 0.95"),
    "a dead target waited for too long": ('up{job="inferd"} == 0\n        for: 2m', 'up{job="inferd"} == 0\n        for: 10m'),
}


@pytest.mark.parametrize("mistake", MUTATIONS)
def test_a_weakened_rule_fails_the_unit_tests(mistake: str, tmp_path: Path) -> None:
    old, new = MUTATIONS[mistake]
    text = RULES.read_text()
    assert old in text, f"the mutation {mistake!r} no longer applies to rules.yml"
    (tmp_path / "inferd" / "deploy" / "monitoring").mkdir(parents=True)
    (tmp_path / "inferd" / "deploy" / "monitoring" / "rules.yml").write_text(text.replace(old, new))
    (tmp_path / "tests").mkdir()
    unit = tmp_path / "tests" / UNIT_TESTS[0].name
    shutil.copy(UNIT_TESTS[0], unit)
    checked = _promtool("check", "rules", tmp_path / "inferd" / "deploy" / "monitoring" / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr  # still valid rules: only the tests can tell
    tested = _promtool("test", "rules", unit)
    assert tested.returncode != 0 and "FAILED" in tested.stdout + tested.stderr, tested.stdout
