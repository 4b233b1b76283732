"""deploy/grafana/clearscan.json: every panel's PromQL names a metric /metrics really exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import exported_series, metric_names

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GRAFANA / "clearscan.json").read_text())
    return data


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # rows hold their panels when collapsed
    return out


def test_dashboard_model():
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 41 and dash["uid"] == "clearscan"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in _panels(dash):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    titles = " ".join(p["title"].lower() for p in _panels(dash))
    for word in ("request rate", "p95", "predictions", "inference", "batch", "queue", "job"):
        assert word in titles
    assert "out-of-domain" in titles and "error" in titles


def test_panels_name_exported_metrics(client, admin_headers, clinician_headers):
    exported = exported_series(client, admin_headers, clinician_headers)
    used: dict[str, set[str]] = {}
    for p in _panels(_dashboard()):
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names, f"panel {p['title']!r}: no metric in {t['expr']!r}"
            for n in names:
                used.setdefault(n, set()).add(p["title"])
    missing = {n: sorted(t) for n, t in used.items() if n not in exported}
    assert not missing, f"panels read metrics /metrics does not export: {missing}"
    variables = [v for v in _dashboard()["templating"]["list"] if v["type"] == "query"]
    for v in variables:
        assert metric_names(v["definition"].replace("label_values(", "(")) <= exported | {"job"}


def test_provisioning_files():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clearscan.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "clearscan.yml").read_text())
    assert prov["providers"][0]["type"] == "file"
