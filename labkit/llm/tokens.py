"""The course LLM's token counts: shaped like a real tokenizer's, and never derivable from the text alone.

Why not "four characters a token": a student who prices a call by its characters would match the
`usage` the server reports to the digit, and a check could not tell their bill from a real one.
So the count works the way byte-pair encodings behave on English (a common word is one token, a
long word several, digits in groups of three, punctuation in small runs, per-message framing), which
no character rule reproduces; and every answer carries *hidden reasoning tokens*, a number drawn per
request, billed in completion_tokens and shown only in `completion_tokens_details.reasoning_tokens`
(`output_tokens_details` in the Responses API), as reasoning models bill them. The only way to know
what a call cost is to read its `usage`. tiktoken was rejected: its encodings download at first use.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

_PIECES = re.compile(r"'(?:s|t|re|ve|m|ll|d)\b| ?[^\W\d_]+| ?\d{1,3}| ?[^\w\s]{1,2}|\s+")
MESSAGE_FRAMING = 3  # tokens around each chat message (role and separators)
REPLY_PRIMING = 3  # tokens that start the assistant's reply
REASONING_RANGE = (12, 96)  # hidden reasoning tokens per answer, drawn per request
_rng = random.SystemRandom()


def _piece_tokens(piece: str) -> int:
    word = piece.strip()
    if not word:
        return 1 if len(piece) > 1 else 0  # a run of spaces or newlines is a token; a lone space joins the next piece
    if word[0].isalpha():
        return 1 if len(word) <= 7 else 1 + -(-(len(word) - 7) // 4)
    return 1


def count_tokens(text: str) -> int:
    """Tokens in a piece of visible text."""
    return sum(_piece_tokens(piece) for piece in _PIECES.findall(text or ""))


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def chat_prompt_tokens(messages: list[Any]) -> int:
    total = REPLY_PRIMING
    for message in messages:
        if isinstance(message, dict):
            total += MESSAGE_FRAMING + count_tokens(_content_text(message.get("content")))
            if message.get("tool_calls"):
                total += count_tokens(json.dumps(message["tool_calls"]))
    return total


def responses_input_tokens(instructions: str | None, items: list[Any]) -> int:
    total = REPLY_PRIMING + count_tokens(instructions or "")
    for item in items:
        if isinstance(item, dict) and "content" in item:
            total += MESSAGE_FRAMING + count_tokens(_content_text(item.get("content")))
        else:
            total += MESSAGE_FRAMING + count_tokens(json.dumps(item))
    return total


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    visible_completion_tokens: int
    reasoning_tokens: int

    @property
    def completion_tokens(self) -> int:
        return self.visible_completion_tokens + self.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        """What the ledger records (Chat Completions names, for both endpoints)."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "reasoning_tokens": self.reasoning_tokens}


def usage_for(prompt_tokens: int, reply_text: str) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, visible_completion_tokens=max(1, count_tokens(reply_text)),
                 reasoning_tokens=_rng.randint(*REASONING_RANGE))
