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

LLM_RETRIES = 3

pipeline = hatchet.workflow(
    name="document-pipeline",
    input_validator=Document,
    concurrency=ConcurrencyExpression(
        expression="input.provider",
        max_runs=MAX_RUNS_PER_PROVIDER,
        limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN,
    ),
)


def llm() -> AsyncOpenAI  # BUG(syntax_error): the colon is missing
    return AsyncOpenAI(max_retries=0)


async def ask(messages: list[dict]) -> str:
    async with llm() as client:
        response = await client.chat.completions.create(model=MODEL, messages=messages)
    return response.choices[0].message.content or ""


@pipeline.task(retries=LLM_RETRIES, backoff_factor=2.0, backoff_max_seconds=30)
async def extract(input: Document, ctx: Context) -> Extracted:
    facts = (await ask(extract_messages(input))).strip()
    return Extracted(doc_id=input.doc_id, facts=facts, words=len(facts.split()))


@pipeline.task(parents=[extract])
def embed(input: Document, ctx: Context) -> Embedded:
    extracted = Extracted.model_validate(ctx.task_output(extract))
    return Embedded(doc_id=input.doc_id, vector=embed_text(extracted.facts))


@pipeline.task(parents=[extract, embed], retries=LLM_RETRIES, backoff_factor=2.0, backoff_max_seconds=30)
async def classify(input: Document, ctx: Context) -> Classified:
    extracted = Extracted.model_validate(ctx.task_output(extract))
    embedded = Embedded.model_validate(ctx.task_output(embed))
    reply = await ask(classify_messages(input.doc_id, extracted.facts, embedded.vector))
    return Classified(doc_id=input.doc_id, label=parse_label(reply))


@pipeline.task(parents=[extract, embed, classify], retries=LLM_RETRIES)
def store(input: Document, ctx: Context) -> Stored:
    extracted = Extracted.model_validate(ctx.task_output(extract))
    embedded = Embedded.model_validate(ctx.task_output(embed))
    classified = Classified.model_validate(ctx.task_output(classify))
    with Session(engine()) as session:
        row = session.exec(select(ProcessedDocument).where(ProcessedDocument.doc_id == input.doc_id)).first()
        created = row is None
        if created:
            row = ProcessedDocument(doc_id=input.doc_id)
        row.provider, row.title = input.provider, input.title
        row.facts, row.label, row.vector = extracted.facts, classified.label, json.dumps(embedded.vector)
        session.add(row)
        session.commit()
        session.refresh(row)
        return Stored(doc_id=input.doc_id, row_id=row.id, created=created)
