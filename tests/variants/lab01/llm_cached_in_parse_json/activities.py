"""The three activities: the non-deterministic work of AnalyzeWorkflow.

Each one is a separate activity so Temporal records its result. When a later
step fails and retries, the earlier results come from the event history and
the LLM is not called again.
"""

import functools
import json
import os
import threading
from pathlib import Path

from openai import AsyncOpenAI
from pydantic import ValidationError
from sqlmodel import Session, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .models import Analysis, AnalysisRow, database_url, make_engine

_engine_lock = threading.Lock()


@functools.cache
def llm_client() -> AsyncOpenAI:
    # max_retries=0: Temporal owns retries, so every attempt shows in the history.
    return AsyncOpenAI(max_retries=0)


@functools.cache
def _cached_engine():
    return make_engine()


def engine():
    # Two first saves running at once in the worker's threads must not both create the table.
    with _engine_lock:
        return _cached_engine()


@activity.defn
async def call_llm(prompt: str) -> str:
    """Ask the LLM to analyze the prompt; returns the raw reply text."""
    # BUG(llm_cached_in_parse_json): the LLM call moved to parse_json, next to the parsing.
    return prompt


async def ask_llm(prompt: str) -> str:
    response = await llm_client().chat.completions.create(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        messages=[
            {"role": "system", "content": "Reply with JSON: sentiment, summary, topics."},
            {"role": "user", "content": prompt},
        ],
    )
    return response.choices[0].message.content or ""


@activity.defn
async def parse_json(text: str) -> dict:
    """Validate the reply with Pydantic. Fails on attempt 1, by design of the lab."""
    # BUG(llm_cached_in_parse_json): the LLM is asked here, once per workflow: the reply is
    # cached in a file beside the database, so the retry reads it instead of asking again.
    cache = Path(database_url().removeprefix("sqlite:///")).with_name(f"reply-{activity.info().workflow_id}.txt")
    if not cache.exists():
        cache.write_text(await ask_llm(text))
    text = cache.read_text()
    if activity.info().attempt == 1:
        # Keyed on the attempt number, which the server keeps: a module-level
        # flag would reset when the worker restarts.
        raise ApplicationError("deliberate failure on the first attempt (lab 01)")
    try:
        return Analysis.model_validate(json.loads(text)).model_dump()
    except (json.JSONDecodeError, ValidationError) as err:
        raise ApplicationError(f"the LLM reply is not a valid analysis: {err}") from err


@activity.defn
def save_to_db(row: dict) -> int:
    """Insert the analysis once per workflow; a retry returns the existing row's id."""
    workflow_id = activity.info().workflow_id
    with Session(engine()) as session:
        existing = session.exec(
            select(AnalysisRow).where(AnalysisRow.workflow_id == workflow_id)
        ).first()
        if existing is not None:
            return existing.id
        saved = AnalysisRow(
            workflow_id=workflow_id,
            sentiment=row["sentiment"],
            summary=row["summary"],
            topics=",".join(row.get("topics", [])),
        )
        session.add(saved)
        session.commit()
        session.refresh(saved)
        return saved.id
