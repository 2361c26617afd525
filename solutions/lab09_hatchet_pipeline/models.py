"""The pipeline's data: one document in, one Pydantic model out of each task, and the prompts.

Each task returns a Pydantic model; Hatchet serialises it, and a child task reads it back with
``ctx.task_output(parent)`` (a dict under mock_run, as it would arrive from a server). The prompts
carry a tag, ``[lab09 task=<name> doc=<id>]``, so the course LLM knows which reply to give and the
grader knows which task a request claims to come from.
"""

from __future__ import annotations

import hashlib
import math
import os
import re

from pydantic import BaseModel, Field

# The provider a document's LLM calls go to: the concurrency limit is counted per provider.
MAX_RUNS_PER_PROVIDER = int(os.environ.get("LAB09_MAX_RUNS_PER_PROVIDER", "2"))
EMBED_DIMS = int(os.environ.get("LAB09_EMBED_DIMS", "16"))
MODEL = os.environ.get("OPENAI_MODEL", "course-small")
LABELS = ("invoice", "contract", "complaint", "report", "receipt", "memo")


class Document(BaseModel):
    """The workflow's input: one document of a batch."""

    doc_id: str
    provider: str = Field(description="which LLM provider this document's calls go to")
    title: str
    body: str


class Extracted(BaseModel):
    doc_id: str
    facts: str  # what the LLM pulled out of the document
    words: int


class Embedded(BaseModel):
    doc_id: str
    vector: list[float]


class Classified(BaseModel):
    doc_id: str
    label: str


class Stored(BaseModel):
    doc_id: str
    row_id: int
    created: bool  # False when the row was already there (a retry, or the same document again)


def tag(task: str, doc_id: str) -> str:
    return f"[lab09 task={task} doc={doc_id}]"


def extract_messages(doc: Document) -> list[dict]:
    return [
        {"role": "system", "content": "Extract the key facts of the document in one short paragraph."},
        {"role": "user", "content": f"{tag('extract', doc.doc_id)}\nTitle: {doc.title}\n\n{doc.body}"},
    ]


def classify_messages(doc_id: str, facts: str, vector: list[float]) -> list[dict]:
    strongest = sorted(range(len(vector)), key=lambda i: -abs(vector[i]))[:3]
    return [
        {"role": "system", "content": f"Answer with one label of: {', '.join(LABELS)}."},
        {"role": "user", "content": f"{tag('classify', doc_id)}\nFacts: {facts}\n"
                                    f"Strongest embedding dimensions: {strongest}"},
    ]


def embed_text(text: str, dims: int = EMBED_DIMS) -> list[float]:
    """A deterministic stand-in for an embedding model (the course has none): feature hashing of
    the words, L2-normalised, rounded so that it survives JSON unchanged."""
    vector = [0.0] * dims
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[digest[0] % dims] += 1.0 if digest[1] % 2 == 0 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def parse_label(reply: str) -> str:
    """The label in the LLM's reply; a ValueError (the task fails, Hatchet retries) if there is none."""
    word = reply.strip().strip(".").lower()
    if word not in LABELS:
        raise ValueError(f"the LLM answered {reply!r}, not one of {LABELS}")
    return word
