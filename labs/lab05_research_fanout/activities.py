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

from .models import MODEL, SUMMARY_MAX_TOKENS, WEB_URL, Summary, cost_usd, summary_messages


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
    """Download one page, heartbeating each time bytes arrive; returns its text."""
    # TODO(lab05): download the page as a stream, so you see the bytes arrive:
    #     async with httpx.AsyncClient(timeout=...) as client:
    #         async with client.stream("GET", url) as response:
    #             response.raise_for_status()   (wrap it like search_web does: http_error)
    #             async for chunk in response.aiter_bytes():
    #                 ...
    # and call activity.heartbeat(<bytes so far>) INSIDE that loop: a heartbeat means
    # "progress". When the page stalls, the heartbeats stop and Temporal retries the page
    # after the heartbeat_timeout. One heartbeat before the download proves nothing.
    # TODO(lab05): when the server gives up on a silent attempt, the attempt still runs here;
    # give up locally at the same moment: a read timeout as long as
    # activity.info().heartbeat_timeout. And let asyncio.CancelledError propagate (no bare
    # except): that is how a cancellation arrives.
    raise NotImplementedError("TODO(lab05): extract_content")


@activity.defn
async def llm_summarize(texts: list[str], topic: str) -> Summary:
    """Ask the LLM for a summary of the texts; the cost comes from the usage it reports."""
    # TODO(lab05): call llm_client().chat.completions.create(model=MODEL,
    # messages=summary_messages(topic, texts), max_tokens=SUMMARY_MAX_TOKENS), then return
    # Summary(text=..., prompt_tokens=..., completion_tokens=..., cost_usd=cost_usd(MODEL, ...))
    # with the numbers from response.usage.
    raise NotImplementedError("TODO(lab05): llm_summarize")
