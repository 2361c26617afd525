"""The five stages as Temporal activities, plus one that puts an event on the bus.

Each activity is the stage function itself behind the same versioned interface: the team that owns
a stage still owns its code, and Temporal adds what choreography lacked: retries it records, a
timeout, and a failure that reaches the workflow instead of a log line.
"""

from temporalio import activity

from . import stages
from .db import publish
from .models import (EmbedInputV1, EmbeddingV1, EventV1, ExtractedV1, ExtractInputV1, NotifyInputV1,
                     QualityInputV1, QualityV1, StoredV1, StoreInputV1)


@activity.defn
async def extract_document(request: ExtractInputV1) -> ExtractedV1:
    return await stages.extract_text(request)


@activity.defn
async def embed_document(request: EmbedInputV1) -> EmbeddingV1:
    # No try/except: a failed embedding must fail this attempt, so Temporal retries it and, once the
    # attempts run out, the workflow hears of it (and can fall back to the other model).
    return await stages.embed_text(request)


@activity.defn
async def store_embedding(request: StoreInputV1) -> StoredV1:
    return await stages.store_vector(request)


@activity.defn
async def check_quality(request: QualityInputV1) -> QualityV1:
    return await stages.quality_check(request)


@activity.defn
async def notify_user(request: NotifyInputV1) -> None:
    await stages.notify_user(request)


@activity.defn
async def emit_event(event: EventV1) -> None:
    """Publish one event for the choreographed side effects (analytics, audit). Keyed on the activity,
    so a retried attempt does not publish the event twice."""
    info = activity.info()
    await publish(event.type, event.doc_id, event.payload, source=event.source,
                  dedupe_key=f"{info.workflow_id}/{info.activity_id}")
