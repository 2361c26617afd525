"""A correct pipeline shaped unlike the reference: sync tasks with the sync OpenAI client, plain dict
outputs, the concurrency limit on each task that calls the LLM (not on the workflow, and with a key
built from the provider), and an upsert in SQL (INSERT ... ON CONFLICT(doc_id) DO UPDATE)."""

from __future__ import annotations

import json

from hatchet_sdk import ConcurrencyExpression, ConcurrencyLimitStrategy, Context
from openai import OpenAI
from sqlalchemy import text

from . import models
from .client import hatchet
from .db import engine

pipeline = hatchet.workflow(name="document-pipeline", input_validator=models.Document)


def per_provider() -> list[ConcurrencyExpression]:
    return [ConcurrencyExpression(expression="'provider:' + input.provider", max_runs=models.MAX_RUNS_PER_PROVIDER,
                                  limit_strategy=ConcurrencyLimitStrategy.GROUP_ROUND_ROBIN)]


def chat(messages: list[dict]) -> str:
    client = OpenAI(max_retries=0)
    try:
        return client.chat.completions.create(model=models.MODEL, messages=messages).choices[0].message.content or ""
    finally:
        client.close()


@pipeline.task(retries=2, concurrency=per_provider())
def extract(input: models.Document, ctx: Context) -> dict:
    facts = chat(models.extract_messages(input)).strip()
    return {"doc_id": input.doc_id, "facts": facts, "words": len(facts.split())}


@pipeline.task(parents=[extract])
def embed(input: models.Document, ctx: Context) -> dict:
    return {"doc_id": input.doc_id, "vector": models.embed_text(ctx.task_output(extract)["facts"])}


@pipeline.task(parents=[embed, extract], retries=4, concurrency=per_provider())
def classify(input: models.Document, ctx: Context) -> dict:
    facts, vector = ctx.task_output(extract)["facts"], ctx.task_output(embed)["vector"]
    return {"doc_id": input.doc_id, "label": models.parse_label(chat(models.classify_messages(input.doc_id, facts, vector)))}


UPSERT = text(
    "INSERT INTO processed_documents (doc_id, provider, title, facts, label, vector) "
    "VALUES (:doc_id, :provider, :title, :facts, :label, :vector) "
    "ON CONFLICT(doc_id) DO UPDATE SET provider = excluded.provider, title = excluded.title, "
    "facts = excluded.facts, label = excluded.label, vector = excluded.vector"
)


@pipeline.task(parents=[classify, embed, extract], retries=1)
def store(input: models.Document, ctx: Context) -> dict:
    values = {"doc_id": input.doc_id, "provider": input.provider, "title": input.title,
              "facts": ctx.task_output(extract)["facts"], "label": ctx.task_output(classify)["label"],
              "vector": json.dumps(ctx.task_output(embed)["vector"])}
    with engine().begin() as connection:
        connection.execute(UPSERT, values)
        row_id = connection.execute(text("SELECT id FROM processed_documents WHERE doc_id = :doc_id"),
                                    {"doc_id": input.doc_id}).scalar_one()
    return {"doc_id": input.doc_id, "row_id": row_id, "created": True}
