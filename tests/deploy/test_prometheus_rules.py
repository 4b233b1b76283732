"""deploy/prometheus/rules.yml: valid, unit-tested with promtool, and naming only exported
metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import exported_series, metric_names, promtool

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
EXPECTED_ALERTS = {
    "ClearScanHighErrorRate",
    "ClearScanHighLatency",
    "ClearScanModelUnavailable",
    "ClearScanJobsQueuedTooLong",
    "ClearScanJobQueueDeep",
    "ClearScanJobFailures",
    "ClearScanOutOfDomainSpike",
    "ClearScanStorageErrors",
    "ClearScanStorageNotWritable",
    "ClearScanAuditChainBroken",
    "ClearScanAuditChainNotVerified",
}


def _rules() -> list[dict[str, str]]:
    doc = yaml.safe_load((RULES_DIR / "rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _run(*args: str) -> None:
    r = subprocess.run(
        [promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"


def test_promtool_check_rules():
    _run("check", "rules", "rules.yml")


def test_promtool_test_rules():
    _run("test", "rules", "tests.yml")


def test_every_alert_is_unit_tested_firing_and_quiet():
    assert {r["alert"] for r in _rules()} == EXPECTED_ALERTS
    tests = yaml.safe_load((RULES_DIR / "tests.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for name in EXPECTED_ALERTS:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} never fires in tests.yml"
        assert any(not c["exp_alerts"] for c in mine), f"{name} is never shown quiet in tests.yml"


def test_rules_name_exported_metrics(client, admin_headers, clinician_headers):
    exported = exported_series(client, admin_headers, clinician_headers)
    missing = {
        (r["alert"], name)
        for r in _rules()
        for name in metric_names(r["expr"])
        if name not in exported
    }
    assert not missing, f"rules read metrics /metrics does not export: {sorted(missing)}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (le, route) (rate(a_bucket{route!~"/x|y"}[5m])) / on(x) b_total > 0.5',
            {"a_bucket", "b_total"},
        ),
        ("time() - max(c_seconds) > 3 * 3600", {"c_seconds"}),
        ('histogram_quantile(0.95, rate(d_bucket{job=~"$job"}[$__rate_interval]))', {"d_bucket"}),
        ("e offset 5m and bool f", {"e", "f"}),
    ],
)
def test_metric_name_extraction(expr, names):
    assert metric_names(expr) == names
