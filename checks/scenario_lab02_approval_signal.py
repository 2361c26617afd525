"""Lab 02's scenario: a human decision reaches a workflow whose worker was SIGKILLed, and is applied once.

Shared with the check (checks/test_lab02_approval_signal.py, one chosen kill at the gate): the run's
input, the result's fields, the invariant on the rows after a decision (and, from Lab 01's scenario,
reading the rows and a run's LLM requests). The sweep (`Sweep`, `lab sweep 02`) kills at random moments.

Sweep: Lab 01's sweep (same activities, same LLM rule, one worker forked from a warm interpreter), with
the gate: each AnalyzeWorkflow run waits after parse_json for a reviewer. The sweep is the
reviewer, and decides each run one of four ways (by its index), always followed by a
contradicting second decision from someone else, which the run must ignore:
  w0  `approve` signal sent while no worker runs (between a kill and the restart);
  w1  `reject`  signal sent while no worker runs;
  w2  `decide("approve")` update while a worker runs (same update id on a retry: idempotent);
  w3  `reject`  signal while a worker runs.
A run whose gate no dead window found is decided after the last restart (counted apart).
The approval timeout is long (the runs must not expire: that is the check's case, not this one).

Logical LLM call and the in-flight rule: as Lab 01 (call_llm of one workflow).
Invariants verified at the end: every workflow COMPLETED with the FIRST decision (status and
reviewer); an approved run has exactly one `analysis` row, its result's row id, and save_to_db
completed once in history; a rejected run has no row and no save_to_db; call_llm and parse_json
completed once; no row for anything else; no LLM call outside a workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

from datetime import timedelta

from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from labkit.sweep import Violation
from labkit.sweep_temporal import WORKFLOW_TASK_TIMEOUT, completed_activities, landing

import scenario_lab01_temporal_crash as lab01  # this lab's sweep is Lab 01's with the gate

APPROVAL_TIMEOUT_S = 600  # the sweep's runs must not expire (expiry is the check's case)
# index % 4: (decision, how, when) of the first decision; the second always contradicts it
PLANS = [("approve", "signal", "dead"), ("reject", "signal", "dead"), ("approve", "update", "live"),
         ("reject", "signal", "live")]
OTHER = {"approve": "reject", "reject": "approve"}
STATUS = {"approve": "approved", "reject": "rejected"}


# --- shared by the check and the sweep -----------------------------------------------------------

def start_input(marker: str, approval_timeout_s: float | None = None) -> dict:
    """AnalyzeWorkflow's input: Lab 01's review with `marker`, and the approval timeout when one is given
    (else the lab's default)."""
    request = lab01.start_input(marker)
    if approval_timeout_s is not None:
        request["approval_timeout_seconds"] = approval_timeout_s
    return request


def result_field(result: object, name: str):
    """A field of AnalyzeResult as the client got it back (a dict without a result type, else the object)."""
    return result.get(name) if isinstance(result, dict) else getattr(result, name, None)


def rows_as_decided(rows, workflow_id: str, decision: str, row_id: object) -> bool:
    """The invariant on the database after a decision: an approved run saved exactly one row, whose id is
    the result's row_id; a rejected one saved none."""
    if decision == "approve":
        return row_id is not None and lab01.one_row_saved(rows, workflow_id, row_id)
    return not [row for row in rows if row[1] == workflow_id]


# --- the sweep -----------------------------------------------------------------------------------


class Sweep(lab01.Sweep):
    lab = "02"

    def __init__(self, workdir: Path, subjects: int = 4, **options):
        super().__init__(workdir, subjects=subjects, **options)
        self.counts: Counter = Counter()

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        await super().begin_trial(trial, gate)  # the database: LAB02_DATABASE_URL, lab02.sqlite
        self.decisions = {workflow_id: PLANS[i % len(PLANS)] for i, workflow_id in enumerate(self.plan)}
        self.decided: dict[str, str] = {}  # workflow id: when its decision was sent ("dead" | "live" | "late")
        self.reviewer_task = asyncio.create_task(self._decide_live())

    async def _start_runs(self) -> None:
        for n, (workflow_id, marker) in enumerate(self.plan.items()):
            if n:
                await asyncio.sleep(self.start_gap_s)
            await self.gate.wait()
            self.handles[workflow_id] = await self.client.start_workflow(
                "AnalyzeWorkflow", start_input(marker, APPROVAL_TIMEOUT_S),
                id=workflow_id, task_queue=self.harness.task_queue, task_timeout=WORKFLOW_TASK_TIMEOUT)

    async def _at_gate(self, workflow_id: str) -> bool:
        handle = self.handles.get(workflow_id)
        return handle is not None and "parse_json" in await completed_activities(handle)

    async def _send(self, workflow_id: str, when: str) -> None:
        """The reviewer's decision, then someone else's contradicting one (which must be ignored)."""
        decision, how, _ = self.decisions[workflow_id]
        handle: WorkflowHandle = self.handles[workflow_id]
        self.decided[workflow_id] = when
        self.counts[f"decisions sent {'while no worker ran' if when == 'dead' else when}"] += 1
        if how == "update":
            # a worker may die under the update: the same update id makes the retry idempotent
            while True:
                try:
                    await handle.execute_update("decide", args=[decision, "reviewer-1", "first"],
                                                id=f"decide-{workflow_id}", rpc_timeout=timedelta(seconds=5))
                    break
                except (WorkflowUpdateRPCTimeoutOrCancelledError, RPCError):  # no worker took it in time
                    self.counts["update retried (same id)"] += 1
                    await asyncio.sleep(0.2)
        else:
            await handle.signal(decision, args=["reviewer-1", "first"])
        try:
            await handle.signal(OTHER[decision], args=["reviewer-2", "second, must be ignored"])
        except RPCError as err:  # a reject finishes at once: the server refuses a signal to a closed run
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            self.counts["second decision refused: the run had already finished"] += 1

    async def _decide_live(self) -> None:
        while True:
            await self.gate.wait()
            for workflow_id, (_, _, when) in self.decisions.items():
                if when == "live" and workflow_id not in self.decided:
                    with contextlib.suppress(RPCError):  # the server is busy: the next round tries again
                        if await self._at_gate(workflow_id):
                            await self._send(workflow_id, "live")
            await asyncio.sleep(0.1)

    async def landings(self) -> list[str]:
        found = []
        for workflow_id in self.plan:
            handle = self.handles.get(workflow_id)
            label = await landing(handle) if handle else "workflow not started yet"
            if label == "workflow task or between activities" and workflow_id not in self.decided \
                    and await self._at_gate(workflow_id):
                label = "waiting for the reviewer"
            found.append(label)
        return found

    async def after_kill(self) -> None:
        await super().after_kill()
        for workflow_id, (_, _, when) in self.decisions.items():  # no worker runs now
            if when == "dead" and workflow_id not in self.decided and await self._at_gate(workflow_id):
                await self._send(workflow_id, "dead")

    async def finish(self) -> None:
        deadline = time.monotonic() + self.finish_timeout_s
        await asyncio.wait_for(self.feed, timeout=self.finish_timeout_s)
        while len(self.decided) < len(self.plan) and time.monotonic() < deadline:
            for workflow_id, (_, _, when) in self.decisions.items():
                if when == "dead" and workflow_id not in self.decided and await self._at_gate(workflow_id):
                    await self._send(workflow_id, "late")  # no dead window found its gate
            await asyncio.sleep(0.1)
        self.reviewer_task.cancel()
        await super().finish()

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        rows = self._rows()
        for workflow_id in self.plan:
            decision = self.decisions[workflow_id][0]
            result = self.results.get(workflow_id, "never started")
            expected = f"AnalyzeWorkflow COMPLETED: status {STATUS[decision]!r}, reviewer 'reviewer-1' (the first decision)"
            status, reviewer = result_field(result, "status"), result_field(result, "reviewer")
            if status is None and isinstance(result, WorkflowFailureError) and self.spent_by_kills(workflow_id):
                self.counts[f"runs failed: every {self.spent_by_kills(workflow_id)} attempt killed"] += 1
                continue
            if status is None:
                found.append(Violation(trial, workflow_id, "workflow lost", f"{type(result).__name__}: {result}", expected))
                continue
            if (status, reviewer) != (STATUS[decision], "reviewer-1"):
                found.append(Violation(trial, workflow_id, "the decision not applied exactly once (first wins)",
                                       f"status {status!r}, reviewer {reviewer!r}", expected))
            row_id = result_field(result, "row_id")
            mine = [row[0] for row in rows if row[1] == workflow_id]
            if not rows_as_decided(rows, workflow_id, decision, row_id):
                found.append(Violation(trial, workflow_id, "not exactly one database row per approved run (none if rejected)",
                                       f"rows {mine} in table analysis, result row_id {row_id}",
                                       "exactly one row, id = the result's row_id" if decision == "approve"
                                       else "no row (rejected)"))
            runs = await completed_activities(self.handles[workflow_id])
            want = {"call_llm", "parse_json"} | ({"save_to_db"} if decision == "approve" else set())
            if runs != want:
                found.append(Violation(trial, workflow_id, "activities not each completed once in history",
                                       f"completed: {sorted(runs)}", f"completed: {sorted(want)}"))
        strangers = [row[:2] for row in rows if row[1] not in self.plan]
        if strangers:
            found.append(Violation(trial, "table analysis", "rows for no workflow of the trial",
                                   f"{strangers}", "one row per approved workflow of the trial, nothing else"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls outside any workflow",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].prompt[:80]!r}",
                                   "every request carries the prompt of one of the trial's workflows"))
        return found

    async def end_trial(self) -> None:
        with contextlib.suppress(Exception):
            self.reviewer_task.cancel()
        await super().end_trial()
