"""`lloom-executor cluster status`: the members, the leader and its epoch, and etcd's health.

Reads etcd directly (the `[clustering] etcd_endpoints` of the config), not a running
executor: it answers the same on any machine with the config, also while this member is
stopped, and says which etcd endpoints are healthy when the cluster is in trouble.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from .cli_config import config_option, load_or_exit


@click.group("cluster")
def cluster_group() -> None:
    """The members of a [clustering] executor (etcd)."""


async def cluster_report(endpoints: tuple[str, ...], prefix: str, ca_file: str | None) -> dict[str, Any]:
    """What `cluster status` prints; `etcd_error` says why members and leader are missing."""
    from .cluster.coordination import read_leadership, read_members
    from .cluster.etcd_client import EtcdClient, EtcdError

    client = EtcdClient(endpoints, timeout=2.0, ca_file=ca_file)
    report: dict[str, Any] = {"etcd": {}, "members": [], "leader": None, "epoch": None}
    try:
        report["etcd"] = await client.healthy()
        try:
            leadership = await read_leadership(client, prefix)
            report["leader"], report["epoch"] = leadership.node_id, leadership.epoch
            report["members"] = await read_members(client, prefix)
        except EtcdError as exc:
            report["etcd_error"] = str(exc)
    finally:
        await client.close()
    return report


@cluster_group.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cluster_status(config_path: Path | None, as_json: bool) -> None:
    """Members registered in etcd, the leader and its epoch, each etcd endpoint's health."""
    clustering = load_or_exit(config_path).config.clustering
    if not clustering.etcd_endpoints:
        raise click.ClickException("[clustering] etcd_endpoints is not set: no coordination to show")
    report = asyncio.run(cluster_report(clustering.etcd_endpoints, clustering.etcd_prefix, clustering.etcd_ca_file))
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(f"leader: {report['leader'] or 'none'}" + (f" (epoch {report['epoch']})" if report["epoch"] else ""))
        click.echo(f"members ({len(report['members'])}):")
        for member in report["members"]:
            click.echo(f"  {member['node_id']}  workers {member.get('workers', '?')}  {' '.join(member.get('addresses', []))}")
        click.echo("etcd:")
        for endpoint, healthy in report["etcd"].items():
            click.echo(f"  {endpoint}  {'healthy' if healthy else 'UNHEALTHY'}")
        if "etcd_error" in report:
            click.echo(f"etcd error: {report['etcd_error']}")
    if "etcd_error" in report:
        raise SystemExit(1)
