"""`lloom-executor settlement`: what became of served requests on chain, and putting rows back.

`status` reads the ledger's `settlements` table (no chain access; works while the
executor runs and when it is stopped): counts per state, the oldest row not settled
yet, the latest problem. `retry` puts ended rows (reverted, expired, unsettleable
with a client signature) back to pending for the running executor's settlement loop
to look at again; `recheck` asks the chain once now (the loop's own pass, from this
process) for an executor that is stopped.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import click

from .cli_config import config_option, load_or_exit


@click.group("settlement")
def settlement_group() -> None:
    """On-chain settlement of served requests ([blockchain])."""


def _book(config_path: Path | None) -> Any:
    from .ledger import Ledger
    from .ledger.settlements import SettlementBook

    config = load_or_exit(config_path).config
    data_dir = Path(config.storage.data_dir).expanduser()
    with Ledger.in_directory(data_dir) as ledger:  # creates or migrates the tables
        path = ledger.path
    return config, SettlementBook(path)


@settlement_group.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--rows", "show_rows", default=0, show_default=True, help="Also list the newest N rows.")
def settlement_status(config_path: Path | None, as_json: bool, show_rows: int) -> None:
    """Requests per settlement state, the oldest one not settled, the last problem."""
    config, book = _book(config_path)
    try:
        counts = book.counts()
        oldest = book.oldest_pending()
        problem = book.last_problem()
        report = {
            "enabled": config.blockchain.enabled,
            "contract": config.blockchain.contract_address,
            "chain_id": config.blockchain.chain_id,
            "states": counts,
            "oldest_pending_secs": round(time.time() - oldest, 1) if oldest is not None else None,
            "gas_spent_wei": book.gas_spent(),
            "last_problem": {"request_id": problem[0], "state": problem[1], "reason": problem[2]} if problem else None,
            "rows": book.rows(limit=show_rows) if show_rows else [],
        }
    finally:
        book.close()
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"settlement {'enabled' if report['enabled'] else 'disabled'}: {report['contract']} on chain {report['chain_id']}")
    for state, count in counts.items():
        click.echo(f"  {state:<13} {count}")
    if report["oldest_pending_secs"] is not None:
        click.echo(f"oldest not settled: {report['oldest_pending_secs']:.0f} s")
    click.echo(f"gas spent: {report['gas_spent_wei']} wei")
    if problem:
        click.echo(f"last problem: request {problem[0]} ({problem[1]}): {problem[2]}")
    for row in report["rows"]:
        click.echo(
            f"  #{row['request_id']} {row['state']} nonce {row['client_nonce']} {row['tx_hash'] or ''} {row['reason'] or ''}".rstrip()
        )


@settlement_group.command("retry")
@config_option
@click.option("--id", "request_ids", type=int, multiple=True, help="A request id (repeatable); default: every ended row.")
@click.option("--state", type=click.Choice(["reverted", "expired", "unsettleable"]), help="Only rows in this state.")
def settlement_retry(config_path: Path | None, request_ids: tuple[int, ...], state: str | None) -> None:
    """Put ended rows back to pending; the settlement loop checks them again (deadline, nonce, simulation)."""
    _, book = _book(config_path)
    try:
        moved = book.retry(request_ids=list(request_ids) or None, state=state)
    finally:
        book.close()
    click.echo(f"{moved} row{'' if moved == 1 else 's'} back to pending")


@settlement_group.command("recheck")
@config_option
def settlement_recheck(config_path: Path | None) -> None:
    """Run one settlement pass now from this process (for a stopped executor): follow sent
    transactions, send what is due. Needs the settlement key, as the executor does."""
    from .identity import load_identity
    from .settlement import SettlementError, Settler, load_settlement_key

    config = load_or_exit(config_path).config
    if not config.blockchain.enabled:
        raise click.ClickException("[blockchain] enabled is false: nothing to settle")
    if config.clustering.enabled:  # this pass has no epoch fence: it could race the elected leader on-chain
        raise click.ClickException("[clustering] is enabled: only the elected leader settles (start the member instead)")
    _, book = _book(config_path)
    book.close()
    identity = load_identity(config.identity)

    async def once() -> dict[str, Any]:
        settler = Settler(
            config.blockchain,
            book.path,
            bytes(identity.eth_key.address_bytes),
            load_settlement_key(config.blockchain, identity.address),
        )
        try:
            await settler.tick()
            await asyncio.to_thread(settler.refresh)
            return settler.snapshot()
        finally:
            await settler.stop()

    try:
        snapshot = asyncio.run(once())
    except SettlementError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(f"settlement pass failed: {type(exc).__name__}: {exc}") from None
    click.echo(json.dumps({"states": snapshot.get("states"), "last_error": snapshot.get("last_error")}))
