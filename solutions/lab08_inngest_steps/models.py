"""The events this lab's function reads and sends, and the prompt the course LLM answers."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

# The course web (labkit.web): `lab up` serves it on port 8310; the checks hand each run its own URL.
WEB_URL = os.environ.get("COURSE_WEB_URL", "http://127.0.0.1:8310").rstrip("/")
MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")

REQUESTED = "lab08/research.requested"  # the event that starts a run
COMPLETED = "lab08/research.completed"  # the event a run sends when its report is ready
SUMMARY_TAG = "[lab08 summarize]"  # the course LLM answers prompts that carry this tag
SUMMARY_MAX_TOKENS = 300


class ResearchRequested(BaseModel):
    """The data of a REQUESTED event."""

    run_id: str = Field(description="the caller's id for this research run; every event about it carries it")
    topic: str
    max_pages: int = Field(3, ge=1, le=10, description="read at most this many of the search's results")


class ResearchCompleted(BaseModel):
    """The data of the COMPLETED event, and what the function returns."""

    run_id: str
    topic: str
    sources: list[str]  # the URLs of the pages read, in the search's order (a page given up is left out)
    summary: str  # the LLM's summary of those pages


class Page(BaseModel):
    url: str
    text: str


def summary_messages(request: ResearchRequested, pages: list[Page]) -> list[dict]:
    """The summarize prompt: the tag, the run and topic, then each page's text, in order."""
    sources = "\n---\n".join(f"[{i}] {page.url}\n{page.text}" for i, page in enumerate(pages, 1))
    return [
        {"role": "system", "content": "Summarize the sources in one paragraph; cite them as [n]."},
        {"role": "user", "content": f"{SUMMARY_TAG} run: {request.run_id} topic: {request.topic}\n\n{sources}"},
    ]
