"""The research function, written differently: index step ids, partial, a list of events."""

from __future__ import annotations

from functools import partial

import inngest

from .client import inngest_client
from .models import COMPLETED, REQUESTED, ResearchRequested
from .steps import fetch_page, search_web, summarize


@inngest_client.create_function(fn_id="research-agent", trigger=inngest.TriggerEvent(event=REQUESTED))
async def research_agent(ctx: inngest.Context) -> dict:
    data = ResearchRequested(**ctx.event.data)
    urls = await ctx.step.run("search", lambda: search_web(data.topic, data.max_pages))
    fetches = [partial(ctx.step.run, f"page-{index}", fetch_page, url) for index, url in enumerate(urls)]
    pages = await ctx.group.parallel(tuple(fetches))
    summary = await ctx.step.run("summary", summarize, data.model_dump(), [dict(page) for page in pages])
    report = {"run_id": data.run_id, "topic": data.topic, "sources": urls, "summary": summary}
    await ctx.step.send_event("announce", [inngest.Event(name=COMPLETED, data=report)])
    return report
