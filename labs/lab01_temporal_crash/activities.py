"""The three activities: the non-deterministic work of AnalyzeWorkflow.

Each one is a separate activity so Temporal records its result. When a later
step fails and retries, the earlier results come from the event history and
the LLM is not called again.
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
    # TODO(lab01): call llm_client().chat.completions.create(...) with the model from
    # OPENAI_MODEL (default "gpt-4o-mini"), a system message asking for JSON with
    # sentiment, summary and topics, and the prompt as the user message.
    # Return the reply's text: response.choices[0].message.content
    raise NotImplementedError("TODO(lab01): call_llm")


@activity.defn
async def parse_json(text: str) -> dict:
    """Validate the reply with Pydantic. Fails on attempt 1, by design of the lab."""
    # TODO(lab01): on the first attempt, raise ApplicationError on purpose.
    # Key it on activity.info().attempt: a module-level flag would reset when the
    # worker restarts, and the lab kills the worker.
    # TODO(lab01): then json.loads the text, validate it with Analysis.model_validate,
    # and return model_dump(). Turn JSON or validation errors into ApplicationError.
    raise NotImplementedError("TODO(lab01): parse_json")


@activity.defn
def save_to_db(row: dict) -> int:
    """Insert the analysis once per workflow; a retry returns the existing row's id."""
    workflow_id = activity.info().workflow_id
    # TODO(lab01): in a Session(engine()), look for an AnalysisRow with this
    # workflow_id and return its id if it exists (a retried save must not insert
    # twice); otherwise add a new AnalysisRow (topics joined with commas), commit,
    # refresh, and return its id.
    raise NotImplementedError("TODO(lab01): save_to_db")
