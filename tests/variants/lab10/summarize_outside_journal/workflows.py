"""The batch on Temporal: one batch workflow that answers its questions in order and continues as
new every `questions_per_run` questions, carrying its cursor.

The workflow's history records each activity's result, so a pod that is evicted loses nothing the
server recorded: the next pod's worker replays the history and carries on with the first activity
that has no result. continue-as-new keeps each history short (200 questions x 4 activities would
be thousands of events in one run); the input of the next run is all it remembers, so the cursor
must be in it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from .activities import publish, review, search_web, summarize
    from .models import Answer, Batch, Question

STEP = dict(start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5))


@dataclass
class BatchInput:
    batch_id: str
    questions: list[Question]
    database_url: str
    questions_per_run: int
    cursor: int = 0  # the first question this run answers


@workflow.defn
class BatchWorkflow:
    @workflow.run
    async def run(self, batch: BatchInput) -> int:
        end = min(batch.cursor + batch.questions_per_run, len(batch.questions))
        for index in range(batch.cursor, end):
            question = batch.questions[index]
            sources = await workflow.execute_activity(search_web, question, **STEP)
            summary = await workflow.execute_activity(summarize, args=[question, sources], **STEP)
            status = await workflow.execute_activity(review, args=[question, summary], **STEP)
            await workflow.execute_activity(
                publish, args=[Answer(batch.batch_id, question.id, summary, sources, status), batch.database_url],
                **STEP)
        if end < len(batch.questions):
            workflow.continue_as_new(replace(batch, cursor=end))  # the next run starts where this one ended
        return len(batch.questions)


WORKFLOWS = [BatchWorkflow]


async def run_batch(client: Client, batch: Batch, task_queue: str) -> None:
    """Start the batch's workflow, or find the one an earlier pod started, and wait for it."""
    workflow_id = f"capstone-{batch.batch_id}"  # the batch's name, not the pod's: every pod finds it
    request = BatchInput(batch.batch_id, batch.questions, batch.database_url, batch.questions_per_run)
    try:
        handle = await client.start_workflow(BatchWorkflow.run, request, id=workflow_id, task_queue=task_queue,
                                             id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
    except WorkflowAlreadyStartedError:  # running (an evicted pod started it) or already finished
        handle = client.get_workflow_handle(workflow_id)
    await handle.result()  # follows the chain of continue-as-new runs to the last one
