"""ResearchWorkflow: search, extract the pages in parallel, summarize within a budget.

The workflow only orchestrates, and is replayed from its history after a crash: no I/O,
no clocks, no randomness here. asyncio.gather and asyncio.Semaphore are fine: Temporal
runs workflow code on its own deterministic event loop.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

# Passed through: the sandbox must not re-import httpx or the openai client (both fail its checks).
with workflow.unsafe.imports_passed_through():
    from .activities import extract_content, llm_summarize, search_web
    from .models import MODEL, ResearchRequest, ResearchResult, estimate_summary_cost

# TODO(lab05): the retry policies the text gives: search_web at most 3 attempts, extract_content
# at most 2, llm_summarize at most 5 with 2 s before the first retry, the wait doubling each time.
SEARCH_RETRY = RetryPolicy()
EXTRACT_RETRY = RetryPolicy()
SUMMARIZE_RETRY = RetryPolicy()

SEARCH_TIMEOUT = timedelta(seconds=30)
EXTRACT_TIMEOUT = timedelta(seconds=60)
SUMMARIZE_TIMEOUT = timedelta(seconds=120)


@workflow.defn
class ResearchWorkflow:
    """A durable research agent: a crash costs only the steps still in flight."""

    @workflow.run
    async def run(self, request: ResearchRequest) -> ResearchResult:
        urls = await workflow.execute_activity(
            search_web,
            request.topic,
            start_to_close_timeout=SEARCH_TIMEOUT,
            retry_policy=SEARCH_RETRY,
        )
        urls = urls[: request.max_sources]

        # TODO(lab05): extract every page with extract_content, in parallel, at most
        # request.max_parallel at a time (asyncio.Semaphore), each with
        # start_to_close_timeout=EXTRACT_TIMEOUT,
        # heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_s) (the caller chooses it:
        # the autograder picks one for the machine it runs on) and retry_policy=EXTRACT_RETRY. The text's `for url in urls: await ...` is sequential:
        # start them all, then asyncio.gather. A page that runs out of attempts raises
        # ActivityError: leave it out and say so in the result's reason.
        raise NotImplementedError("TODO(lab05): extract the pages in parallel")

        # TODO(lab05): the budget. Before calling llm_summarize, price its worst case with
        # estimate_summary_cost(MODEL, request.topic, texts); while it is more than what is left
        # of request.budget_usd, drop the last source; with none left, do not call at all.
        # Then call llm_summarize (args=[texts, request.topic], SUMMARIZE_TIMEOUT,
        # SUMMARIZE_RETRY) and return ResearchResult(summary, sources, total_cost = the calls'
        # cost_usd, partial=True and a reason starting with "budget" when sources were dropped).
