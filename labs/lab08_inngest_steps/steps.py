"""The research agent's side effects, each one small async function that a step runs.

Nothing here knows about Inngest: a step is just `await ctx.step.run("id", fn, *args)`. What matters
is that each function does its one side effect and *raises* when it fails, so the executor can
retry that step (and only that step). The OpenAI client gets max_retries=0 for the same reason:
Inngest owns retries, and a retry the client makes by itself is invisible to it.
"""

from __future__ import annotations

import httpx
from openai import AsyncOpenAI

from .models import MODEL, SUMMARY_MAX_TOKENS, WEB_URL, Page, ResearchRequested, summary_messages


async def search_web(topic: str, max_pages: int) -> list[str]:
    """The URLs of the best pages about `topic`, best first (the course web's /search)."""
    # GET {WEB_URL}/search?q=<topic>&n=<max_pages> answers {"results": [{"url": ...}, ...]}.
    raise NotImplementedError("TODO(lab08): search_web: the result URLs, in the order the search gave them")


async def fetch_page(url: str) -> dict:
    """One page's text, as Page(url=..., text=...).model_dump(). A failed download must raise."""
    raise NotImplementedError("TODO(lab08): fetch_page: GET the url with httpx.AsyncClient, raise on an error status")


async def summarize(request: dict, pages: list[dict]) -> str:
    """One LLM call over every page, in order: models.summary_messages(...), max_tokens=SUMMARY_MAX_TOKENS."""
    raise NotImplementedError("TODO(lab08): summarize: one chat completion with AsyncOpenAI(max_retries=0)")
