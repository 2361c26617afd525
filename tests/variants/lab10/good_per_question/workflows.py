"""The batch on Temporal, one workflow per question.

QuestionWorkflow answers one question; its id, capstone-<batch>-<question>, is the durable key.
The pod walks the queue one question at a time: it starts each question's workflow, or, when the
id is taken (an evicted pod started it, or it finished), waits for the existing one's result.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from .activities import publish, review, search_web, summarize
    from .models import Answer, Batch, Question

OPTIONS = dict(start_to_close_timeout=timedelta(seconds=30),
               retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=4))


@workflow.defn
class QuestionWorkflow:
    @workflow.run
    async def run(self, batch_id: str, question: Question, database_url: str) -> str:
        sources = await workflow.execute_activity(search_web, question, **OPTIONS)
        summary = await workflow.execute_activity(summarize, args=[question, sources], **OPTIONS)
        status = await workflow.execute_activity(review, args=[question, summary], **OPTIONS)
        await workflow.execute_activity(publish, args=[Answer(batch_id, question.id, summary, sources, status),
                                                       database_url], **OPTIONS)
        return status


WORKFLOWS = [QuestionWorkflow]


async def run_batch(client: Client, batch: Batch, task_queue: str) -> None:
    for question in batch.questions:
        workflow_id = f"capstone-{batch.batch_id}-{question.id}"
        try:
            handle = await client.start_workflow(
                QuestionWorkflow.run, args=[batch.batch_id, question, batch.database_url], id=workflow_id,
                task_queue=task_queue, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        except WorkflowAlreadyStartedError:
            handle = client.get_workflow_handle(workflow_id)
        await handle.result()
