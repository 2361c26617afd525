"""The five stages of contract ingestion, one function per team, each behind a versioned interface.

Both architectures call these same functions: the choreographed consumers (choreography.py) when an
event arrives, the Temporal activities (activities.py) when the workflow schedules them. A stage does
its one job and raises when it cannot: what happens after a failure is not the stage's decision.
"""

from __future__ import annotations

import functools
import json
import os

from openai import AsyncOpenAI

from .db import connect
from .models import (EMBED_DIMENSIONS, EmbedInputV1, EmbeddingV1, ExtractedV1, ExtractInputV1, NotifyInputV1,
                     QualityInputV1, QualityV1, StoredV1, StoreInputV1)


@functools.cache
def embeddings_client() -> AsyncOpenAI:
    # max_retries=0: whoever calls the stage owns the retries (Temporal, in the orchestrated pipeline).
    return AsyncOpenAI(max_retries=0, timeout=float(os.environ.get("LAB11_EMBED_TIMEOUT_S", "30")))


# --- team "documents": extract text ----------------------------------------------------------------

async def extract_text(request: ExtractInputV1) -> ExtractedV1:
    """The uploaded document's text, whitespace normalized (page breaks and line wraps removed)."""
    async with await connect() as conn:
        row = await (await conn.execute("SELECT raw FROM documents WHERE doc_id = %s",
                                        (request.doc_id,))).fetchone()
    if row is None:
        raise LookupError(f"no uploaded document {request.doc_id!r}")
    text = " ".join(row[0].split())
    return ExtractedV1(doc_id=request.doc_id, text=text, words=len(text.split()))


# --- team "search": embed, store -------------------------------------------------------------------

async def embed_text(request: EmbedInputV1) -> EmbeddingV1:
    """The text's embedding from the model the request names (raises if the model fails)."""
    response = await embeddings_client().embeddings.create(
        model=request.model, input=request.text, dimensions=EMBED_DIMENSIONS)
    return EmbeddingV1(doc_id=request.doc_id, model=request.model, vector=list(response.data[0].embedding))


async def store_vector(request: StoreInputV1) -> StoredV1:
    """Save the document's vector in the index (one row per document: storing again replaces it).
    pgvector refuses a vector of no dimensions: an empty embedding fails here, loudly."""
    async with await connect() as conn:
        await conn.execute(
            "INSERT INTO document_vectors (doc_id, model, embedding) VALUES (%s, %s, %s) "
            "ON CONFLICT (doc_id) DO UPDATE SET model = EXCLUDED.model, embedding = EXCLUDED.embedding, "
            "stored_at = clock_timestamp()", (request.doc_id, request.model, request.vector))
    return StoredV1(doc_id=request.doc_id, dimensions=len(request.vector))


# --- team "compliance": quality check --------------------------------------------------------------

REQUIRED_CLAUSES = ("term", "payment", "signed")


async def quality_check(request: QualityInputV1) -> QualityV1:
    """Flag a contract that lacks one of the clauses every contract must have."""
    lowered = request.text.lower()
    issues = [f"no {clause!r} clause" for clause in REQUIRED_CLAUSES if clause not in lowered]
    async with await connect() as conn:
        await conn.execute(
            "INSERT INTO quality_checks (doc_id, passed, issues) VALUES (%s, %s, %s) "
            "ON CONFLICT (doc_id) DO UPDATE SET passed = EXCLUDED.passed, issues = EXCLUDED.issues",
            (request.doc_id, not issues, json.dumps(issues)))
    return QualityV1(doc_id=request.doc_id, passed=not issues, issues=issues)


# --- team "customer": notify ------------------------------------------------------------------------

async def notify_user(request: NotifyInputV1) -> None:
    """Tell the uploader how their document ended (once per status: a retried notify sends nothing new)."""
    async with await connect() as conn:
        await conn.execute(
            "INSERT INTO notifications (doc_id, status, detail) VALUES (%s, %s, %s) "
            "ON CONFLICT (doc_id, status) DO NOTHING", (request.doc_id, request.status, request.detail))
