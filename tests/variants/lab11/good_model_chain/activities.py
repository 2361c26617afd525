"""Stage activities, with the model's errors classified: a 4xx will not heal, anything else may."""

import openai
from temporalio import activity
from temporalio.exceptions import ApplicationError

from . import stages
from .db import publish
from .models import (EmbedInputV1, EmbeddingV1, EventV1, ExtractedV1, ExtractInputV1, NotifyInputV1,
                     QualityInputV1, QualityV1, StoredV1, StoreInputV1)


@activity.defn
async def extract_document(request: ExtractInputV1) -> ExtractedV1:
    return await stages.extract_text(request)


@activity.defn
async def embed_document(request: EmbedInputV1) -> EmbeddingV1:
    try:
        return await stages.embed_text(request)
    except openai.APIStatusError as err:
        raise ApplicationError(f"{request.model} answered HTTP {err.status_code}", type="EmbeddingModelError",
                               non_retryable=400 <= err.status_code < 500 and err.status_code != 429) from err


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
    info = activity.info()
    await publish(event.type, event.doc_id, event.payload, source=event.source,
                  dedupe_key=f"{info.workflow_id}/{info.activity_id}")
