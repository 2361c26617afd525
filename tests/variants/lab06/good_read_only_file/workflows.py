"""AnalystAgentWorkflow: an OpenAI Agents SDK agent whose loop is durable.

With OpenAIAgentsPlugin on the worker, `Runner.run` inside a workflow sends every model turn to
an activity (`invoke_model_activity`), and `activity_as_tool` makes each tool call an activity
too. The agent's loop itself (which tool next, when to stop) is workflow code: after a crash a new
worker replays it from the history, with the recorded model replies and tool results, so no turn
is asked again and no finished tool runs again. A tool that was *running* when the worker died is
run again: that is why send_notification needs its idempotency key.
"""

from datetime import timedelta

from agents import Agent, Runner
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.openai_agents.workflow import activity_as_tool

with workflow.unsafe.imports_passed_through():
    from .activities import query_database, send_notification
    from .models import INSTRUCTIONS, AnalystRequest

QUERY_TIMEOUT = timedelta(seconds=10)
# A chat post answers in well under a second. If the worker dies mid-send, the server retries
# the activity only once this timeout has passed, so it is also how long a crash costs.
NOTIFY_TIMEOUT = timedelta(seconds=5)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_attempts=5)


@workflow.defn
class AnalystAgentWorkflow:
    @workflow.run
    async def run(self, request: AnalystRequest) -> str:
        agent = Agent(
            name="data-analyst",
            instructions=INSTRUCTIONS,
            model=request.model,
            tools=[
                activity_as_tool(query_database, start_to_close_timeout=QUERY_TIMEOUT, retry_policy=RETRY),
                activity_as_tool(send_notification, start_to_close_timeout=NOTIFY_TIMEOUT, retry_policy=RETRY),
            ],
        )
        result = await Runner.run(agent, request.question)
        return result.final_output
