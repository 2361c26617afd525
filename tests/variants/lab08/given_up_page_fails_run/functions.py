"""The §64.2.2 research agent as an Inngest function that really runs on inngest 0.5.

The function body is called again from the top for every step (on a server: one HTTP request per
step). Each ctx.step.run result is memoized: on the next call the step returns its recorded result
at once instead of running. Everything else in the body runs again every time, so it must be
deterministic (same step ids, same order, nothing random or clock-based) and free of side effects:
all I/O lives inside steps.
"""

from __future__ import annotations

import inngest

from .client import inngest_client
from .models import COMPLETED, REQUESTED, ResearchCompleted, ResearchRequested
from .steps import fetch_page, search_web, summarize


def page_step_id(url: str) -> str:
    """A step id from the page itself: the same on every call of the body, different per page."""
    return "fetch-" + url.rstrip("/").rsplit("/", 1)[-1]


async def read_page(ctx: inngest.Context, url: str) -> dict | None:
    """One page's step. A page that fails every attempt is left out, not the whole run: once its
    retries are spent, the step's failure is memoized and raised here as inngest.StepError."""
    # BUG(given_up_page_fails_run): a page out of retries raises StepError here, and it ends the whole run
    return await ctx.step.run(page_step_id(url), fetch_page, url)


@inngest_client.create_function(
    fn_id="research-agent",
    trigger=inngest.TriggerEvent(event=REQUESTED),
    retries=3,
)
async def research_agent(ctx: inngest.Context) -> dict:
    request = ResearchRequested.model_validate(ctx.event.data)

    urls = await ctx.step.run("search-web", search_web, request.topic, request.max_pages)

    # A real fan-out: every page's step is planned at once, and the server runs them at once.
    pages = await ctx.group.parallel(tuple((lambda url=url: read_page(ctx, url)) for url in urls))
    read = [page for page in pages if page is not None]

    summary = await ctx.step.run("llm-summarize", summarize, request.model_dump(), read)

    report = ResearchCompleted(run_id=request.run_id, topic=request.topic,
                               sources=[page["url"] for page in read], summary=summary)
    await ctx.step.send_event("report-ready", inngest.Event(name=COMPLETED, data=report.model_dump()))
    return report.model_dump()
