"""The values of the ledger: one row (`LedgerEntry`), the totals read back, and what a row stores.

A leaf of the ledger package: plain data and its conversion to the tuple SQLite
stores, so validation happens on the caller's thread, before anything reaches the
writer (a bad entry never poisons a group commit it would have shared).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

STATUS_SERVED = "served"
STATUS_REFUSED = "refused"

COLUMNS = (
    "time",
    "status",
    "reason",
    "client_address",
    "peer_id",
    "model",
    "requested_model",
    "inbound_tokens",
    "outbound_tokens",
    "inbound_price",
    "outbound_price",
    "total_cost",
    "request_digest",
    "request_hash",
    "receipt_digest",
    "receipt_signature",
    "receipt_timestamp",
    "queued_ms",
    "backend_ms",
    "total_ms",
    "code",
    "client_commitment",
    "token_source",
)
# Positions in a row tuple that the writer reads to keep `model_totals` (the same order as COLUMNS).
COL_TIME, COL_STATUS, COL_REASON, COL_CLIENT, COL_PEER, COL_MODEL = 0, 1, 2, 3, 4, 5
COL_INBOUND, COL_OUTBOUND, COL_COST, COL_CODE = 7, 8, 11, 20
assert [COLUMNS[i] for i in (COL_TIME, COL_PEER, COL_MODEL, COL_INBOUND, COL_COST, COL_CODE)] == [
    "time",
    "peer_id",
    "model",
    "inbound_tokens",
    "total_cost",
    "code",
]

COUNT_COLUMNS = ("first_time", "last_time", "peer_id", "code", "model", "count", "client_address", "reason")


class LedgerError(RuntimeError):
    """The ledger cannot be opened or written (the row is NOT recorded)."""


def _hex(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return "0x" + bytes(value).hex()


def wei(text: str, what: str) -> int:
    """A decimal string of wei as an int (exact, any size); ValueError otherwise."""
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        raise ValueError(f"{what} must be a decimal string of wei, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class LedgerEntry:
    """One answered request. Digests/signatures: bytes or 0x-hex text; stored as 0x-hex.
    `code`: the `RefusalCode` string of a refusal (NULL for served rows, like `reason`).
    `token_source`: who counted a served row's tokens (NULL for refusals: nothing was charged)."""

    status: str  # STATUS_SERVED or STATUS_REFUSED
    model: str
    requested_model: str | None = None  # defaults to `model`
    client_address: str | None = None
    peer_id: str | None = None
    inbound_tokens: int = 0
    outbound_tokens: int = 0
    inbound_price: str = "0"
    outbound_price: str = "0"
    total_cost: str = "0"
    reason: str | None = None
    request_digest: bytes | str | None = None
    request_hash: bytes | str | None = None
    receipt_digest: bytes | str | None = None
    receipt_signature: bytes | str | None = None
    receipt_timestamp: int | None = None
    queued_ms: float | None = None
    backend_ms: float | None = None
    total_ms: float | None = None
    time: float = field(default_factory=time.time)
    code: str | None = None
    client_commitment: str | None = None  # JSON: the client's EIP-712 signature + both commitments (settlement)
    token_source: str | None = None  # who counted the tokens charged: usage | server_tokenizer | native:<encoding>

    def row(self, code: str | None = None) -> tuple[Any, ...]:
        """The stored tuple (COLUMNS order), validated; `code` overrides the entry's own."""
        if self.status not in (STATUS_SERVED, STATUS_REFUSED):
            raise ValueError(f"status must be {STATUS_SERVED!r} or {STATUS_REFUSED!r}, got {self.status!r}")
        wei(self.total_cost, "total_cost")
        return (
            float(self.time),
            self.status,
            self.reason,
            self.client_address.lower() if self.client_address else None,
            self.peer_id,
            self.model,
            self.requested_model if self.requested_model is not None else self.model,
            int(self.inbound_tokens),
            int(self.outbound_tokens),
            str(self.inbound_price),
            str(self.outbound_price),
            self.total_cost,
            _hex(self.request_digest),
            _hex(self.request_hash),
            _hex(self.receipt_digest),
            _hex(self.receipt_signature),
            self.receipt_timestamp,
            self.queued_ms,
            self.backend_ms,
            self.total_ms,
            code if code is not None else self.code,
            self.client_commitment,
            self.token_source,
        )


@dataclass(frozen=True)
class ModelTotals:
    served: int
    refused: int  # every refusal: those with a row of their own and those only counted
    inbound_tokens: int
    outbound_tokens: int
    revenue: int  # wei


@dataclass(frozen=True)
class LedgerTotals:
    by_model: dict[str, ModelTotals]

    @property
    def served(self) -> int:
        return sum(t.served for t in self.by_model.values())

    @property
    def refused(self) -> int:
        return sum(t.refused for t in self.by_model.values())

    @property
    def revenue(self) -> int:
        return sum(t.revenue for t in self.by_model.values())

    def revenue_by_model(self) -> dict[str, int]:
        return {model: t.revenue for model, t in self.by_model.items()}


@dataclass(frozen=True)
class LedgerStatus:
    """Whether the ledger can write now, and what its writer has done (for health and metrics).

    `commits` counts committed transactions: with `synchronous=FULL` each is one fsync
    of the WAL, so it is the number the group commit keeps low. `write_errors` counts
    transactions that failed (each failed every served row in it). `last_error` is
    SQLite's message for the latest failure (for the operator, never for clients)."""

    writable: bool
    commits: int
    write_errors: int
    last_error: str | None
    rows: int  # rows of `requests` written by this process
    refusals_counted: int  # refusals written only as part of a `refusal_counts` row
    refusals_pending: int  # refusals held in memory, not written yet
