"""`lloom-executor dashboards export`: the Grafana dashboard that ships inside the package.

Why a command: an operator who installed from a wheel has no checkout, so the dashboard
(`dashboards/executor.json` in the repository, `data/executor_dashboard.json` in the
package; tests keep the two identical) is printed from the installed package, ready for
Grafana's "Import dashboard" or a provisioning directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

DASHBOARDS: dict[str, str] = {"executor": "executor_dashboard.json"}
"""Dashboard name (what `export` takes) -> its file under `lloom_executor/data/`."""


def dashboard_text(name: str = "executor") -> str:
    """The JSON text of a packaged dashboard, byte for byte as shipped."""
    return resources.files("lloom_executor").joinpath("data", DASHBOARDS[name]).read_text(encoding="utf-8")


@click.group("dashboards")
def dashboards_group() -> None:
    """Grafana dashboards for the executor's Prometheus metrics."""


@dashboards_group.command("export")
@click.argument("name", type=click.Choice(sorted(DASHBOARDS)), default="executor")
@click.option(
    "--output",
    "output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the JSON to this file instead of standard output.",
)
def dashboards_export(name: str, output: Path | None) -> None:
    """Print dashboard NAME (default: executor) as Grafana dashboard JSON.

    It expects a Prometheus data source that scrapes the nodes with the job name
    "lloom_executor" and loads deploy/prometheus/lloom-executor.rules.yml.
    """
    text = dashboard_text(name)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote the {name} dashboard to {output}", err=True)
