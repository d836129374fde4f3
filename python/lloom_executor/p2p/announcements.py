"""Model announcements: what we tell the network we serve, and what others told us.

`ModelCatalog` holds our current model descriptors (docs/PROTOCOL.md §3 field
lists) and builds the signed gossip JSON of a `SignedMessage<ModelAnnouncement>`
with the native codec, so the bytes verify in every reference node.
`NetworkView` keeps the verified announcements of other executors (their
models and prices), for pricing decisions later.

Threading: both live in the P2P (trio) thread. The asyncio side changes the
catalog only through `P2PNode.call` (see `services.update_models`), so no lock
is needed.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _native
from ..config import ModelConfig

log = logging.getLogger(__name__)

ANNOUNCEMENT_TYPES = ("Initial", "Update", "Removal", "Heartbeat")
PROTOCOL_VERSION = 1
MAX_CLOCK_SKEW_SECS = 300


def model_descriptor(
    model_id: str,
    *,
    backend_type: str = "unknown",
    max_context_length: int = 4096,
    features: Sequence[str] = ("chat",),
    architecture: str | None = None,
    model_size: str | None = None,
    performance: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    is_available: bool = True,
    input_token_price: int | str = 0,
    output_token_price: int | str = 0,
    minimum_fee: int | str | None = None,
) -> dict[str, Any]:
    """One `ModelDescriptor` dict in declaration order (the signing order).

    `metadata` may hold at most one key: the reference keeps it in a HashMap,
    so two keys would come out in random order and no one could verify the
    signature (docs/PROTOCOL.md §3).
    """
    meta = dict(metadata or {})
    if len(meta) > 1:
        raise ValueError("capabilities.metadata may hold at most one key (docs/PROTOCOL.md §3)")
    return {
        "model_id": model_id,
        "backend_type": backend_type,
        "capabilities": {
            "max_context_length": int(max_context_length),
            "features": list(features),
            "architecture": architecture,
            "model_size": model_size,
            "performance": dict(performance) if performance is not None else None,
            "metadata": meta,
        },
        "is_available": bool(is_available),
        "pricing": {
            "input_token_price": str(int(input_token_price)),
            "output_token_price": str(int(output_token_price)),
            "minimum_fee": None if minimum_fee is None else str(int(minimum_fee)),
        },
    }


def descriptor_from_config(model: ModelConfig, backend_type: str = "unknown") -> dict[str, Any]:
    """A config `[[models]]` entry as the network sees it (prices in wei)."""
    return model_descriptor(
        model.name,
        backend_type=backend_type,
        max_context_length=model.context_length,
        is_available=model.enabled,
        input_token_price=model.inbound_price_wei,
        output_token_price=model.outbound_price_wei,
    )


class ModelCatalog:
    """The models we announce. Trio thread only after the node starts (see module doc)."""

    def __init__(self, models: Iterable[ModelConfig | Mapping[str, Any]] = (), backend_type: str = "unknown") -> None:
        self.backend_type = backend_type
        self._models: list[dict[str, Any]] = self._normalize(models)
        self._nonce = itertools.count(time.time_ns() // 1000)
        self.version = 0  # bumped on every change

    def _normalize(self, models: Iterable[ModelConfig | Mapping[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in models:
            if isinstance(m, ModelConfig):
                out.append(descriptor_from_config(m, self.backend_type))
            else:
                out.append(dict(m))
        return sorted(out, key=lambda d: d["model_id"])

    @property
    def models(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self._models]

    def set_models(self, models: Iterable[ModelConfig | Mapping[str, Any]]) -> bool:
        """Replace the model set; True when anything (models, prices, availability) changed."""
        new = self._normalize(models)
        if new == self._models:
            return False
        self._models = new
        self.version += 1
        return True

    def announcement(self, key: _native.PrivateKey, kind: str, now: int | None = None) -> dict[str, Any]:
        """The `ModelAnnouncement` payload; a Removal carries no models."""
        if kind not in ANNOUNCEMENT_TYPES:
            raise ValueError(f"unknown announcement type {kind!r}")
        ts = int(time.time()) if now is None else now
        return {
            "executor_peer_id": key.peer_id,
            "executor_address": "0x" + bytes(key.address_bytes).hex(),
            "models": [] if kind == "Removal" else self.models,
            "announcement_type": kind,
            "timestamp": ts,
            "nonce": next(self._nonce),
            "protocol_version": PROTOCOL_VERSION,
        }

    def signed_json(self, key: _native.PrivateKey, kind: str) -> bytes:
        """The gossip bytes: JSON of `SignedMessage<ModelAnnouncement>`, signed by `key`."""
        now = int(time.time())
        return bytes(_native.encode_model_announcement_json(key, self.announcement(key, kind, now), now))


@dataclass
class ExecutorInfo:
    """What the network told us about one executor."""

    peer_id: str
    address: str  # 0x-hex, lowercase
    models: list[dict[str, Any]]
    announcement_type: str
    last_seen: float  # monotonic seconds
    timestamp: int  # the announcement's own timestamp
    announcements: int = 1

    def prices(self) -> dict[str, tuple[int, int]]:
        """model_id -> (input wei per token, output wei per token), for priced models."""
        out = {}
        for m in self.models:
            p = m.get("pricing")
            if p:
                try:
                    out[m["model_id"]] = (int(p["input_token_price"]), int(p["output_token_price"]))
                except (KeyError, TypeError, ValueError):
                    continue
        return out


class InvalidAnnouncement(ValueError):
    pass


def verify_announcement(data: bytes, source_peer_id: str | None = None, now: float | None = None) -> dict[str, Any]:
    """Decode and check one gossip announcement; returns the payload or raises InvalidAnnouncement.

    Checks: the signature recovers `signer`, `signer` is the announced
    `executor_address`, the gossip author (when given) is the announced peer
    id (the libp2p and Ethereum key are one, so nobody can announce for
    another), and the timestamp is not too far off.
    """
    try:
        decoded = _native.decode_model_announcement_json(data)
    except ValueError as exc:
        raise InvalidAnnouncement(f"undecodable: {exc}") from None
    payload = decoded.announcement
    if not decoded.signature_valid or decoded.signer is None:
        raise InvalidAnnouncement("bad signature")
    address = "0x" + bytes(decoded.signer).hex()
    if str(payload.get("executor_address", "")).lower() != address:
        raise InvalidAnnouncement("signer is not the executor_address")
    if source_peer_id is not None and payload.get("executor_peer_id") != source_peer_id:
        raise InvalidAnnouncement("gossip author is not the executor_peer_id")
    if payload.get("announcement_type") not in ANNOUNCEMENT_TYPES:
        raise InvalidAnnouncement(f"unknown type {payload.get('announcement_type')!r}")
    ts = decoded.timestamp or 0
    wall = time.time() if now is None else now
    if ts > wall + MAX_CLOCK_SKEW_SECS or ts < wall - MAX_CLOCK_SKEW_SECS:
        raise InvalidAnnouncement(f"timestamp {ts} too far from now")
    return payload


@dataclass
class NetworkView:
    """Other executors as their verified announcements describe them (trio thread only)."""

    expire_after_secs: float = 100.0  # a few missed 30 s heartbeats
    executors: dict[str, ExecutorInfo] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=lambda: {t: 0 for t in ANNOUNCEMENT_TYPES})
    invalid: int = 0
    removed: int = 0
    expired: int = 0

    def apply(self, payload: dict[str, Any], now: float | None = None) -> ExecutorInfo | None:
        """Record one verified announcement; a Removal drops the executor."""
        now = time.monotonic() if now is None else now
        kind = payload["announcement_type"]
        self.received[kind] = self.received.get(kind, 0) + 1
        peer_id = payload["executor_peer_id"]
        if kind == "Removal":
            if self.executors.pop(peer_id, None) is not None:
                self.removed += 1
            return None
        old = self.executors.get(peer_id)
        info = ExecutorInfo(
            peer_id=peer_id,
            address=str(payload["executor_address"]).lower(),
            models=list(payload.get("models") or []),
            announcement_type=kind,
            last_seen=now,
            timestamp=int(payload.get("timestamp", 0)),
            announcements=(old.announcements + 1) if old else 1,
        )
        self.executors[peer_id] = info
        return info

    def expire(self, now: float | None = None) -> list[str]:
        """Drop executors whose heartbeats stopped; returns their peer ids."""
        now = time.monotonic() if now is None else now
        gone = [p for p, info in self.executors.items() if now - info.last_seen > self.expire_after_secs]
        for p in gone:
            del self.executors[p]
        self.expired += len(gone)
        return gone

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """A plain copy, safe to hand to the asyncio side."""
        return {
            p: {
                "address": i.address,
                "models": [dict(m) for m in i.models],
                "prices": i.prices(),
                "announcement_type": i.announcement_type,
                "timestamp": i.timestamp,
                "announcements": i.announcements,
            }
            for p, i in self.executors.items()
        }
