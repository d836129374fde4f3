"""The request ledger: one SQLite row per served request, committed before its answer leaves.

What a row holds: when, who (the request's signer address, the peer), what
(requested and served model, tokens, the request's prices, the exact total cost as
decimal text), the proofs (the request's signing digest, its EIP-712 commitment
digest, the receipt digest and signature) and how long it took (queued, backend,
total milliseconds). Revenue and request counts per model are kept in
`model_totals`, updated in the same transaction as the rows, so `totals()` is one
small read however long the ledger grows.

The modules: `entries.py` the values (a row, totals, status), `schema.py` the tables
and their migration, `refusals.py` what is kept of refusals (bounded, never waited
for), `writer.py` the one writer thread and its group commit, `store.py` the `Ledger`
everyone else uses.
"""

from .entries import (
    STATUS_REFUSED,
    STATUS_SERVED,
    LedgerEntry,
    LedgerError,
    LedgerStatus,
    LedgerTotals,
    ModelTotals,
)
from .refusals import RefusalBook
from .schema import SCHEMA_VERSION
from .store import DEFAULT_BUSY_TIMEOUT_SECS, LEDGER_FILENAME, Ledger

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_SECS",
    "LEDGER_FILENAME",
    "SCHEMA_VERSION",
    "STATUS_REFUSED",
    "STATUS_SERVED",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "LedgerStatus",
    "LedgerTotals",
    "ModelTotals",
    "RefusalBook",
]
