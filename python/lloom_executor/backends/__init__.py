"""LLM backends: the base class and the built-in ones."""
from .base import Completion, LlmBackend
from .echo import EchoBackend

__all__ = ["Completion", "LlmBackend", "EchoBackend"]
