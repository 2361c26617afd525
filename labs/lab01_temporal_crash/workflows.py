"""AnalyzeWorkflow: call the LLM, parse its JSON, save the row, in that order.

The workflow only orchestrates. It is replayed from the event history after a
crash, so it must be deterministic: no I/O, no clocks, no randomness here.
"""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

# Activities and models are imported "passed through": the sandbox then uses the
# already-imported modules instead of re-importing them for every run (a
# re-imported SQLModel table fails with "Table 'analysis' is already defined").
with workflow.unsafe.imports_passed_through():
    from .activities import call_llm, parse_json, save_to_db
    from .models import AnalyzeRequest

# TODO(lab01): the lab's retry policy: at most 3 attempts, 2 s before the first
# retry, the wait doubling each time.
RETRY = RetryPolicy()
TIMEOUT = timedelta(seconds=30)


@workflow.defn
class AnalyzeWorkflow:
    @workflow.run
    async def run(self, request: AnalyzeRequest) -> int:
        # TODO(lab01): run call_llm, parse_json and save_to_db in sequence with
        # workflow.execute_activity(...), each with start_to_close_timeout=TIMEOUT
        # and retry_policy=RETRY, passing each result to the next step.
        # Return the id save_to_db returns.
        raise NotImplementedError("TODO(lab01): AnalyzeWorkflow.run")
