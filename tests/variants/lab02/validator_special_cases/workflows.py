"""AnalyzeWorkflow with a human in the loop: analyze, wait for a decision, then save or not.

The wait is `workflow.wait_condition` with a timeout: one durable timer on the
server plus a condition on the workflow's own fields. A decision reaches those
fields through a signal (`approve`, `reject`: fire and forget) or an update
(`decide`: validated, and answered with an acknowledgement). Both are recorded
in the event history, so a worker that starts after a crash rebuilds the same
state by replaying it; `status` (a query) reads that state without changing it.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from .activities import call_llm, parse_json, save_to_db
    from .models import (
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
        # State lives on the instance and is set up here, before any handler
        # runs: a signal sent with the start (or early) is applied before run().
        self._stage = ANALYZING
        self._row: dict | None = None
        self._decision: str | None = None
        self._reviewer: str | None = None
        self._note = ""

    @workflow.run
    async def run(self, request: AnalyzeRequest) -> AnalyzeResult:
        text = await workflow.execute_activity(
            call_llm, request.prompt, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        self._row = await workflow.execute_activity(
            parse_json, text, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )

        self._stage = AWAITING_APPROVAL
        try:
            await workflow.wait_condition(
                lambda: self._decision is not None,
                timeout=timedelta(seconds=request.approval_timeout_seconds),
            )
        except asyncio.TimeoutError:
            self._stage = EXPIRED
            return AnalyzeResult(
                status=EXPIRED,
                row_id=None,
                reviewer=None,
                note=f"no decision within {request.approval_timeout_seconds:g} s",
            )

        if self._decision == REJECT:
            self._stage = REJECTED
            return AnalyzeResult(REJECTED, row_id=None, reviewer=self._reviewer, note=self._note)

        self._stage = SAVING
        row_id = await workflow.execute_activity(
            save_to_db, self._row, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
        )
        self._stage = DONE
        return AnalyzeResult(APPROVED, row_id=row_id, reviewer=self._reviewer, note=self._note)

    def _record(self, decision: str, reviewer: str, note: str) -> None:
        if self._decision is not None:
            # A signal cannot be refused, so the first decision wins and later ones are ignored.
            workflow.logger.warning(
                "ignoring %s by %s: already %s by %s", decision, reviewer, self._decision, self._reviewer
            )
            return
        self._decision, self._reviewer, self._note = decision, reviewer, note

    @workflow.signal
    def approve(self, reviewer: str, comment: str = "") -> None:
        self._record(APPROVE, reviewer, comment)

    @workflow.signal
    def reject(self, reviewer: str, reason: str = "") -> None:
        self._record(REJECT, reviewer, reason)

    @workflow.update
    def decide(self, decision: str, reviewer: str, note: str = "") -> DecisionAck:
        self._record(decision, reviewer, note)
        return DecisionAck(
            workflow_id=workflow.info().workflow_id,
            decision=decision,
            reviewer=reviewer,
            accepted_at=workflow.now().isoformat(),
        )

    @decide.validator
    def check_decision(self, decision: str, reviewer: str, note: str = "") -> None:
        # Runs before the update is written to history: raising here refuses it
        # and leaves no trace. It must not change any state.
        # BUG(validator_special_cases): refuses the unknown decision it was tried with, not every one.
        if decision == "maybe":
            raise ValueError(f"unknown decision {decision!r}: expected one of {', '.join(DECISIONS)}")
        if self._decision is not None:
            raise ValueError(f"already decided: {self._decision} by {self._reviewer}")

    @workflow.query
    def status(self) -> ApprovalStatus:
        return ApprovalStatus(stage=self._stage, row=self._row, reviewer=self._reviewer, note=self._note)
