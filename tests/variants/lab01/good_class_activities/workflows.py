"""AnalyzeWorkflow scheduling the methods of AnalysisActivities."""

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from .activities import AnalysisActivities
    from .models import AnalyzeRequest


@workflow.defn
class AnalyzeWorkflow:
    @workflow.run
    async def run(self, request: AnalyzeRequest) -> int:
        options = dict(
            start_to_close_timeout=timedelta(seconds=20),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=2),
                backoff_coefficient=2.0,
                maximum_interval=timedelta(seconds=30),
                maximum_attempts=3,
            ),
        )
        text = await workflow.execute_activity_method(AnalysisActivities.call_llm, request.prompt, **options)
        row = await workflow.execute_activity_method(AnalysisActivities.parse_json, text, **options)
        return await workflow.execute_activity_method(AnalysisActivities.save_to_db, row, **options)
