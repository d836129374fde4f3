"""LLM backends: the base class and the built-in ones."""

from .base import Completion, CompletionRequest, LlmBackend
from .echo import EchoBackend

__all__ = ["Completion", "CompletionRequest", "EchoBackend", "LlmBackend"]
