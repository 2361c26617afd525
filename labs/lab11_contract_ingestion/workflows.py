"""IngestWorkflow: the five stages of one document, orchestrated.

One workflow per document sees every stage's outcome, so it can decide what choreography could not.
You write its run() (TODO(lab11)); the activities are in activities.py, the inputs in models.py.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError  # noqa: F401  (you will need them)

with workflow.unsafe.imports_passed_through():
    from .activities import (check_quality, embed_document, emit_event, extract_document, notify_user,  # noqa: F401
                             store_embedding)
    from .models import (FALLBACK_MODEL, PRIMARY_MODEL, QC_MIN_WORDS, EmbedInputV1, EventV1,  # noqa: F401
                         ExtractInputV1, IngestRequest, IngestResult, NotifyInputV1, QualityInputV1, StoreInputV1)

STAGE_TIMEOUT = timedelta(seconds=30)
STAGE_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))


@workflow.defn
class IngestWorkflow:
    @workflow.run
    async def run(self, request: IngestRequest) -> IngestResult:
        # TODO(lab11): the pipeline, orchestrated (README, "How it works"):
        #   1. extract_document(ExtractInputV1(doc_id))
        #   2. embed_document with PRIMARY_MODEL; once its retries are used up (ActivityError), publish a
        #      pipeline.alert and embed with FALLBACK_MODEL; if that fails too, tell the user "failed"
        #      and fail the workflow (ApplicationError, non_retryable=True)
        #   3. store_embedding
        #   4. check_quality only for documents of QC_MIN_WORDS words or more
        #   5. notify_user(NotifyInputV1(doc_id, "ready", ...)), only after the store completed
        #   and after each stage, emit_event(EventV1(...)): document.extracted, document.embedded,
        #   document.stored, document.notified (analytics and audit react to them).
        raise NotImplementedError("TODO(lab11): IngestWorkflow.run")
