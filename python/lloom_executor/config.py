"""Typed configuration, loaded from the operator's TOML.

Each section is a frozen dataclass; parsing collects every problem with its
key path instead of stopping at the first, so `config validate` can list them
all. Sections not covered here yet are parsed by later work (see issues).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import multiaddr

WEI_PER_ETH = 10**18


class ConfigError(ValueError):
    """One or more configuration problems, each naming its key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class _Reader:
    """Reads typed values out of a TOML table, recording problems by key path."""

    def __init__(self, problems: list[str], table: dict[str, Any], path: str):
        self.problems = problems
        self.table = table if isinstance(table, dict) else {}
        self.path = path
        if not isinstance(table, dict):
            problems.append(f"{path}: expected a table, got {type(table).__name__}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if name not in self.table:
            return default
        value = self.table[name]
        if isinstance(value, bool) and kind in (int, float):
            self.problems.append(f"{self.key(name)}: expected {kind.__name__}, got a boolean")
            return default
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problems.append(f"{self.key(name)}: expected {want}, got {type(value).__name__}")
            return default
        return value

    def positive_int(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.get(name, int, default)
        if value < minimum:
            self.problems.append(f"{self.key(name)}: must be >= {minimum}, got {value}")
            return default
        return value

    def multiaddrs(self, name: str, default: list[str], require_peer_id: bool = False) -> list[str]:
        value = self.get(name, (str, list), default)
        items = [value] if isinstance(value, str) else list(value)
        good: list[str] = []
        for i, item in enumerate(items):
            where = f"{self.key(name)}[{i}]" if not isinstance(value, str) else self.key(name)
            if not isinstance(item, str):
                self.problems.append(f"{where}: expected a multiaddr string")
                continue
            try:
                parsed = multiaddr.Multiaddr(item)
            except Exception as exc:  # multiaddr raises several unrelated types
                self.problems.append(f"{where}: not a valid multiaddr ({item!r}: {exc})")
                continue
            if require_peer_id and "p2p" not in [p.name for p in parsed.protocols()]:
                self.problems.append(f"{where}: must end in /p2p/<peer id> ({item!r})")
                continue
            good.append(item)
        return good


def eth_to_wei(text: str) -> int:
    """Exact conversion of a decimal ETH amount ("0.00001") to integer wei."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {text!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a non-negative decimal, got {text!r}")
    wei = amount * WEI_PER_ETH
    if wei != wei.to_integral_value():
        raise ValueError(f"{text!r} ETH is not a whole number of wei")
    return int(wei)


@dataclass(frozen=True)
class ProtocolsConfig:
    """[network.protocols]: each switch starts or skips a real subsystem."""

    enable_mdns: bool = True
    enable_kad: bool = True
    enable_gossipsub: bool = True
    enable_autonat: bool = True
    enable_relay: bool = True


@dataclass(frozen=True)
class NetworkConfig:
    """[network]"""

    listen_address: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    external_address: tuple[str, ...] = ()
    bootstrap_peers: tuple[str, ...] = ()
    relay_addresses: tuple[str, ...] = ()
    announce_interval_secs: int = 300
    protocols: ProtocolsConfig = field(default_factory=ProtocolsConfig)


@dataclass(frozen=True)
class RequestHandlingConfig:
    """[request_handling]"""

    max_concurrent_requests: int = 10
    request_timeout_secs: int = 600
    max_request_size_bytes: int = 1_048_576
    max_tokens_per_request: int = 4096
    allow_unsigned: bool = False
    stream_read_timeout_secs: float = 30.0
    max_inflight_streams: int = 1024


@dataclass(frozen=True)
class ModelConfig:
    """One [[models]] entry; prices are kept in wei per token."""

    name: str
    enabled: bool = True
    context_length: int = 4096
    inbound_price_wei: int = 0
    outbound_price_wei: int = 0
    max_batch_size: int = 1


@dataclass(frozen=True)
class Config:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    request_handling: RequestHandlingConfig = field(default_factory=RequestHandlingConfig)
    models: tuple[ModelConfig, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        problems: list[str] = []
        root = _Reader(problems, data, "")
        network = _parse_network(_Reader(problems, root.get("network", dict, {}), "network"))
        handling = _parse_request_handling(
            _Reader(problems, root.get("request_handling", dict, {}), "request_handling")
        )
        models = tuple(_parse_models(problems, root.get("models", list, [])))
        if problems:
            raise ConfigError(problems)
        return cls(network=network, request_handling=handling, models=models)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path).expanduser()
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: {exc}"]) from None
        return cls.from_dict(data)


def _parse_network(r: _Reader) -> NetworkConfig:
    d = NetworkConfig()
    p = _Reader(r.problems, r.get("protocols", dict, {}), r.key("protocols"))
    protocols = ProtocolsConfig(
        **{name: p.get(name, bool, getattr(ProtocolsConfig, name)) for name in ProtocolsConfig.__dataclass_fields__}
    )
    return NetworkConfig(
        listen_address=tuple(r.multiaddrs("listen_address", list(d.listen_address))),
        external_address=tuple(r.multiaddrs("external_address", [])),
        bootstrap_peers=tuple(r.multiaddrs("bootstrap_peers", [], require_peer_id=True)),
        relay_addresses=tuple(r.multiaddrs("relay_addresses", [], require_peer_id=True)),
        announce_interval_secs=r.positive_int("announce_interval_secs", d.announce_interval_secs),
        protocols=protocols,
    )


def _parse_request_handling(r: _Reader) -> RequestHandlingConfig:
    d = RequestHandlingConfig()
    timeout = r.get("stream_read_timeout_secs", float, d.stream_read_timeout_secs)
    if timeout <= 0:
        r.problems.append(f"{r.key('stream_read_timeout_secs')}: must be > 0")
        timeout = d.stream_read_timeout_secs
    return RequestHandlingConfig(
        max_concurrent_requests=r.positive_int("max_concurrent_requests", d.max_concurrent_requests),
        request_timeout_secs=r.positive_int("request_timeout_secs", d.request_timeout_secs),
        max_request_size_bytes=r.positive_int("max_request_size_bytes", d.max_request_size_bytes),
        max_tokens_per_request=r.positive_int("max_tokens_per_request", d.max_tokens_per_request),
        allow_unsigned=r.get("allow_unsigned", bool, d.allow_unsigned),
        stream_read_timeout_secs=timeout,
        max_inflight_streams=r.positive_int("max_inflight_streams", d.max_inflight_streams),
    )


def _parse_models(problems: list[str], entries: list[Any]) -> list[ModelConfig]:
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        r = _Reader(problems, entry, f"models[{i}]")
        name = r.get("name", str, "")
        if not name:
            problems.append(f"models[{i}].name: required")
            continue
        if name in seen:
            problems.append(f"models[{i}].name: duplicate model {name!r}")
        seen.add(name)
        prices = {}
        for side in ("inbound_price", "outbound_price"):
            text = r.get(side, str, "0")
            try:
                prices[side] = eth_to_wei(text)
            except ValueError as exc:
                problems.append(f"{r.key(side)}: {exc}")
                prices[side] = 0
        models.append(
            ModelConfig(
                name=name,
                enabled=r.get("enabled", bool, True),
                context_length=r.positive_int("context_length", 4096),
                inbound_price_wei=prices["inbound_price"],
                outbound_price_wei=prices["outbound_price"],
                max_batch_size=r.positive_int("max_batch_size", 1),
            )
        )
    return models
