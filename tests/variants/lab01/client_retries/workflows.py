"""AnalyzeWorkflow: call the LLM, parse its JSON, save the row, in that order.

The workflow only orchestrates. It is replayed from the event history after a
crash, so it must be deterministic: no I/O, no clocks, no randomness here.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from .activities import call_llm, parse_json, save_to_db
    from .models import AnalyzeRequest

RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
)
TIMEOUT = timedelta(seconds=30)


@workflow.defn
class AnalyzeWorkflow:
    @workflow.run
    async def run(self, request: AnalyzeRequest) -> int:
        text = await workflow.execute_activity(
            call_llm, request.prompt, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        row = await workflow.execute_activity(
            parse_json, text, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        return await workflow.execute_activity(
            save_to_db, row, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
