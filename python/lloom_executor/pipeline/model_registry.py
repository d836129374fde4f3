"""The one place that knows which models this executor serves, under which names, at what price.

Before, the model set lived in four places (the config, the request handler,
the gossip catalog and the pricing engine) and a model that discovery added
could be served before the pricing engine knew it. Now model discovery calls
`replace`, which re-prices at once; the request path, the dispatcher, the
announcements, the admin API and the metrics all read from here.

Asyncio side only (not thread-safe); the trio side gets snapshots through the bridge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from ..config import ModelConfig, PricingConfig
from .pricing import Prices, PricingEngine


class ModelRegistry:
    """Models (configured, or found by discovery), aliases and current prices."""

    def __init__(
        self,
        models: Iterable[ModelConfig],
        aliases: Mapping[str, str] | None = None,
        pricing: PricingEngine | None = None,
    ) -> None:
        self.configured: tuple[ModelConfig, ...] = tuple(models)
        self.aliases: dict[str, str] = dict(aliases or {})
        self._models: dict[str, ModelConfig] = {m.name: m for m in self.configured}
        self.pricing = pricing if pricing is not None else PricingEngine(PricingConfig(), self._models)
        self.pricing.set_models(self._models.values())
        self.version = 0  # counts replacements of the model set

    # -- the model set -----------------------------------------------------------------
    @property
    def models(self) -> Mapping[str, ModelConfig]:
        """Every model known now, enabled or not, by name (read only)."""
        return self._models

    def served(self) -> list[ModelConfig]:
        """The models requests are answered for now, in their order."""
        return [m for m in self._models.values() if m.enabled]

    def served_names(self) -> list[str]:
        return sorted(m.name for m in self._models.values() if m.enabled)

    def resolve(self, name: str) -> ModelConfig | None:
        """The served model a requested name means: itself, or what `[model_aliases]` points to."""
        model = self._models.get(self.aliases.get(name, name))
        return model if model is not None and model.enabled else None

    def replace(self, models: Iterable[ModelConfig]) -> list[ModelConfig]:
        """Serve `models` from now on (model discovery); returns the set served before."""
        before = list(self._models.values())
        self._models = {m.name: m for m in models}
        # the configured models stay priced: announcements without advertise_models name them
        self.pricing.set_models({**{m.name: m for m in self.configured}, **self._models}.values())
        self.version += 1
        return before

    # -- prices --------------------------------------------------------------------------
    def prices(self) -> dict[str, Prices]:
        """Current (inbound, outbound) wei per token of every known model."""
        return self.pricing.prices()

    @property
    def price_version(self) -> int:
        """Changes whenever any price changes (so announcements know when to repeat)."""
        return self.pricing.version

    def check_offer(self, model: ModelConfig, offered_in: int, offered_out: int) -> str | None:
        """None when the offer covers our current price of `model` on both sides, else the public reason."""
        return self.pricing.check_offer(model.name, offered_in, offered_out)

    def is_high_priority(self, model: ModelConfig, offered_in: int, offered_out: int, multiplier: float | Fraction) -> bool:
        return self.pricing.is_high_priority(model.name, offered_in, offered_out, multiplier)

    def set_market_view(self, view: Mapping[str, Mapping[str, Any]]) -> None:
        """The network's verified announcements, for the market strategy."""
        self.pricing.set_market_view(view)
