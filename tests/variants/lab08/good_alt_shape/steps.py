"""Side effects for the research function: a search, a page, a summary."""

from __future__ import annotations

import httpx
from openai import AsyncOpenAI

from .models import MODEL, SUMMARY_MAX_TOKENS, WEB_URL, Page, ResearchRequested, summary_messages


async def _get(url: str, **params) -> httpx.Response:
    async with httpx.AsyncClient(timeout=httpx.Timeout(20, read=None)) as http:
        response = await http.get(url, params=params or None)
    if response.is_error:
        raise RuntimeError(f"GET {url} answered {response.status_code}")
    return response


async def search_web(topic: str, max_pages: int) -> list[str]:
    found = (await _get(f"{WEB_URL}/search", q=topic, n=max_pages)).json()["results"]
    return [item["url"] for item in found[:max_pages]]


async def fetch_page(url: str) -> dict:
    return {"url": url, "text": (await _get(url)).text}


async def summarize(request: dict, pages: list[dict]) -> str:
    client = AsyncOpenAI(max_retries=0)
    messages = summary_messages(ResearchRequested(**request), [Page(**page) for page in pages])
    completion = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=SUMMARY_MAX_TOKENS)
    return completion.choices[0].message.content or ""
