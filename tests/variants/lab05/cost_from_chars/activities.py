"""The three activities of ResearchWorkflow: the work that talks to the network.

search_web asks the course web's search endpoint; extract_content downloads one page and
heartbeats as the bytes arrive; llm_summarize calls the course LLM and prices the call from
the token usage it reports. None of them retries on its own: Temporal owns the retries, so
every failed attempt shows in the workflow's history.
"""

import functools

import httpx
from openai import AsyncOpenAI
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .models import MODEL, SUMMARY_MAX_TOKENS, WEB_URL, Summary, cost_usd, estimate_tokens, summary_messages


@functools.cache
def llm_client() -> AsyncOpenAI:
    # max_retries=0: the openai client would otherwise retry a 500 itself, and Temporal
    # (and you, reading the history) would never see the failure.
    return AsyncOpenAI(max_retries=0)


def http_error(err: httpx.HTTPStatusError) -> ApplicationError:
    status = err.response.status_code
    # A 4xx will not get better by asking again; a 5xx (or 429) may.
    return ApplicationError(f"{err.request.url} answered HTTP {status}", type="HTTPError",
                            non_retryable=400 <= status < 500 and status != 429)


@activity.defn
async def search_web(query: str) -> list[str]:
    """Search the course web; returns the result URLs, best first."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"{WEB_URL}/search", params={"q": query, "n": 10})
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as err:
            raise http_error(err) from None
        return [result["url"] for result in response.json()["results"]]


@activity.defn
async def extract_content(url: str) -> str:
    """Download one page, heartbeating each time bytes arrive.

    A heartbeat says "I made progress". A page that stalls stops the heartbeats, and
    Temporal gives up on the attempt after heartbeat_timeout and schedules another. The
    read timeout equals that heartbeat timeout, so this attempt lets go of the stalled
    connection at the same moment (the SDK would cancel it only about 5 s later).
    Cancellation (the workflow was cancelled, or the attempt timed out) arrives as
    CancelledError at an await: the `async with` blocks close the connection and it
    propagates, as it must.
    """
    stall = activity.info().heartbeat_timeout
    read_timeout = stall.total_seconds() if stall else 30.0
    received = bytearray()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=read_timeout)) as client:
        async with client.stream("GET", url) as response:
            try:
                response.raise_for_status()
            except httpx.HTTPStatusError as err:
                raise http_error(err) from None
            async for chunk in response.aiter_bytes():
                received += chunk
                activity.heartbeat(len(received))
    return received.decode("utf-8", errors="replace").strip()


@activity.defn
async def llm_summarize(texts: list[str], topic: str) -> Summary:
    """Ask the LLM for a summary of the texts; the cost comes from the usage it reports."""
    response = await llm_client().chat.completions.create(
        model=MODEL,
        messages=summary_messages(topic, texts),
        max_tokens=SUMMARY_MAX_TOKENS,
    )
    usage = response.usage
    if usage is None:
        raise ApplicationError("the LLM reported no token usage, so the call cannot be priced")
    text = response.choices[0].message.content or ""
    # BUG(cost_from_chars): priced from the text (about four characters a token), not from the usage billed.
    prompt_tokens = sum(estimate_tokens(m["content"]) for m in summary_messages(topic, texts))
    completion_tokens = estimate_tokens(text)
    return Summary(
        text=text,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd(MODEL, prompt_tokens, completion_tokens),
    )
