"""The settlement state of served requests: one `settlements` row per served `requests` row.

Why a table of its own: a row's settlement goes through states long after the
request was answered (pending -> submitted -> confirmed or reverted; or expired,
or unsettleable), and each step must survive a crash, because a transaction sent
but not yet recorded could otherwise be sent again or forgotten. The request
rows themselves are never rewritten.

States:
  pending       waiting to be sent (`reason` says what it waits for, e.g. an earlier client nonce)
  submitted     a transaction is out: `tx_hash`, its signed bytes `raw_tx` (recorded *before* it is
                sent, so a restart resends exactly those bytes or finds their receipt) and `account_nonce`
  confirmed     its receipt is `confirmations` blocks deep with status 1
  reverted      its receipt has status 0 (`reason`: the revert reason, where the node tells it)
  expired       the commitment's deadline passed before it could be settled
  unsettleable  it never can be: no client EIP-712 signature (reference-style or unsigned request),
                the same commitment hash as a row already queued or settled (the contract keys records
                by request hash, which names no client), or a commitment the contract refuses

`SettlementBook` opens its own connection to the ledger file (WAL: the request
path's writer is not held up beyond SQLite's short write lock) and is used from
one thread at a time (the settlement loop runs its calls in a worker thread;
the `settlement` commands in their own process).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PENDING = "pending"
SUBMITTED = "submitted"
CONFIRMED = "confirmed"
REVERTED = "reverted"
EXPIRED = "expired"
UNSETTLEABLE = "unsettleable"
STATES = (PENDING, SUBMITTED, CONFIRMED, REVERTED, EXPIRED, UNSETTLEABLE)
RETRYABLE = (REVERTED, EXPIRED, UNSETTLEABLE)  # what `settlement retry` may put back to pending

NO_COMMITMENT = "no client EIP-712 signature: the request cannot be settled (reference-style or unsigned request)"
DUPLICATE_HASH = "the same request commitment hash is already queued or settled"

_SCAN_BATCH = 500


@dataclass(frozen=True)
class Settlement:
    """One row to settle, with what the transaction needs (from the request row)."""

    request_id: int
    request_hash: str
    client_address: str
    client_nonce: int
    deadline: int
    total_cost: int
    state: str
    tx_hash: str | None
    raw_tx: str | None
    account_nonce: int | None
    attempts: int
    commitment: dict[str, Any]  # requests.client_commitment, parsed
    receipt_signature: str  # the executor's, over the response commitment
    reason: str | None


class SettlementBook:
    """Reads and moves the settlement state of one ledger file."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, query: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(query, args).fetchall()

    # -- taking on new rows -----------------------------------------------------------------
    def scan(self, now: float | None = None) -> int:
        """Give every served row not seen yet its settlement row; returns how many were added."""
        now = time.time() if now is None else now
        added = 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                last = self._conn.execute("SELECT coalesce(max(request_id), 0) FROM settlements").fetchone()[0]
                rows = self._conn.execute(
                    "SELECT id, request_hash, client_address, total_cost, client_commitment FROM requests"
                    " WHERE id > ? AND status = 'served' ORDER BY id LIMIT ?",
                    (last, _SCAN_BATCH),
                ).fetchall()
                for request_id, request_hash, client, cost, commitment in rows:
                    nonce = deadline = None
                    state, reason = PENDING, None
                    if commitment is None or request_hash is None:
                        state, reason = UNSETTLEABLE, NO_COMMITMENT
                    else:
                        parsed = json.loads(commitment)
                        nonce, deadline = int(parsed["nonce"]), int(parsed["deadline"])
                        taken = self._conn.execute(
                            "SELECT 1 FROM settlements WHERE request_hash = ? AND state IN (?, ?, ?) LIMIT 1",
                            (request_hash, PENDING, SUBMITTED, CONFIRMED),
                        ).fetchone()
                        if taken:
                            state, reason = UNSETTLEABLE, DUPLICATE_HASH
                    self._conn.execute(
                        "INSERT INTO settlements (request_id, request_hash, client_address, client_nonce, deadline,"
                        " total_cost, state, reason, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (request_id, request_hash, client, nonce, deadline, cost, state, reason, now, now),
                    )
                    added += 1
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return added + (self.scan(now) if added == _SCAN_BATCH else 0)

    # -- reading ----------------------------------------------------------------------------
    def in_state(self, state: str, limit: int = 1000) -> list[Settlement]:
        """Rows in `state`, in client-nonce order per client (the order the contract accepts)."""
        rows = self._rows(
            "SELECT s.request_id, s.request_hash, s.client_address, s.client_nonce, s.deadline, s.total_cost, s.state,"
            " s.tx_hash, s.raw_tx, s.account_nonce, s.attempts, r.client_commitment, r.receipt_signature, s.reason"
            " FROM settlements s JOIN requests r ON r.id = s.request_id"
            " WHERE s.state = ? ORDER BY s.client_address, s.client_nonce, s.request_id LIMIT ?",
            (state, limit),
        )
        return [
            Settlement(
                request_id=r[0],
                request_hash=r[1],
                client_address=r[2],
                client_nonce=int(r[3]),
                deadline=int(r[4]),
                total_cost=int(r[5]),
                state=r[6],
                tx_hash=r[7],
                raw_tx=r[8],
                account_nonce=r[9],
                attempts=int(r[10]),
                commitment=json.loads(r[11]),
                receipt_signature=r[12],
                reason=r[13],
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        found = dict(self._rows("SELECT state, count(*) FROM settlements GROUP BY state"))
        return {state: int(found.get(state, 0)) for state in STATES}

    def oldest_pending(self) -> float | None:
        """Unix time the oldest row still pending or submitted was taken on (None: none is)."""
        (value,) = self._rows("SELECT min(created) FROM settlements WHERE state IN (?, ?)", (PENDING, SUBMITTED))[0]
        return float(value) if value is not None else None

    def gas_spent(self) -> int:
        return sum(int(r[0]) for r in self._rows("SELECT gas_cost FROM settlements WHERE gas_cost IS NOT NULL"))

    def last_problem(self) -> tuple[int, str, str] | None:
        """(request id, state, reason) of the latest row that ended badly or waits for something."""
        rows = self._rows(
            "SELECT request_id, state, reason FROM settlements WHERE reason IS NOT NULL AND state != ?"
            " ORDER BY updated DESC, request_id DESC LIMIT 1",
            (CONFIRMED,),
        )
        return (int(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    def rows(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        names = ("request_id", "state", "client_address", "client_nonce", "deadline", "tx_hash", "attempts", "reason")
        query = f"SELECT {', '.join(names)} FROM settlements"
        args: tuple[Any, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            args = (state,)
        query += " ORDER BY request_id DESC LIMIT ?"
        return [dict(zip(names, r, strict=True)) for r in self._rows(query, (*args, limit))]

    # -- moving -------------------------------------------------------------------------------
    def _update(self, request_id: int, expect: tuple[str, ...], **fields: Any) -> bool:
        fields["updated"] = time.time()
        sets = ", ".join(f"{name} = ?" for name in fields)
        marks = ", ".join("?" * len(expect))
        with self._lock:
            cursor = self._conn.execute(
                f"UPDATE settlements SET {sets} WHERE request_id = ? AND state IN ({marks})",
                (*fields.values(), request_id, *expect),
            )
            return cursor.rowcount == 1

    def note(self, request_id: int, reason: str) -> None:
        """A pending row waits: say for what."""
        self._update(request_id, (PENDING,), reason=reason)

    def submitted(self, request_id: int, tx_hash: str, raw_tx: str, account_nonce: int) -> bool:
        """Recorded before the transaction is sent (restart safety: see the module docstring)."""
        return self._update(
            request_id,
            (PENDING,),
            state=SUBMITTED,
            tx_hash=tx_hash,
            raw_tx=raw_tx,
            account_nonce=account_nonce,
            reason=None,
            attempts=self._attempts(request_id) + 1,
        )

    def _attempts(self, request_id: int) -> int:
        rows = self._rows("SELECT attempts FROM settlements WHERE request_id = ?", (request_id,))
        return int(rows[0][0]) if rows else 0

    def confirmed(self, request_id: int, gas_used: int, gas_cost: int, block_number: int) -> bool:
        return self._update(
            request_id,
            (SUBMITTED,),
            state=CONFIRMED,
            gas_used=gas_used,
            gas_cost=str(gas_cost),
            block_number=block_number,
            reason=None,
        )

    def reverted(self, request_id: int, reason: str, gas_used: int, gas_cost: int, block_number: int) -> bool:
        return self._update(
            request_id,
            (SUBMITTED,),
            state=REVERTED,
            reason=reason,
            gas_used=gas_used,
            gas_cost=str(gas_cost),
            block_number=block_number,
        )

    def back_to_pending(self, request_id: int, reason: str) -> bool:
        """A submitted transaction that the chain will never mine (its account nonce went to another)."""
        return self._update(request_id, (SUBMITTED,), state=PENDING, tx_hash=None, raw_tx=None, account_nonce=None, reason=reason)

    def expired(self, request_id: int, reason: str) -> bool:
        return self._update(request_id, (PENDING, SUBMITTED), state=EXPIRED, reason=reason)

    def unsettleable(self, request_id: int, reason: str) -> bool:
        return self._update(request_id, (PENDING,), state=UNSETTLEABLE, reason=reason)

    def retry(self, *, request_ids: list[int] | None = None, state: str | None = None) -> int:
        """Put rows that ended (reverted, expired, unsettleable with a commitment) back to pending.

        Rows without a client signature stay unsettleable: nothing can settle them."""
        where = ["s.state IN (?, ?, ?)", "r.client_commitment IS NOT NULL"]
        args: list[Any] = list(RETRYABLE)
        if state is not None:
            where.append("s.state = ?")
            args.append(state)
        if request_ids:
            where.append(f"s.request_id IN ({', '.join('?' * len(request_ids))})")
            args += request_ids
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE settlements SET state = ?, reason = NULL, tx_hash = NULL, raw_tx = NULL, account_nonce = NULL, attempts = 0,"
                f" updated = ? WHERE request_id IN (SELECT s.request_id FROM settlements s JOIN requests r"
                f" ON r.id = s.request_id WHERE {' AND '.join(where)})",
                (PENDING, time.time(), *args),
            )
            return int(cursor.rowcount)
