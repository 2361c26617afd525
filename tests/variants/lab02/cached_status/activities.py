"""The three activities of AnalyzeWorkflow, as in Lab 01.

One difference: parse_json no longer fails on its first attempt. Lab 01 used
that deliberate failure to have a retry to crash into; in this lab the worker
dies while the workflow waits for a person, and no activity is running then.
"""

import functools
import json
import os
import threading

from openai import AsyncOpenAI
from pydantic import ValidationError
from sqlmodel import Session, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .models import Analysis, AnalysisRow, make_engine


@functools.cache
def llm_client() -> AsyncOpenAI:
    # max_retries=0: Temporal owns retries, so every attempt shows in the history.
    return AsyncOpenAI(max_retries=0)


_engine_lock = threading.Lock()


@functools.cache
def _engine():
    return make_engine()


def engine():
    # save_to_db runs in a thread pool: two first saves at once would both run
    # CREATE TABLE, and one would fail with "table analysis already exists".
    with _engine_lock:
        return _engine()


@activity.defn
async def call_llm(prompt: str) -> str:
    """Ask the LLM to analyze the prompt; returns the raw reply text."""
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
    """Validate the reply with Pydantic; the result is what the reviewer is asked to approve."""
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
