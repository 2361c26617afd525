"""AnalystAgentWorkflow, shaped differently: the agent is built in @workflow.init, the tools come
from the class's methods, and the run is capped with max_turns."""

from datetime import timedelta

from agents import Agent, Runner
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.openai_agents.workflow import activity_as_tool

with workflow.unsafe.imports_passed_through():
    from .activities import AnalystTools
    from .models import INSTRUCTIONS, AnalystRequest


def tools() -> list:
    retry = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_attempts=4)
    return [
        activity_as_tool(AnalystTools.query_database, start_to_close_timeout=timedelta(seconds=15), retry_policy=retry),
        activity_as_tool(AnalystTools.send_notification, start_to_close_timeout=timedelta(seconds=4),
                         retry_policy=retry),
    ]


@workflow.defn(name="AnalystAgentWorkflow")
class Analyst:
    @workflow.init
    def __init__(self, request: AnalystRequest) -> None:
        self.agent = Agent(name="analyst", instructions=INSTRUCTIONS, model=request.model, tools=tools())

    @workflow.run
    async def run(self, request: AnalystRequest) -> str:
        return (await Runner.run(self.agent, request.question, max_turns=8)).final_output


AnalystAgentWorkflow = Analyst
