"""AnalyzeWorkflow with a human in the loop: analyze, wait for a decision, then save or not.

The wait is `workflow.wait_condition` with a timeout: one durable timer on the
server plus a condition on the workflow's own fields. A decision reaches those
fields through a signal (`approve`, `reject`: fire and forget) or an update
(`decide`: validated, and answered with an acknowledgement). Both are recorded
in the event history, so a worker that starts after a crash rebuilds the same
state by replaying it; `status` (a query) reads that state without changing it.
"""

import asyncio  # noqa: F401  (wait_condition raises asyncio.TimeoutError)
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from .activities import call_llm, parse_json, save_to_db  # noqa: F401
    from .models import (  # noqa: F401
        ANALYZING,
        APPROVE,
        APPROVED,
        AWAITING_APPROVAL,
        DECISIONS,
        DONE,
        EXPIRED,
        REJECT,
        REJECTED,
        SAVING,
        AnalyzeRequest,
        AnalyzeResult,
        ApprovalStatus,
        DecisionAck,
    )

RETRY = RetryPolicy(
    maximum_attempts=3,
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
)
TIMEOUT = timedelta(seconds=30)


@workflow.defn
class AnalyzeWorkflow:
    def __init__(self) -> None:
        self._stage = ANALYZING
        self._row: dict | None = None
        # TODO(lab02): the decision's fields (which decision, by whom, the comment or
        # reason), all None/empty to begin with. Set them up here, not in run(): a
        # signal can arrive before run() starts, and run() would wipe it out.

    @workflow.run
    async def run(self, request: AnalyzeRequest) -> AnalyzeResult:
        text = await workflow.execute_activity(
            call_llm, request.prompt, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        self._row = await workflow.execute_activity(
            parse_json, text, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        # TODO(lab02): the approval gate. Set the stage to AWAITING_APPROVAL, then
        #   await workflow.wait_condition(<a decision arrived>, timeout=<from the request>)
        # - on asyncio.TimeoutError: stage EXPIRED, return AnalyzeResult(EXPIRED, row_id=None, ...)
        # - rejected: stage REJECTED, return AnalyzeResult(REJECTED, None, reviewer, reason)
        # - approved: stage SAVING, run save_to_db(self._row) like the other activities,
        #   stage DONE, return AnalyzeResult(APPROVED, row_id, reviewer, comment)
        raise NotImplementedError("TODO(lab02): the approval gate in AnalyzeWorkflow.run")

    @workflow.signal
    def approve(self, reviewer: str, comment: str = "") -> None:
        # TODO(lab02): record an approval, unless a decision was already made (a signal
        # cannot be refused: the first decision wins, later ones are ignored).
        raise NotImplementedError("TODO(lab02): the approve signal")

    @workflow.signal
    def reject(self, reviewer: str, reason: str = "") -> None:
        # TODO(lab02): record a rejection and its reason, with the same first-decision-wins rule.
        raise NotImplementedError("TODO(lab02): the reject signal")

    @workflow.update
    def decide(self, decision: str, reviewer: str, note: str = "") -> DecisionAck:
        # TODO(lab02): record the decision (APPROVE or REJECT) and return
        # DecisionAck(workflow_id=workflow.info().workflow_id, decision, reviewer,
        #             accepted_at=workflow.now().isoformat()).
        raise NotImplementedError("TODO(lab02): the decide update")

    @decide.validator
    def check_decision(self, decision: str, reviewer: str, note: str = "") -> None:
        # TODO(lab02): raise ValueError for a decision not in DECISIONS, or when a
        # decision was already made. A validator only reads state; it never changes it.
        raise NotImplementedError("TODO(lab02): the decide validator")

    @workflow.query
    def status(self) -> ApprovalStatus:
        # TODO(lab02): return ApprovalStatus(stage, row, reviewer, note) from the fields.
        raise NotImplementedError("TODO(lab02): the status query")
