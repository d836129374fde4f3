"""The ledger's tables, and how an older ledger file is brought up to this schema.

Schema 1 grew by addition only: `requests.code` (the `RefusalCode` of a refused
row, NULL when served) and the `refusal_counts` table (refusals counted rather
than written one row each, see `refusals.py`). A file without them gets them in
place, inside the opening transaction (`ALTER TABLE ... ADD COLUMN` rewrites
nothing). Settlement added `requests.client_commitment` and the `settlements` table
(`settlements.py`), the same way; token accounting added `requests.token_source` (who counted
a served row's tokens: `usage`, `server_tokenizer` or `native:<encoding>`), whose DEFAULT 'usage'
is what rows written before it read. The version number stays 1 on purpose: an older release of this
software (what `update apply --backup` rolls back to) still opens the file and
writes rows it understands, with `code` left NULL. A file of a newer version is
refused rather than written with rows it does not expect.
"""

from __future__ import annotations

import sqlite3

from .entries import COLUMNS, COUNT_COLUMNS

SCHEMA_VERSION = 1

_TABLES = """
CREATE TABLE IF NOT EXISTS requests (
    id                INTEGER PRIMARY KEY,
    time              REAL    NOT NULL,            -- unix seconds when the answer was ready
    status            TEXT    NOT NULL CHECK (status IN ('served', 'refused')),
    reason            TEXT,                        -- the public sentence a refusal sent (NULL when served)
    client_address    TEXT,                        -- lowercase 0x... signer of the request (NULL: unsigned)
    peer_id           TEXT,                        -- the libp2p peer that sent it
    model             TEXT    NOT NULL,            -- our model the request resolved to ('' when none: unknown name)
    requested_model   TEXT    NOT NULL,            -- the name in the request (may be an alias)
    inbound_tokens    INTEGER NOT NULL,
    outbound_tokens   INTEGER NOT NULL,
    inbound_price     TEXT    NOT NULL,            -- wei per token, decimal text, as the request carried it
    outbound_price    TEXT    NOT NULL,
    total_cost        TEXT    NOT NULL,            -- wei, decimal text (exact, any size)
    request_digest    TEXT,                        -- 0x keccak256 of the signed request payload
    request_hash      TEXT,                        -- 0x EIP-712 LlmRequestCommitment digest
    receipt_digest    TEXT,                        -- 0x EIP-712 LlmResponseCommitment digest
    receipt_signature TEXT,                        -- 0x r||s||v by the executor over receipt_digest
    receipt_timestamp INTEGER,                     -- the commitment's timestamp
    queued_ms         REAL,                        -- waiting for a backend slot
    backend_ms        REAL,                        -- the backend call
    total_ms          REAL,                        -- frame received to answer ready
    code              TEXT,                        -- the RefusalCode of a refusal (NULL when served)
    client_commitment TEXT,                        -- JSON: the client's EIP-712 commitment signature and what
                                                   -- settlement needs of both commitments (NULL: not settleable)
    token_source      TEXT    DEFAULT 'usage'      -- who counted the tokens of a served row: usage (the server's
                                                   -- figures), server_tokenizer, native:<encoding> (NULL: refused)
);
CREATE INDEX IF NOT EXISTS requests_time ON requests (time);
CREATE INDEX IF NOT EXISTS requests_client ON requests (client_address, time);
CREATE TABLE IF NOT EXISTS model_totals (
    model           TEXT    PRIMARY KEY,
    served          INTEGER NOT NULL DEFAULT 0,
    refused         INTEGER NOT NULL DEFAULT 0,    -- all refusals: rows of their own and counted ones
    inbound_tokens  INTEGER NOT NULL DEFAULT 0,    -- of served requests
    outbound_tokens INTEGER NOT NULL DEFAULT 0,
    revenue         TEXT    NOT NULL DEFAULT '0'   -- wei, decimal text: sum of served total_cost
);
CREATE TABLE IF NOT EXISTS refusal_counts (
    id             INTEGER PRIMARY KEY,
    first_time     REAL    NOT NULL,               -- unix seconds of the first refusal counted here
    last_time      REAL    NOT NULL,               -- ... and of the last
    peer_id        TEXT    NOT NULL,               -- the sender, or '*': senders beyond the bound on distinct ones
    code           TEXT    NOT NULL,               -- the RefusalCode
    model          TEXT    NOT NULL,               -- our model ('' when none)
    count          INTEGER NOT NULL CHECK (count > 0),
    client_address TEXT,                           -- the last signer seen (NULL: unsigned)
    reason         TEXT                            -- the last public sentence sent
);
CREATE INDEX IF NOT EXISTS refusal_counts_time ON refusal_counts (first_time);
CREATE TABLE IF NOT EXISTS settlements (
    request_id     INTEGER PRIMARY KEY,            -- requests.id of the served row
    request_hash   TEXT,                           -- 0x EIP-712 LlmRequestCommitment digest
    client_address TEXT,
    client_nonce   INTEGER,                        -- the commitment's nonce (on-chain, per client)
    deadline       INTEGER,                        -- the commitment's deadline (unix seconds)
    total_cost     TEXT    NOT NULL DEFAULT '0',   -- wei, decimal text
    state          TEXT    NOT NULL CHECK (state IN
                       ('pending', 'submitted', 'confirmed', 'reverted', 'expired', 'unsettleable')),
    tx_hash        TEXT,                           -- the transaction sent (submitted and after)
    raw_tx         TEXT,                           -- its signed bytes: resent as they are after a restart
    account_nonce  INTEGER,                        -- the settlement account's nonce it used
    attempts       INTEGER NOT NULL DEFAULT 0,     -- transactions sent for this row
    gas_used       INTEGER,
    gas_cost       TEXT,                           -- wei paid (gas_used x effective gas price)
    block_number   INTEGER,
    reason         TEXT,                           -- why reverted/expired/unsettleable, or what it waits for
    created        REAL    NOT NULL,
    updated        REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS settlements_state ON settlements (state, client_address, client_nonce);
CREATE INDEX IF NOT EXISTS settlements_hash ON settlements (request_hash);
"""

INSERT_ROW = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
INSERT_COUNT = f"INSERT INTO refusal_counts ({', '.join(COUNT_COLUMNS)}) VALUES ({', '.join('?' * len(COUNT_COLUMNS))})"
SELECT_REVENUE = "SELECT revenue FROM model_totals WHERE model = ?"
UPSERT_TOTALS = (
    "INSERT INTO model_totals (model, served, refused, inbound_tokens, outbound_tokens, revenue)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET"
    " served = served + excluded.served, refused = refused + excluded.refused,"
    " inbound_tokens = inbound_tokens + excluded.inbound_tokens,"
    " outbound_tokens = outbound_tokens + excluded.outbound_tokens,"
    " revenue = excluded.revenue"
)
# A write that changes nothing but still appends a WAL frame and fsyncs: how an unwritable
# ledger finds out, with nothing else to write, that space has come back.
PROBE = f"PRAGMA user_version = {SCHEMA_VERSION}"


class NewerSchema(Exception):
    """The file was written by a newer version of this software."""


def create_or_migrate(conn: sqlite3.Connection) -> None:
    """Inside the caller's write transaction: bring the file to SCHEMA_VERSION."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise NewerSchema(f"ledger schema {version}; this version knows {SCHEMA_VERSION}")
    for statement in _TABLES.split(";"):  # not executescript(): it would COMMIT our transaction
        if statement.strip():
            conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "code" not in columns:  # a file written before `code` existed
        conn.execute("ALTER TABLE requests ADD COLUMN code TEXT")
    if "client_commitment" not in columns:  # ... before settlement existed (the `settlements` table is new too)
        conn.execute("ALTER TABLE requests ADD COLUMN client_commitment TEXT")
    if "token_source" not in columns:  # ... before token accounting said who counted (old rows read 'usage')
        conn.execute("ALTER TABLE requests ADD COLUMN token_source TEXT DEFAULT 'usage'")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
