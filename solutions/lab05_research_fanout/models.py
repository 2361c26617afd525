"""Data shared by the workflow, the activities and the starter, and the price table.

Kept apart from the activities on purpose: the workflow module imports it (and the
activities) under ``workflow.unsafe.imports_passed_through()``, so the Temporal sandbox
never re-imports httpx or the openai client, which fail its checks.
"""

import math
import os
from dataclasses import dataclass

TASK_QUEUE = os.environ.get("TEMPORAL_TASK_QUEUE", "lab05-research")
# The course web (labkit.web): `lab up` serves it on port 8310; the checks hand each worker its own URL.
WEB_URL = os.environ.get("COURSE_WEB_URL", "http://127.0.0.1:8310").rstrip("/")
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")

# US dollars per million tokens: (prompt, completion). The autograder prices the LLM's ledger
# with the same table, so keep it as it is.
PRICES_PER_MILLION = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
}
SUMMARY_MAX_TOKENS = 300  # the reply is capped at this: the worst case a budget must allow for
SUMMARY_TAG = "[lab05 summarize]"  # the course LLM answers prompts that carry this tag


@dataclass
class ResearchRequest:
    """Workflow input (the text's fields, plus the fan-out's concurrency cap)."""

    topic: str
    max_sources: int = 5
    budget_usd: float = 2.0
    max_parallel: int = 3  # at most this many extract_content activities at once
    # extract_content's heartbeat_timeout, in seconds. The text uses 15 s; by hand the lab uses 5 s so a
    # stalled page is noticed quickly, and the autograder picks its own for the machine it runs on.
    heartbeat_timeout_s: float = 5.0


@dataclass
class ResearchResult:
    summary: str
    sources: list[str]  # the URLs whose text went into the summary
    total_cost: float  # US dollars, from the token usage the LLM reported
    partial: bool = False  # True when the result is not everything the request asked for
    reason: str = ""  # why it is partial ("budget ...", "2 of 5 pages could not be read")


@dataclass
class Summary:
    """What llm_summarize returns: the text and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def price(model: str) -> tuple[float, float]:
    try:
        return PRICES_PER_MILLION[model]
    except KeyError:
        raise ValueError(f"no price for model {model!r}: add it to PRICES_PER_MILLION") from None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """The cost of one call from the usage the LLM reported."""
    per_prompt, per_completion = price(model)
    return (prompt_tokens * per_prompt + completion_tokens * per_completion) / 1_000_000


def summary_messages(topic: str, texts: list[str]) -> list[dict]:
    """The summarize prompt: one system message, one user message carrying the tag and the sources."""
    return [
        {"role": "system", "content": "Summarize the following sources in one paragraph."},
        {"role": "user", "content": f"{SUMMARY_TAG} Topic: {topic}\n\nSources:\n" + "\n---\n".join(texts)},
    ]


def estimate_tokens(text: str) -> int:
    """A cautious token estimate (about four characters a token, rounded up, plus framing)."""
    return math.ceil(len(text) / 4) + 4


def estimate_summary_cost(model: str, topic: str, texts: list[str]) -> float:
    """The most a summarize call over these texts can cost: its prompt plus a full-length reply."""
    prompt = sum(estimate_tokens(m["content"]) for m in summary_messages(topic, texts))
    return cost_usd(model, prompt, SUMMARY_MAX_TOKENS)
