"""IngestWorkflow: the five stages of one document, orchestrated.

One workflow per document sees every stage's outcome, so it can decide what choreography could not:
fall back to the second embedding model once the first has used up its retries, skip the quality
check for short documents, tell the user only after the vector is stored, and fail loudly (an alert
on the bus and a failed workflow) when no model can embed the document. Analytics and audit stay
choreographed: the workflow publishes events and whoever listens reacts.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from .activities import (check_quality, embed_document, emit_event, extract_document, notify_user,
                             store_embedding)
    from .models import (FALLBACK_MODEL, PRIMARY_MODEL, QC_MIN_WORDS, EmbedInputV1, EventV1, ExtractInputV1,
                         IngestRequest, IngestResult, NotifyInputV1, QualityInputV1, StoreInputV1)

STAGE_TIMEOUT = timedelta(seconds=30)
STAGE_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))
# The embedding model gets three tries, a second apart and then two, before the workflow gives up on it.
EMBED_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0)  # BUG(unlimited_retries)


@workflow.defn
class IngestWorkflow:
    @workflow.run
    async def run(self, request: IngestRequest) -> IngestResult:
        doc_id = request.doc_id
        extracted = await self.stage(extract_document, ExtractInputV1(doc_id))
        await self.emit("document.extracted", doc_id, words=extracted.words)

        try:
            embedding = await self.stage(embed_document, EmbedInputV1(doc_id, extracted.text, PRIMARY_MODEL),
                                         retry=EMBED_RETRY)
        except ActivityError as primary_error:
            await self.emit("pipeline.alert", doc_id, stage="embed", model=PRIMARY_MODEL,
                            error=str(primary_error.cause or primary_error), action=f"fallback to {FALLBACK_MODEL}")
            try:
                embedding = await self.stage(embed_document,
                                             EmbedInputV1(doc_id, extracted.text, FALLBACK_MODEL), retry=EMBED_RETRY)
            except ActivityError as fallback_error:
                await self.emit("pipeline.alert", doc_id, stage="embed", model=FALLBACK_MODEL,
                                error=str(fallback_error.cause or fallback_error), action="document failed")
                await self.stage(notify_user, NotifyInputV1(doc_id, "failed", "We could not index your contract."))
                raise ApplicationError(f"no embedding model could embed {doc_id}", type="EmbeddingFailed",
                                       non_retryable=True) from fallback_error
        await self.emit("document.embedded", doc_id, model=embedding.model)

        stored = await self.stage(store_embedding, StoreInputV1(doc_id, embedding.model, embedding.vector))
        await self.emit("document.stored", doc_id, model=embedding.model, dimensions=stored.dimensions)

        quality_checked = extracted.words >= QC_MIN_WORDS
        if quality_checked:
            quality = await self.stage(check_quality, QualityInputV1(doc_id, extracted.text))
            await self.emit("document.checked", doc_id, passed=quality.passed, issues=quality.issues)
        else:
            await self.emit("quality.skipped", doc_id, words=extracted.words)

        # Only now, with the vector stored, is the document really searchable.
        await self.stage(notify_user, NotifyInputV1(doc_id, "ready", "Your contract is processed and searchable."))
        await self.emit("document.notified", doc_id, status="ready")
        return IngestResult(doc_id=doc_id, status="ready", model=embedding.model, quality_checked=quality_checked)

    async def stage(self, activity, request, *, retry: RetryPolicy = STAGE_RETRY):
        return await workflow.execute_activity(activity, request, start_to_close_timeout=STAGE_TIMEOUT,
                                               retry_policy=retry)

    async def emit(self, type: str, doc_id: str, **payload) -> None:
        await self.stage(emit_event, EventV1(type=type, doc_id=doc_id, payload=payload))
