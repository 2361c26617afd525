"""The activities, written another way: a download task and a loop that watches its progress."""

import asyncio
import functools
from decimal import Decimal

import httpx
from openai import AsyncOpenAI
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .models import MODEL, PRICES_PER_MILLION, SUMMARY_MAX_TOKENS, WEB_URL, Summary, summary_messages

TICK_S = 0.2


@functools.cache
def llm_client() -> AsyncOpenAI:
    return AsyncOpenAI(max_retries=0)


def check(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise ApplicationError(f"HTTP {response.status_code} from {response.url}", type="HTTPError",
                               non_retryable=response.status_code < 500 and response.status_code != 429)


@activity.defn
async def search_web(query: str) -> list[str]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"{WEB_URL}/search", params={"q": query, "n": 10})
        check(response)
        return [hit["url"] for hit in response.json()["results"]]


@activity.defn
async def extract_content(url: str) -> str:
    """A task downloads; this loop heartbeats whenever it made progress and gives up on a stall."""
    stall_s = (activity.info().heartbeat_timeout.total_seconds()
               if activity.info().heartbeat_timeout else 30.0)
    parts: list[bytes] = []

    async def download() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client:
            async with client.stream("GET", url) as response:
                check(response)
                async for chunk in response.aiter_bytes():
                    parts.append(chunk)

    task = asyncio.ensure_future(download())
    loop = asyncio.get_running_loop()
    seen, progress_at = 0, loop.time()
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=TICK_S)
            size = sum(map(len, parts))
            if size > seen:
                seen, progress_at = size, loop.time()
                activity.heartbeat(size)
            elif loop.time() - progress_at > stall_s:
                raise ApplicationError(f"no bytes from {url} for {stall_s:g} s", type="Stalled")
        task.result()  # a failed download raises here
        return b"".join(parts).decode("utf-8", errors="replace").strip()
    finally:
        task.cancel()  # a stall, a cancellation or an error: the download stops, its connection closes


@activity.defn
async def llm_summarize(texts: list[str], topic: str) -> Summary:
    response = await llm_client().chat.completions.create(
        model=MODEL, messages=summary_messages(topic, texts), max_tokens=SUMMARY_MAX_TOKENS)
    usage = response.usage
    prompt_price, completion_price = (Decimal(str(p)) for p in PRICES_PER_MILLION[MODEL])
    cost = (usage.prompt_tokens * prompt_price + usage.completion_tokens * completion_price) / Decimal(1_000_000)
    return Summary(text=response.choices[0].message.content or "", prompt_tokens=usage.prompt_tokens,
                   completion_tokens=usage.completion_tokens, cost_usd=float(cost))
