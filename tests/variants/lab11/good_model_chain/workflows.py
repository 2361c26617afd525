"""IngestWorkflow, another shape: a chain of models, and the quality check beside the store."""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from .activities import (check_quality, embed_document, emit_event, extract_document, notify_user,
                             store_embedding)
    from .models import (FALLBACK_MODEL, PRIMARY_MODEL, QC_MIN_WORDS, EmbedInputV1, EventV1, ExtractInputV1,
                         IngestRequest, IngestResult, NotifyInputV1, QualityInputV1, StoreInputV1)


def options(attempts: int = 4) -> dict:
    return {"start_to_close_timeout": timedelta(seconds=20),
            "retry_policy": RetryPolicy(maximum_attempts=attempts, initial_interval=timedelta(milliseconds=500),
                                        backoff_coefficient=1.5)}


@workflow.defn
class IngestWorkflow:
    def __init__(self) -> None:
        self.doc_id = ""

    async def publish(self, type: str, **payload) -> None:
        await workflow.execute_activity(emit_event, EventV1(type, self.doc_id, payload), **options())

    async def embed(self, text: str):
        errors = []
        for model in (PRIMARY_MODEL, FALLBACK_MODEL):
            try:
                return await workflow.execute_activity(embed_document, EmbedInputV1(self.doc_id, text, model),
                                                       **options(attempts=2))
            except ActivityError as err:
                errors.append(f"{model}: {err.cause}")
                await self.publish("pipeline.alert", stage="embed", model=model, error=str(err.cause))
        return errors

    @workflow.run
    async def run(self, request: IngestRequest) -> IngestResult:
        self.doc_id = request.doc_id
        extracted = await workflow.execute_activity(extract_document, ExtractInputV1(self.doc_id), **options())
        await self.publish("document.extracted", words=extracted.words)
        embedding = await self.embed(extracted.text)
        if isinstance(embedding, list):
            await workflow.execute_activity(notify_user, NotifyInputV1(self.doc_id, "failed", "; ".join(embedding)),
                                            **options())
            raise ApplicationError("every embedding model failed", *embedding, non_retryable=True)
        await self.publish("document.embedded", model=embedding.model)
        store = workflow.execute_activity(store_embedding, StoreInputV1(self.doc_id, embedding.model, embedding.vector),
                                          **options())
        wants_qc = not extracted.words < QC_MIN_WORDS
        if wants_qc:
            await asyncio.gather(store, workflow.execute_activity(
                check_quality, QualityInputV1(self.doc_id, extracted.text), **options()))
        else:
            await store
        await self.publish("document.stored", model=embedding.model)
        await workflow.execute_activity(notify_user, NotifyInputV1(self.doc_id, "ready", "indexed"), **options())
        await self.publish("document.notified")
        return IngestResult(self.doc_id, "ready", embedding.model, wants_qc)
