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
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{WEB_URL}/search", params={"q": topic, "n": max_pages})
        response.raise_for_status()
        return [hit["url"] for hit in response.json()["results"]][:max_pages]


async def fetch_page(url: str) -> dict:
    """One page's text. A failed download raises: the step fails and is retried."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=120)) as client:
        response = await client.get(url)
        response.raise_for_status()
        return Page(url=url, text=response.text).model_dump()


async def summarize(request: dict, pages: list[dict]) -> str:
    """One LLM call over every page, in order."""
    llm = AsyncOpenAI(max_retries=0)  # Inngest retries the step; the client must not retry by itself
    response = await llm.chat.completions.create(
        model=MODEL,
        messages=summary_messages(ResearchRequested.model_validate(request), [Page.model_validate(p) for p in pages]),
        max_tokens=SUMMARY_MAX_TOKENS,
    )
    return response.choices[0].message.content or ""
