"""`[content_filter]`: prompt length, block patterns, and optionally the answer.

* `max_prompt_length` counts *characters* (Unicode code points, Python `len`)
  of the system prompt plus the prompt, the text the model reads.  Tokens are
  limited elsewhere (`max_tokens_per_request`, the model's context length);
  this limit is what bounds the regex work below, so it runs first.
* `block_patterns` are Python regular expressions (validated by the config
  loader, compiled once here), searched anywhere in the text, case-sensitive
  unless a pattern says `(?i)`.  The system prompt and the prompt are searched
  separately, so no match spans the boundary between them.
* With `scan_responses`, the backend's answer is searched too; the pipeline
  answers with a signed error instead of the content when it matches.

Refusal reasons never quote the matched text or the pattern.  The reason goes
into a *signed* error answer (and logs, the ledger, metrics labels): quoting
would make this executor sign and store the very content it refused, and
telling the sender which pattern fired, or what it matched, is a guide to
rewording around the filter.  The operator's log gets the pattern's index.

Patterns come from the operator and are trusted; the text is not.  A
backtracking pattern on long input can be slow, so keep `max_prompt_length`
set when patterns are used.  With `enabled = false` nothing is checked.
"""

from __future__ import annotations

import logging
import re

from ..config import ContentFilterConfig

log = logging.getLogger(__name__)

__all__ = ["ContentFilter"]

PROMPT_BLOCKED = "prompt refused by this executor's content filter"
RESPONSE_BLOCKED = "answer withheld: it matched this executor's content filter"


class ContentFilter:
    def __init__(self, config: ContentFilterConfig) -> None:
        self.enabled = config.enabled
        self.max_prompt_length = config.max_prompt_length
        self.scan_responses = config.enabled and config.scan_responses
        self.patterns: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in config.block_patterns)
        self.blocked_prompts = 0
        self.blocked_responses = 0

    def check_length(self, system_prompt: str | None, prompt: str) -> str | None:
        """The size check alone (cheap; the pipeline runs it with the other size limits)."""
        if not self.enabled or self.max_prompt_length is None:
            return None
        length = len(prompt) + (len(system_prompt) if system_prompt else 0)
        if length > self.max_prompt_length:
            return (
                f"prompt too long: {length} characters (system prompt + prompt); "
                f"this executor accepts at most {self.max_prompt_length}"
            )
        return None

    def check_prompt(self, system_prompt: str | None, prompt: str) -> str | None:
        """None when the request may run, else the refusal reason (length first, then patterns)."""
        if not self.enabled:
            return None
        reason = self.check_length(system_prompt, prompt)
        if reason is not None:
            return reason
        texts = (prompt,) if not system_prompt else (system_prompt, prompt)
        index = self._match(texts)
        if index is None:
            return None
        self.blocked_prompts += 1
        log.info("content filter: prompt matched block pattern #%d", index)
        return PROMPT_BLOCKED

    def check_response(self, content: str) -> str | None:
        """With `scan_responses`: None when the answer may be sent, else the reason that replaces it."""
        if not self.scan_responses:
            return None
        index = self._match((content,))
        if index is None:
            return None
        self.blocked_responses += 1
        log.info("content filter: answer matched block pattern #%d", index)
        return RESPONSE_BLOCKED

    def _match(self, texts: tuple[str, ...]) -> int | None:
        for index, pattern in enumerate(self.patterns):
            for text in texts:
                if pattern.search(text):
                    return index
        return None
