"""A Lloom client: find executors, send signed LLM requests, verify signed answers.

Used by the tests, and by the `demo` and `benchmark` commands.
"""

from .commitments import SETTLEABLE_DEADLINE_SECS, ChainNonces, RequestCommitments
from .lloom_client import LloomClient
from .peer_identity import NotSecp256k1PeerId, evm_address_from_peer_id
from .types import (
    Answer,
    ExecutorInfo,
    ExecutorUnreachable,
    InvalidResponse,
    LloomClientError,
    Receipt,
    RequestTimeout,
)

__all__ = [
    "SETTLEABLE_DEADLINE_SECS",
    "Answer",
    "ChainNonces",
    "ExecutorInfo",
    "ExecutorUnreachable",
    "InvalidResponse",
    "LloomClient",
    "LloomClientError",
    "NotSecp256k1PeerId",
    "Receipt",
    "RequestCommitments",
    "RequestTimeout",
    "evm_address_from_peer_id",
]
