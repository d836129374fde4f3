"""Pricing strategies: exact integer wei, dynamic thresholds and interval, market median and bounds.

Expected values are written out by hand (or with plain integer arithmetic in
the test), never computed by the module's helpers. Market input is the real
shape: a `NetworkView` fed announcement payloads and read with `snapshot()`.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from lloom_executor.config import Config, ModelConfig, PricingConfig, parse_config
from lloom_executor.p2p.announcements import NetworkView, model_descriptor
from lloom_executor.pipeline.pricing import PricingEngine, backend_load

BIG = 10**30


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Load:
    """A load probe that counts how often it is read."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.value


def model(name: str, inbound: int, outbound: int) -> ModelConfig:
    return ModelConfig(name=name, inbound_price_wei=inbound, outbound_price_wei=outbound)


def pricing(strategy: str, **kw: Any) -> PricingConfig:
    return PricingConfig(strategy=strategy, **kw)


def engine(strategy: str, models: list[ModelConfig], **kw: Any) -> PricingEngine:
    cfg = {k: kw.pop(k) for k in list(kw) if k.endswith("multiplier") or k == "update_interval_secs"}
    return PricingEngine(pricing(strategy, **cfg), {m.name: m for m in models}, **kw)


# -- fixed ------------------------------------------------------------------------------
def test_fixed_from_the_manuals_toml_is_exact_wei() -> None:
    text = """
[[models]]
name = "llama-2-13b-chat"
inbound_price = "0.00001"
outbound_price = "0.00002"
[pricing]
strategy = "fixed"
"""
    config, report = parse_config(tomllib.loads(text))
    assert not report.errors
    e = PricingEngine(config.pricing, {m.name: m for m in config.models})
    assert e.current_price("llama-2-13b-chat") == (10**13, 2 * 10**13)
    assert e.prices() == {"llama-2-13b-chat": (10**13, 2 * 10**13)}
    with pytest.raises(KeyError):
        e.current_price("unknown")


def test_fixed_huge_prices_times_a_decimal_multiplier_round_up() -> None:
    e = engine("fixed", [model("m", BIG, 2 * BIG + 1)], base_multiplier=1.1)
    # 1.1 is read as 11/10 (not the binary float): 10**30 * 11/10 exactly, and
    # (2*10**30 + 1) * 11/10 = 22*10**29 + 1.1 -> rounded up to + 2
    assert e.current_price("m") == (11 * 10**29, 22 * 10**29 + 2)
    assert engine("fixed", [model("m", 3, 3)], base_multiplier=0.5).current_price("m") == (2, 2)  # 1.5 -> 2
    assert engine("fixed", [model("m", 0, 7)], base_multiplier=1.0).current_price("m") == (0, 7)


# -- dynamic ----------------------------------------------------------------------------
def dynamic(load: Load, clock: Clock, interval: int = 300) -> PricingEngine:
    return engine(
        "dynamic",
        [model("m", BIG, 3 * BIG + 1)],
        base_multiplier=1.0,
        peak_multiplier=1.5,
        off_peak_multiplier=0.8,
        update_interval_secs=interval,
        load=load,
        clock=clock,
    )


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (0.0, (8 * 10**29, (24 * 10**29 + 1))),  # (3e30+1)*0.8 = 2.4e30 + 0.8 -> up
        (0.2, (8 * 10**29, (24 * 10**29 + 1))),  # at the low threshold: off-peak
        (0.2000001, (BIG, 3 * BIG + 1)),  # just above: base
        (0.5, (BIG, 3 * BIG + 1)),
        (0.7999999, (BIG, 3 * BIG + 1)),  # just below high: base
        (0.8, (15 * 10**29, 45 * 10**29 + 2)),  # at the high threshold: peak; (3e30+1)*1.5 -> up
        (3.0, (15 * 10**29, 45 * 10**29 + 2)),  # queueing beyond capacity: still peak
    ],
)
def test_dynamic_thresholds_at_their_edges(load: float, expected: tuple[int, int]) -> None:
    e = dynamic(Load(load), Clock())
    assert e.current_price("m") == expected
    assert e.load_sample == load


def test_backend_load_definition_hits_the_thresholds_exactly() -> None:
    assert backend_load(8, 10) == 0.8 and backend_load(4, 5) >= 0.8
    assert backend_load(2, 10) == 0.2 and backend_load(1, 5) <= 0.2
    assert dynamic(Load(backend_load(8, 10)), Clock()).multiplier == 1.5
    assert dynamic(Load(backend_load(2, 10)), Clock()).multiplier == pytest.approx(0.8)


def test_dynamic_recomputes_once_per_interval_not_per_request() -> None:
    load, clock = Load(0.5), Clock(100.0)
    e = dynamic(load, clock, interval=300)
    assert load.reads == 1 and e.version == 1
    load.value = 0.9
    for step in range(50):  # many requests inside the interval: no new load reading
        clock.t = 100.0 + step * 5.99
        assert e.current_price("m") == (BIG, 3 * BIG + 1)
    clock.t = 399.999
    assert e.current_price("m") == (BIG, 3 * BIG + 1)
    assert load.reads == 1
    clock.t = 400.0  # the interval has passed: one new reading, peak price
    assert e.current_price("m") == (15 * 10**29, 45 * 10**29 + 2)
    assert e.current_price("m") == (15 * 10**29, 45 * 10**29 + 2)
    assert load.reads == 2 and e.version == 2
    load.value = 0.85
    clock.t = 700.0  # recomputed, same price: version unchanged
    e.prices()
    assert load.reads == 3 and e.version == 2


def test_dynamic_keeps_the_last_price_when_the_probe_fails() -> None:
    clock = Clock()
    state = {"fail": False}

    def probe() -> float:
        if state["fail"]:
            raise RuntimeError("no stats")
        return 0.9

    e = engine("dynamic", [model("m", 10, 10)], update_interval_secs=1, load=probe, clock=clock)
    assert e.current_price("m") == (15, 15)
    state["fail"] = True
    clock.t = 5
    assert e.current_price("m") == (15, 15)


# -- market -----------------------------------------------------------------------------
def view_of(*executors: tuple[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    view = NetworkView()
    for i, (peer, models) in enumerate(executors):
        view.apply(
            {
                "executor_peer_id": peer,
                "executor_address": "0x" + f"{i + 1:040x}",
                "models": models,
                "announcement_type": "Initial",
                "timestamp": 1_700_000_000,
            },
            now=0.0,
        )
    return view.snapshot()


def priced(name: str, inbound: int, outbound: int, available: bool = True) -> dict[str, Any]:
    return model_descriptor(name, input_token_price=inbound, output_token_price=outbound, is_available=available)


def market(view: dict | None, configured: tuple[int, int] = (BIG, BIG), **kw: Any) -> PricingEngine:
    kw.setdefault("base_multiplier", 1.0)
    kw.setdefault("peak_multiplier", 1.5)
    kw.setdefault("off_peak_multiplier", 0.5)
    return engine("market", [model("m", *configured)], market=(lambda: view) if view is not None else None, **kw)


def test_market_median_odd_count() -> None:
    view = view_of(
        ("p1", [priced("m", 9 * 10**29, 12 * 10**29)]),
        ("p2", [priced("m", 11 * 10**29, 8 * 10**29)]),
        ("p3", [priced("m", 10 * 10**29 + 7, 10 * 10**29 + 3), priced("other", 1, 1)]),
    )
    assert market(view).current_price("m") == (10 * 10**29 + 7, 10 * 10**29 + 3)  # each side on its own


def test_market_median_even_count_rounds_up() -> None:
    view = view_of(
        ("p1", [priced("m", BIG, BIG)]),
        ("p2", [priced("m", BIG + 1, BIG + 2)]),
        ("p3", [priced("m", 14 * 10**29, 14 * 10**29)]),
        ("p4", [priced("m", 6 * 10**29, 6 * 10**29)]),
    )
    # middle two: (1e30, 1e30+1) -> mean 1e30 + 0.5 -> up; (1e30, 1e30+2) -> 1e30 + 1
    assert market(view).current_price("m") == (BIG + 1, BIG + 1)


def test_market_is_bounded_by_off_peak_and_peak() -> None:
    cheap = view_of(("p1", [priced("m", 1, 1)]), ("p2", [priced("m", 2, 3)]))
    greedy = view_of(("p1", [priced("m", 10**40, 10**40)]))
    assert market(cheap).current_price("m") == (5 * 10**29, 5 * 10**29)  # configured x 0.5
    assert market(greedy).current_price("m") == (15 * 10**29, 15 * 10**29)  # configured x 1.5
    edge = view_of(("p1", [priced("m", 5 * 10**29, 15 * 10**29)]))  # exactly at both bounds
    assert market(edge).current_price("m") == (5 * 10**29, 15 * 10**29)
    just_out = view_of(("p1", [priced("m", 5 * 10**29 - 1, 15 * 10**29 + 1)]))
    assert market(just_out).current_price("m") == (5 * 10**29, 15 * 10**29)


def test_market_falls_back_to_fixed_without_data() -> None:
    assert market(None, base_multiplier=1.2).current_price("m") == (12 * 10**29, 12 * 10**29)
    assert market({}, base_multiplier=1.2).current_price("m") == (12 * 10**29, 12 * 10**29)
    others_only = view_of(("p1", [priced("other", 1, 1)]))
    assert market(others_only, base_multiplier=1.2).current_price("m") == (12 * 10**29, 12 * 10**29)
    unavailable = view_of(("p1", [priced("m", 14 * 10**29, 14 * 10**29, available=False)]))
    assert market(unavailable).current_price("m") == (BIG, BIG)

    def broken() -> dict:
        raise RuntimeError("p2p node stopped")

    assert engine("market", [model("m", 10, 10)], market=broken).current_price("m") == (10, 10)


def test_market_ignores_ourselves_and_junk_and_reads_the_prices_map() -> None:
    view = view_of(
        ("me", [priced("m", 14 * 10**29, 14 * 10**29)]),
        ("p1", [priced("m", 12 * 10**29, 12 * 10**29)]),
    )
    assert market(view, self_peer_id="me").current_price("m") == (12 * 10**29, 12 * 10**29)
    junk = {"p1": {"models": [{"model_id": "m", "pricing": {"input_token_price": "lots"}}]}, "p2": "nonsense"}
    assert market(junk).current_price("m") == (BIG, BIG)
    prices_only = {"p1": {"prices": {"m": (11 * 10**29, 13 * 10**29)}}}
    assert market(prices_only).current_price("m") == (11 * 10**29, 13 * 10**29)


def test_market_view_is_read_once_per_interval() -> None:
    reads: list[int] = []
    views = [view_of(("p1", [priced("m", 12 * 10**29, 12 * 10**29)])), view_of(("p1", [priced("m", 13 * 10**29, 13 * 10**29)]))]

    def read() -> dict:
        reads.append(1)
        return views[min(len(reads) - 1, 1)]

    clock = Clock()
    e = engine("market", [model("m", BIG, BIG)], market=read, clock=clock, update_interval_secs=60, peak_multiplier=2.0)
    assert e.current_price("m") == (12 * 10**29, 12 * 10**29)
    clock.t = 59.9
    assert e.current_price("m") == (12 * 10**29, 12 * 10**29) and len(reads) == 1
    clock.t = 60
    assert e.current_price("m") == (13 * 10**29, 13 * 10**29) and len(reads) == 2


# -- offers and priority ----------------------------------------------------------------
def test_check_offer_at_its_edges() -> None:
    e = engine("fixed", [model("m", BIG, 2 * BIG)])
    assert e.check_offer("m", BIG, 2 * BIG) is None
    assert e.check_offer("m", BIG + 1, 10**40) is None
    reason = e.check_offer("m", BIG - 1, 2 * BIG)
    assert reason == (
        f"price too low: this executor charges {BIG} wei/input token and {2 * BIG} wei/output token "
        f"for m (offered {BIG - 1} and {2 * BIG})"
    )
    assert e.check_offer("m", BIG, 2 * BIG - 1) is not None


def test_high_priority_at_the_multiplier_edge() -> None:
    e = engine("fixed", [model("m", BIG + 1, 3)])
    # 1.5 x (1e30 + 1) = 1.5e30 + 1.5 -> 1.5e30 + 2 ; 1.5 x 3 = 4.5 -> 5
    need = (15 * 10**29 + 2, 5)
    assert e.is_high_priority("m", *need, 1.5)
    assert not e.is_high_priority("m", need[0] - 1, need[1], 1.5)
    assert not e.is_high_priority("m", need[0], need[1] - 1, 1.5)
    assert e.is_high_priority("m", need[0] + 1, 10**6, 1.5)
    free = engine("fixed", [model("f", 0, 0)])
    assert not free.is_high_priority("f", 10**6, 10**6, 1.5)
    half_free = engine("fixed", [model("h", 0, 10)])
    assert half_free.is_high_priority("h", 0, 15, 1.5) and not half_free.is_high_priority("h", 0, 14, 1.5)


def test_config_multipliers_pass_through_the_parser() -> None:
    config, report = parse_config(tomllib.loads('[pricing]\nstrategy = "dynamic"\npeak_multiplier = 2.25\n'))
    assert not report.errors and isinstance(config, Config)
    e = PricingEngine(config.pricing, {"m": model("m", 4, 4)}, load=lambda: 1.0)
    assert e.current_price("m") == (9, 9)
