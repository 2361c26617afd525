"""AnalyzeWorkflow with start_activity: each step is started, then its handle awaited."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from . import activities
    from .models import AnalyzeRequest


@workflow.defn(name="AnalyzeWorkflow")
class AnalyzeWithHandles:
    def __init__(self) -> None:
        self.retry = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3,
                                 backoff_coefficient=2)

    def start(self, fn, arg) -> workflow.ActivityHandle:
        return workflow.start_activity(fn, arg, start_to_close_timeout=timedelta(minutes=1),
                                       retry_policy=self.retry)

    @workflow.run
    async def run(self, request: AnalyzeRequest) -> int:
        llm = self.start(activities.call_llm, request.prompt)
        text = await llm
        parsed = self.start(activities.parse_json, text)
        row = await parsed
        saved = self.start(activities.save_to_db, row)
        return await saved


AnalyzeWorkflow = AnalyzeWithHandles
