"""Correct variant alt_shape: the same behaviour as the reference, in a different shape.

It must PASS every check: a grader that only accepts the reference's shape is wrong.
Differences: @workflow.init takes the request, one Decision dataclass instead of three
fields, asyncio.wait_for around a timeout-less wait_condition, handlers that delegate to
one method, a validator built on a helper that says why, an async update handler, and the class
exported under the name the course's worker imports (AnalyzeWorkflow = ReviewedAnalysis).
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    # Names, not `from . import models`: the sandbox would re-import that module (and its table).
    from .activities import call_llm, parse_json, save_to_db
    from .models import (ANALYZING, APPROVE, APPROVED, AWAITING_APPROVAL, DECISIONS, DONE, EXPIRED, REJECT,
                         REJECTED, SAVING, AnalyzeRequest, AnalyzeResult, ApprovalStatus, DecisionAck)


@dataclass
class Decision:
    verdict: str
    reviewer: str
    note: str


def _options() -> dict:
    return {
        "start_to_close_timeout": timedelta(seconds=20),
        "retry_policy": RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=2),
                                    backoff_coefficient=2.0),
    }


@workflow.defn(name="AnalyzeWorkflow")
class ReviewedAnalysis:
    @workflow.init
    def __init__(self, request: AnalyzeRequest) -> None:
        self.request = request
        self.stage = ANALYZING
        self.row: dict | None = None
        self.decision: Decision | None = None

    def _why_not(self, verdict: str) -> str | None:
        if verdict not in DECISIONS:
            return f"{verdict!r} is not a decision"
        if self.decision is not None:
            return f"{self.decision.reviewer} already chose {self.decision.verdict}"
        return None

    def _take(self, verdict: str, reviewer: str, note: str) -> bool:
        if self._why_not(verdict) is None:
            self.decision = Decision(verdict, reviewer, note)
            return True
        return False

    @workflow.signal(name="approve")
    def on_approve(self, reviewer: str, comment: str = "") -> None:
        self._take(APPROVE, reviewer, comment)

    @workflow.signal(name="reject")
    def on_reject(self, reviewer: str, reason: str = "") -> None:
        self._take(REJECT, reviewer, reason)

    @workflow.update(name="decide")
    async def on_decide(self, decision: str, reviewer: str, note: str = "") -> DecisionAck:
        self._take(decision, reviewer, note)
        return DecisionAck(workflow.info().workflow_id, decision, reviewer, workflow.now().isoformat())

    @on_decide.validator
    def _validate(self, decision: str, reviewer: str, note: str = "") -> None:
        problem = self._why_not(decision)
        if problem:
            raise ValueError(problem)

    @workflow.query(name="status")
    def current(self) -> ApprovalStatus:
        d = self.decision
        return ApprovalStatus(self.stage, self.row, d.reviewer if d else None, d.note if d else "")

    def _end(self, stage: str, status: str, row_id: int | None = None) -> AnalyzeResult:
        self.stage = stage
        d = self.decision
        return AnalyzeResult(status, row_id, d.reviewer if d else None, d.note if d else "")

    @workflow.run
    async def run(self, request: AnalyzeRequest) -> AnalyzeResult:
        self.row = await workflow.execute_activity(
            parse_json, await workflow.execute_activity(call_llm, request.prompt, **_options()), **_options())
        self.stage = AWAITING_APPROVAL
        try:
            await asyncio.wait_for(workflow.wait_condition(lambda: self.decision is not None),
                                   timeout=self.request.approval_timeout_seconds)
        except TimeoutError:
            return self._end(EXPIRED, EXPIRED)
        if self.decision.verdict != APPROVE:
            return self._end(REJECTED, REJECTED)
        self.stage = SAVING
        row_id = await workflow.execute_activity(save_to_db, self.row, **_options())
        return self._end(DONE, APPROVED, row_id)


# The course's worker imports this name.
AnalyzeWorkflow = ReviewedAnalysis
