"""The document pipeline as a Hatchet 1.x workflow: a small DAG per document.

    extract ──> embed ──> classify ──> store
       └──────────┴───────────┴─────────┘  (store and classify also read extract's output)

Each task is a function; `parents=[...]` says which tasks must finish first and whose outputs it
may read with `ctx.task_output(parent)`. Hatchet retries a task that raises, alone: its parents'
outputs are already recorded. The LLM client never retries by itself (max_retries=0), so a 429
fails the attempt and Hatchet's retry is the one you see. The workflow's concurrency expression
groups runs by provider, so at most MAX_RUNS_PER_PROVIDER documents of one provider run at once.
"""

from __future__ import annotations

import json

from hatchet_sdk import ConcurrencyExpression, ConcurrencyLimitStrategy, Context
from openai import AsyncOpenAI
from sqlmodel import Session, select

from .client import hatchet
from .db import ProcessedDocument, engine
from .models import (MAX_RUNS_PER_PROVIDER, MODEL, Classified, Document, Embedded, Extracted, Stored,
                     classify_messages, embed_text, extract_messages, parse_label)

# TODO(lab09): give the workflow a concurrency limit per provider (ConcurrencyExpression on input.provider,
# max_runs=MAX_RUNS_PER_PROVIDER, a strategy that queues).
pipeline = hatchet.workflow(name="document-pipeline", input_validator=Document)


async def ask(messages: list[dict]) -> str:
    """One chat completion from the course LLM (OPENAI_BASE_URL), its reply text."""
    # TODO(lab09): an AsyncOpenAI client that never retries by itself, so a 429 fails the attempt.
    raise NotImplementedError("TODO(lab09): ask() - call the LLM with AsyncOpenAI(max_retries=0)")


# TODO(lab09): declare retries on the tasks that call the LLM, and each task's parents.
@pipeline.task()
async def extract(input: Document, ctx: Context) -> Extracted:
    """Ask the LLM for the document's facts (models.extract_messages)."""
    raise NotImplementedError("TODO(lab09): extract - ask(extract_messages(input)), return Extracted")


@pipeline.task()
def embed(input: Document, ctx: Context) -> Embedded:
    """The vector of extract's facts (models.embed_text)."""
    raise NotImplementedError("TODO(lab09): embed - embed_text(<extract's facts>), return Embedded")


@pipeline.task()
async def classify(input: Document, ctx: Context) -> Classified:
    """Ask the LLM for a label (models.classify_messages with extract's facts and embed's vector)."""
    raise NotImplementedError("TODO(lab09): classify - ask(classify_messages(...)), parse_label, return Classified")


@pipeline.task()
def store(input: Document, ctx: Context) -> Stored:
    """Save one ProcessedDocument row per document id (db.py), idempotently."""
    raise NotImplementedError("TODO(lab09): store - one row per doc_id, however many times store runs")
