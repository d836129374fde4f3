"""`[pricing]`: what this executor charges per token, per model, right now.

Everything is integer wei.  Multipliers come from the config as floats; they
are read back as the decimal the operator wrote (`Fraction(Decimal(str(x)))`:
1.1 is 11/10, not the binary float near it), and every product is rounded *up*
to a whole wei, so a multiplied price never undercuts the exact product.  Prices
of 10**30 wei and beyond stay exact.

Strategies (`configured` = the model's `inbound_price` / `outbound_price`):

* fixed   - configured × base_multiplier.
* dynamic - configured × one of three multipliers chosen by the backend load:
            load >= HIGH_LOAD (0.8) -> peak_multiplier,
            load <= LOW_LOAD (0.2)  -> off_peak_multiplier,
            otherwise               -> base_multiplier.
            Load is what the `load` callable returns: the fraction of backend
            capacity in use, in-flight backend requests / max_concurrent_requests
            (see `backend_load`; a caller may add queued requests, giving values
            above 1, which still mean "peak").
* market  - the median of the prices other executors announce for the same
            model (verified announcements, the `network_view` snapshot shape),
            each side (input, output) on its own; with an even count, the mean
            of the two middle prices rounded up.  The median is then held
            within the band dynamic pricing uses: at least
            configured × off_peak_multiplier, at most configured ×
            peak_multiplier, so a crowd of cheap or greedy announcers (or
            Sybils) moves us only within what the operator accepts.  Models
            nobody else announces (or with no market callable) fall back to
            fixed: configured × base_multiplier.  Only announced models that
            are available count; our own peer id is excluded.

Prices are recomputed every `update_interval_secs` (on the first query after
the interval, clock injectable), not per request: load is sampled once per
interval and clients see a price that holds long enough to pay it.  `version`
changes whenever any price changes, so the caller can re-announce.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ..config import ModelConfig, PricingConfig

log = logging.getLogger(__name__)

__all__ = [
    "HIGH_LOAD",
    "LOW_LOAD",
    "PricingEngine",
    "backend_load",
    "exact_multiplier",
    "market_median",
    "scale_up",
]

# Compared as floats: a load computed as 8/10 or 4/5 is the float 0.8, which must count as high.
HIGH_LOAD = 0.8
LOW_LOAD = 0.2

Prices = tuple[int, int]  # (wei per input token, wei per output token)


def exact_multiplier(value: float | int | str | Decimal | Fraction) -> Fraction:
    """The multiplier the operator wrote, as an exact fraction (1.1 -> 11/10)."""
    if isinstance(value, Fraction):
        return value
    result = Fraction(Decimal(str(value)))
    if result < 0:
        raise ValueError(f"a multiplier must be >= 0, got {value!r}")
    return result


def scale_up(wei: int, multiplier: Fraction) -> int:
    """wei × multiplier, rounded up to a whole wei (exact integer arithmetic)."""
    return -((-wei * multiplier.numerator) // multiplier.denominator)


def backend_load(in_flight: int, max_concurrent_requests: int) -> float:
    """The load dynamic pricing reads: in-flight backend requests / max_concurrent_requests."""
    return in_flight / max_concurrent_requests if max_concurrent_requests > 0 else 1.0


def _median_up(values: list[int]) -> int:
    values = sorted(values)
    mid = len(values) // 2
    if len(values) % 2:
        return values[mid]
    return -(-(values[mid - 1] + values[mid]) // 2)


def market_median(view: Mapping[str, Mapping[str, Any]], model: str, exclude: Iterable[str] = ()) -> Prices | None:
    """Median (input, output) price for `model` over a `network_view` snapshot; None without data.

    Each executor counts once.  From its `models` descriptors when present
    (only `is_available` ones), else from its `prices` map.  Unparseable or
    negative prices are ignored.
    """
    skip = set(exclude)
    inbound: list[int] = []
    outbound: list[int] = []
    for peer_id, info in view.items():
        if peer_id in skip or not isinstance(info, Mapping):
            continue
        price = _announced_price(info, model)
        if price is not None:
            inbound.append(price[0])
            outbound.append(price[1])
    if not inbound:
        return None
    return _median_up(inbound), _median_up(outbound)


def _announced_price(info: Mapping[str, Any], model: str) -> Prices | None:
    try:
        models = info.get("models")
        if models:
            for m in models:
                if m.get("model_id") == model:
                    if not m.get("is_available", True):
                        return None
                    p = m["pricing"]
                    return _valid(int(p["input_token_price"]), int(p["output_token_price"]))
            return None
        prices = info.get("prices") or {}
        if model in prices:
            i, o = prices[model]
            return _valid(int(i), int(o))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def _valid(i: int, o: int) -> Prices | None:
    return (i, o) if i >= 0 and o >= 0 else None


class PricingEngine:
    """Current prices per model under the configured strategy.

    `load`: returns the backend load (see module doc); read only by `dynamic`.
    `market`: returns a `network_view` snapshot (peer id -> info); read only by
    `market`, once per interval (keep it cheap: return a cached snapshot).
    `clock`: monotonic seconds, for the update interval.
    """

    def __init__(
        self,
        config: PricingConfig,
        models: Mapping[str, ModelConfig],
        load: Callable[[], float] | None = None,
        market: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        self_peer_id: str | None = None,
    ) -> None:
        self.strategy = config.strategy
        self.base = exact_multiplier(config.base_multiplier)
        self.peak = exact_multiplier(config.peak_multiplier)
        self.off_peak = exact_multiplier(config.off_peak_multiplier)
        self.update_interval_secs = config.update_interval_secs
        self.models = dict(models)
        self._load = load
        self._market = market
        self._clock = clock
        self._exclude = (self_peer_id,) if self_peer_id else ()
        self.version = 0
        self.multiplier = self.base  # dynamic: the one in force
        self.load_sample: float | None = None
        self._prices: dict[str, Prices] = {}
        self._updated_at = 0.0
        self._market_view: Mapping[str, Mapping[str, Any]] = {}
        self.refresh()

    # -- what prices are computed from ------------------------------------------------
    def set_models(self, models: Iterable[ModelConfig]) -> None:
        """The priced set changes (model discovery): every model served is priced at once,
        so no reader ever meets a served model without a price."""
        self.models = {m.name: m for m in models}
        self.refresh()

    @property
    def market_view(self) -> Mapping[str, Mapping[str, Any]]:
        return self._market_view

    def set_market_view(self, view: Mapping[str, Mapping[str, Any]]) -> None:
        """The latest verified `network_view` snapshot, read by the market strategy at its next refresh."""
        self._market_view = view

    # -- reading prices ---------------------------------------------------------------
    def current_price(self, model: str) -> Prices:
        """(inbound wei, outbound wei) per token; KeyError for a model we do not price."""
        self._maybe_refresh()
        return self._prices[model]

    def prices(self) -> dict[str, Prices]:
        """All models' current prices (for announcements and `models list`)."""
        self._maybe_refresh()
        return dict(self._prices)

    def check_offer(self, model: str, offered_in: int, offered_out: int) -> str | None:
        """None when the offer covers our current price on both sides, else the refusal reason."""
        price_in, price_out = self.current_price(model)
        if offered_in >= price_in and offered_out >= price_out:
            return None
        return (
            f"price too low: this executor charges {price_in} wei/input token and {price_out} wei/output "
            f"token for {model} (offered {offered_in} and {offered_out})"
        )

    def is_high_priority(self, model: str, offered_in: int, offered_out: int, multiplier: float | Fraction) -> bool:
        """Whether the offer is at least `multiplier` × our current price on both sides.

        A model we give away (both prices 0) has no price to multiply: no offer
        makes its requests high priority, else every request would be.
        """
        price_in, price_out = self.current_price(model)
        if price_in == 0 and price_out == 0:
            return False
        m = exact_multiplier(multiplier)
        return offered_in >= scale_up(price_in, m) and offered_out >= scale_up(price_out, m)

    # -- recomputing ------------------------------------------------------------------
    def _maybe_refresh(self) -> None:
        if self.strategy != "fixed" and self._clock() - self._updated_at >= self.update_interval_secs:
            self.refresh()

    def refresh(self) -> None:
        """Recompute every price now (normally done once per update interval)."""
        self._updated_at = self._clock()
        if self.strategy == "dynamic":
            new = self._dynamic()
        elif self.strategy == "market":
            new = self._market_prices()
        else:
            new = self._fixed()
        if new != self._prices:
            if self._prices:
                log.info("prices changed (%s): %s", self.strategy, new)
            self._prices = new
            self.version += 1

    def _scaled(self, model: ModelConfig, m: Fraction) -> Prices:
        return scale_up(model.inbound_price_wei, m), scale_up(model.outbound_price_wei, m)

    def _fixed(self) -> dict[str, Prices]:
        return {name: self._scaled(m, self.base) for name, m in self.models.items()}

    def _dynamic(self) -> dict[str, Prices]:
        load = 0.0
        if self._load is not None:
            try:
                load = float(self._load())
            except Exception:  # a broken probe must not stop pricing: keep the last multiplier
                log.exception("load probe failed; keeping the current price multiplier")
                return {name: self._scaled(m, self.multiplier) for name, m in self.models.items()}
        self.load_sample = load
        if load >= HIGH_LOAD:
            multiplier = self.peak
        elif load <= LOW_LOAD:
            multiplier = self.off_peak
        else:
            multiplier = self.base
        if multiplier != self.multiplier:
            log.info("load %.2f: price multiplier %s -> %s", load, self.multiplier, multiplier)
        self.multiplier = multiplier
        return {name: self._scaled(m, multiplier) for name, m in self.models.items()}

    def _market_prices(self) -> dict[str, Prices]:
        view: Mapping[str, Mapping[str, Any]] = self._market_view
        if self._market is not None:
            try:
                view = self._market() or {}
            except Exception:
                log.exception("market view unavailable; pricing from config")
        out = {}
        for name, m in self.models.items():
            median = market_median(view, name, self._exclude)
            if median is None:
                out[name] = self._scaled(m, self.base)
                continue
            low = self._scaled(m, self.off_peak)
            high = self._scaled(m, self.peak)
            out[name] = (
                min(max(median[0], low[0]), max(high[0], low[0])),
                min(max(median[1], low[1]), max(high[1], low[1])),
            )
        return out
