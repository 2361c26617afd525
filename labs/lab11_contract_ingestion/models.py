"""Configuration and the stages' versioned interfaces, shared by both architectures.

Every stage takes and returns a small dataclass whose name carries its version (ExtractInputV1, ...):
the contract between the team that owns a stage and everyone who calls it. A team that needs a new
field adds ExtractInputV2 beside V1 and keeps V1 working until no caller sends it, so the teams still
deploy on their own schedules. Kept apart from the activities: the workflow module imports it under
``workflow.unsafe.imports_passed_through()``.
"""

import os
from dataclasses import dataclass, field

TASK_QUEUE = os.environ.get("TEMPORAL_TASK_QUEUE", "lab11-ingestion")
# The lab's PostgreSQL (`lab up` runs one on 127.0.0.1:5433); the checks hand each process their own.
DATABASE_URL = os.environ.get("LAB11_DATABASE_URL") or os.environ.get(
    "DATABASE_URL", "postgresql://postgres@127.0.0.1:5433/postgres")
# Two embedding models from the course LLM's /v1/embeddings. The check picks other names per run.
PRIMARY_MODEL = os.environ.get("LAB11_PRIMARY_MODEL", "text-embedding-3-small")
FALLBACK_MODEL = os.environ.get("LAB11_FALLBACK_MODEL", "text-embedding-3-large")
EMBED_DIMENSIONS = int(os.environ.get("LAB11_EMBED_DIMENSIONS", "64"))
QC_MIN_WORDS = 100  # the case study: documents under 100 words skip the quality check
EVENTS_CHANNEL = "lab11_events"  # the LISTEN/NOTIFY channel of the event bus


@dataclass
class ExtractInputV1:
    doc_id: str


@dataclass
class ExtractedV1:
    doc_id: str
    text: str
    words: int


@dataclass
class EmbedInputV1:
    doc_id: str
    text: str
    model: str


@dataclass
class EmbeddingV1:
    doc_id: str
    model: str
    vector: list[float]


@dataclass
class StoreInputV1:
    doc_id: str
    model: str
    vector: list[float]


@dataclass
class StoredV1:
    doc_id: str
    dimensions: int


@dataclass
class QualityInputV1:
    doc_id: str
    text: str


@dataclass
class QualityV1:
    doc_id: str
    passed: bool
    issues: list[str] = field(default_factory=list)


@dataclass
class NotifyInputV1:
    doc_id: str
    status: str  # "ready" (searchable now) or "failed"
    detail: str = ""


@dataclass
class EventV1:
    """One event for the bus (analytics, audit and anyone else who listens)."""

    type: str  # document.extracted, document.embedded, ..., pipeline.alert
    doc_id: str
    payload: dict = field(default_factory=dict)
    source: str = "orchestrator"


@dataclass
class IngestRequest:
    doc_id: str


@dataclass
class IngestResult:
    doc_id: str
    status: str  # "ready"
    model: str  # the embedding model whose vector was stored
    quality_checked: bool
