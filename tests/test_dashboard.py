"""The Grafana dashboard: shipped twice identically, printed by the CLI, and every panel's PromQL
returns data from the real Prometheus after real load.

Grafana is not packaged here, so the dashboard is proven the way Grafana would use it: each
panel target's `expr`, with Grafana's variables replaced the way Grafana replaces them when the
dashboard shows all executors and models (`$instance` and `$model` take the variables' `allValue`
`.*`, `$__rate_interval` a window that holds several scrapes), is sent to Debian's Prometheus
scraping an executor that the Rust peer loaded (`prometheus_rig`); each must return at least one
series with a number (not NaN). The template variables' `label_values(...)` queries must list
the executor and the model too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lloom_executor.cli import main
from lloom_executor.cli_dashboards import dashboard_text
from prometheus_rig import MODEL, LoadedPrometheus, loaded_prometheus, wait_for

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "dashboards" / "executor.json"
PACKAGED = REPO / "python" / "lloom_executor" / "data" / "executor_dashboard.json"
# What Grafana substitutes; $__rate_interval is at least 4 scrape intervals, and a minute holds the load.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [p for p in out if p["type"] != "row"]


def expand(expr: str, dashboard: dict[str, Any]) -> str:
    """`expr` as Grafana sends it with "All" selected for every variable."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            expr = expr.replace(f"${var['name']}", var["allValue"]).replace(f"${{{var['name']}}}", var["allValue"])
    assert "$" not in expr, f"a variable the test does not know: {expr}"
    return expr


def test_the_packaged_copy_is_the_dashboard() -> None:
    assert PACKAGED.read_bytes() == DASHBOARD.read_bytes()
    assert dashboard_text() == DASHBOARD.read_text()


def test_export_prints_it_and_writes_it(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(main, ["dashboards", "export"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == load_dashboard()
    out = tmp_path / "executor.json"
    written = runner.invoke(main, ["dashboards", "export", "executor", "--output", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_bytes() == DASHBOARD.read_bytes()
    assert runner.invoke(main, ["dashboards", "export", "nope"]).exit_code == 2


def test_dashboard_shape() -> None:
    """What Grafana's import needs, and what the issue asks the dashboard to show."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "lloom-executor" and dashboard["schemaVersion"] >= 36
    every = panels(dashboard)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in every:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for name in ("instance", "model"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    text = " ".join(p["title"].lower() for p in every)
    for topic in ("requests/s", "latency", "tokens/s", "revenue", "refusals", "queue", "health", "per model"):
        assert topic in text, topic
    exprs = " ".join(t["expr"] for p in every for t in p["targets"])
    assert 'model=~"$model"' in exprs and 'instance=~"$instance"' in exprs


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, interop_peer: Path) -> Iterator[LoadedPrometheus]:
    with loaded_prometheus(tmp_path_factory.mktemp("dashboard"), interop_peer) as scene:
        yield scene


def _has_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


def test_every_panel_query_returns_data(loaded: LoadedPrometheus) -> None:
    dashboard = load_dashboard()
    queries = [(p["title"], t["refId"], expand(t["expr"], dashboard)) for p in panels(dashboard) for t in p["targets"]]
    assert len(queries) >= 15
    for title, ref, expr in queries:

        def with_a_number(expr: str = expr) -> list[dict[str, Any]] | None:
            result = loaded.prometheus.query(expr)
            return result if _has_number(result) else None

        # recording rules are evaluated once a second: poll until the one a panel reads has run
        wait_for(with_a_number, f"panel {title!r} target {ref}: {expr}", 30)


def test_template_variables_list_the_executor_and_the_model(loaded: LoadedPrometheus) -> None:
    dashboard = load_dashboard()
    found: dict[str, list[str]] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        assert match, var["query"]
        selector, label = expand(match.group(1), dashboard), match.group(2)
        response = loaded.prometheus.http.get(f"/api/v1/label/{label}/values", params={"match[]": selector})
        assert response.status_code == 200, response.text
        found[var["name"]] = response.json()["data"]
    assert found["instance"] == [loaded.instance]
    assert MODEL in found["model"]
