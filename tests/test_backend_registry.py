"""The backend registry: built-in kinds, `package.module:Class` specs, entry points and
`register_backend`, with custom backends written against the `CompletionRequest` contract."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lloom_executor.backends.base import CompletionRequest
from lloom_executor.backends.echo import EchoBackend
from lloom_executor.backends.openai_compat import OpenAICompatibleBackend
from lloom_executor.backends.registry import create_backend, known_kinds, register_backend
from openai_server import OpenAIServer, echo_content

T = TypeVar("T")


@pytest.fixture
def srv() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def run(coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    return asyncio.run(coro_fn(*args))


def test_registry_builtin_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    openai = create_backend("openai")
    assert isinstance(openai, OpenAICompatibleBackend)
    assert (openai.base_url, openai.api_key, openai.backend_type) == ("https://api.openai.com/v1", "sk-env", "openai")
    lms = create_backend("lmstudio", backend="lmstudio", timeout_secs=5, max_retries=1)
    assert isinstance(lms, OpenAICompatibleBackend)
    assert (lms.base_url, lms.api_key, lms.backend_type, lms.timeout_secs, lms.max_retries) == (
        "http://localhost:1234/v1",
        None,
        "lmstudio",
        5.0,
        1,
    )
    echo = create_backend("echo", models=["m"])
    assert isinstance(echo, EchoBackend)
    assert run(echo.list_models) == ["m"]
    run(openai.close)
    run(lms.close)
    assert {"openai", "lmstudio", "echo"} <= set(known_kinds())


def test_registry_end_to_end_against_server(srv: OpenAIServer) -> None:
    async def go() -> str:
        b = create_backend("lmstudio", base_url=srv.base_url)
        try:
            return (await b.complete(CompletionRequest("test-model", "the quick brown fox"))).content
        finally:
            await b.close()

    assert run(go) == echo_content("the quick brown fox")


def test_registry_module_class_and_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_backends.py").write_text(
        textwrap.dedent(
            """
            from lloom_executor.backends.base import Completion, CompletionRequest, LlmBackend

            class Upper(LlmBackend):
                def __init__(self, suffix=""):
                    self.suffix = suffix
                async def complete(self, request: CompletionRequest) -> Completion:
                    return Completion(request.prompt.upper() + self.suffix, request.model)
                async def list_models(self):
                    return ["upper"]

            class NotABackend:
                pass

            NOT_CALLABLE = "a string"
            """
        )
    )
    dist = tmp_path / "my_backends-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-backends\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lloom_executor.backends]\nshout = my_backends:Upper\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    custom = create_backend("my_backends:Upper", suffix="!")
    assert run(custom.complete, CompletionRequest("upper", "hi")).content == "HI!"
    by_entry_point = create_backend("shout")
    assert run(by_entry_point.complete, CompletionRequest("upper", "hey")).content == "HEY"
    assert "shout" in known_kinds()
    with pytest.raises(TypeError, match="not an LlmBackend"):
        create_backend("my_backends:NotABackend")
    with pytest.raises(TypeError, match="not a class or factory"):
        create_backend("my_backends:NOT_CALLABLE")
    with pytest.raises(ValueError, match="no attribute"):
        create_backend("my_backends:Missing")
    with pytest.raises(ValueError, match="cannot import"):
        create_backend("no_such_module_xyz:Thing")


def test_registry_register_backend() -> None:
    register_backend("test-echo-twice", lambda **kw: EchoBackend(["a", "b"], **kw))
    assert run(create_backend("test-echo-twice").list_models) == ["a", "b"]
    with pytest.raises(ValueError):
        register_backend("echo", EchoBackend)


def test_registry_unknown_kind_names_known_kinds() -> None:
    with pytest.raises(ValueError) as info:
        create_backend("vllm-turbo")
    message = str(info.value)
    assert "vllm-turbo" in message
    for kind in ("openai", "lmstudio", "echo"):
        assert kind in message
