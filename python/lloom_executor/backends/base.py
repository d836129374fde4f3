"""The contract every LLM backend fulfils (the Python form of the manual's `LlmBackend` trait)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class Completion:
    """A backend's answer; token counts are None when the backend reports no usage."""

    content: str
    model: str
    inbound_tokens: int | None = None
    outbound_tokens: int | None = None


class LlmBackend(ABC):
    @abstractmethod
    async def complete(
        self,
        model: str,
        prompt: str,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> Completion: ...

    @abstractmethod
    async def list_models(self) -> list[str]: ...

    async def close(self) -> None:
        return None
