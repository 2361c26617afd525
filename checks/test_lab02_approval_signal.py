"""Lab 02 autograder: a human decision gates the save, and neither a crash nor a race loses or doubles it.

Scenario, run once for the module against a fresh Temporal dev server and course LLM.
Five AnalyzeWorkflow runs share the student's worker (a real process):
  approve  waits at the gate; the worker is SIGKILLed; `approve` is signalled while no worker
           runs; a new worker starts and finishes it.
  reject   the same kill window: `reject` (bob, a reason), a contradicting `approve` (mallory), and
           a `decide("approve")` update (dave) that the next worker's validator must refuse.
  expire   approval_timeout_seconds = 2 in its input, and nobody decides.
  update   after the restart: `decide("maybe")` (must be refused), then `decide("approve")` (carol),
           which must be acknowledged.
  early    started with its `approve` signal (signal-with-start): the decision arrives before the
           workflow has even called the LLM.
Each check below reads its evidence from outside the student's process: the `status` query, the
Temporal history (signals, updates, timers, activities), the SQLite rows, the LLM ledger, a replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory,
                               WorkflowQueryFailedError, WorkflowUpdateFailedError,
                               WorkflowUpdateRPCTimeoutOrCancelledError)
from temporalio.service import RPCError

from labkit import history as hist
from labkit import temporal
from labkit.approval import ApprovalError, DecisionResult, send_decision
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import WorkerHarness
from labkit.llm import LedgerEntry
from labkit.replays import ReplaySet, ReplaySetVerdict

LAB = "02"
DEFAULT_TIMEOUT_S = 24 * 60 * 60  # the lab's default approval timeout
EXPIRE_AFTER_S = 2.0  # the expire path's approval_timeout_seconds
EXPIRY_SLACK_S = 10.0  # how late after its timeout the expire path may still end
REACH_GATE_S = 20.0
FINISH_AFTER_RESTART_S = 15.0
UPDATE_ANSWER_S = 10.0
AWAITING = "awaiting_approval"
REASON = "the summary misses the refund"

REVISIT_STATE = ("Keep the decision on the workflow instance (fields set in __init__), set it from the "
                 "signal and update handlers, and wait with `workflow.wait_condition(lambda: ..., "
                 "timeout=...)`. The history records every signal and update, so a new worker rebuilds "
                 "the same fields by replaying it (§64.2.1; the text's `workflow.condition` and "
                 "`workflow.signal_handler` do not exist).")


@dataclass
class Gate:
    """What the approval gate looked like when the workflow reached it."""

    by: str  # "query" (status said awaiting_approval) or "history" (idle after parse_json, no save)
    status: Any  # the status query's answer, or None
    query_error: str | None
    rows: list[tuple]
    save_scheduled: bool
    elapsed_s: float  # from the start of the wait for it
    at: float  # time.monotonic() when it was seen


@dataclass
class Sent:
    what: str  # "approve(alice)", "decide('maybe')", ...
    at: datetime
    outcome: str  # "recorded" | "accepted" | "refused" | "error"
    detail: Any = None  # the ack, the refusal message, the error


@dataclass
class Run:
    key: str
    workflow_id: str
    marker: str
    timeout_s: float | None = None  # None: not passed, the workflow's default applies
    handle: WorkflowHandle | None = None
    gate: Gate | None = None
    gate_failure: CheckFailed | None = None
    sent: list[Sent] = field(default_factory=list)
    send_failure: CheckFailed | None = None
    result: Any = None
    finish_failure: CheckFailed | None = None
    still_running: bool = False  # finish_failure because it was still running at its deadline
    finished_at: datetime | None = None
    history: WorkflowHistory | None = None
    final_status: Any = None
    final_status_error: str | None = None
    rows: list[tuple] = field(default_factory=list)
    llm_calls: list[LedgerEntry] = field(default_factory=list)

    def reached_gate(self) -> Gate:
        if self.gate is None:
            reason = self.gate_failure.summary if self.gate_failure else "it was never started"
            raise NotChecked(f"not checked: the {self.key} run never waited at the approval gate ({reason})")
        return self.gate

    def finished(self) -> Any:
        if self.finish_failure is not None:
            raise self.finish_failure
        return self.result


@dataclass
class Scenario:
    paths: dict[str, Run]  # by key: approve, reject, expire, update, early
    old_identities: set[str] = field(default_factory=set)
    new_identities: set[str] = field(default_factory=set)
    killed_pid: int = 0
    killed_returncode: int | None = None
    killed_at: datetime | None = None
    restarted_at: datetime | None = None
    replay: ReplaySetVerdict | None = None
    failure: CheckFailed | None = None

    approve = property(lambda self: self.paths["approve"])
    reject = property(lambda self: self.paths["reject"])
    expire = property(lambda self: self.paths["expire"])
    update = property(lambda self: self.paths["update"])
    early = property(lambda self: self.paths["early"])

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the scenario did not run ({self.failure.summary})")
        return self


# --- the scenario --------------------------------------------------------------------------------

class Lab02Harness(WorkerHarness):
    def __init__(self, target, services, workdir: Path, key: str):
        self.db_path = Path(workdir) / "lab02.sqlite"
        super().__init__(target, services, workdir, lab=LAB, key=key,
                         LAB02_DATABASE_URL=f"sqlite:///{self.db_path}")

        self.replay: ReplaySet | None = None

    def rows(self, workflow_id: str) -> list[tuple]:
        if not self.db_path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=5)) as db:
            try:
                return db.execute("SELECT id, workflow_id FROM analysis WHERE workflow_id = ?",
                                  (workflow_id,)).fetchall()
            except sqlite3.Error:  # no table yet: nothing was ever saved
                return []


def start_input(path: Run) -> dict:
    request: dict[str, Any] = {"prompt": f"Analyze this customer review {path.marker}: the parcel came two "
                                         f"days late, but support sorted it out in minutes."}
    if path.timeout_s is not None:
        request["approval_timeout_seconds"] = path.timeout_s
    return request


async def query_status(handle: WorkflowHandle) -> tuple[Any, str | None]:
    try:
        return await handle.query("status", rpc_timeout=timedelta(seconds=5)), None
    except WorkflowQueryFailedError as err:
        return None, str(err)
    except RPCError as err:
        return None, f"{err.status.name if err.status else 'RPC error'}: {err.message}"


def _stage(status: Any) -> Any:
    return status.get("stage") if isinstance(status, dict) else None


def _idle_after_parse(history: WorkflowHistory) -> tuple[bool, bool]:
    """(waiting: parse_json done, a workflow task completed since, nothing pending; save scheduled?)"""
    runs = temporal.activity_runs(history)
    save_scheduled = any(r.name == "save_to_db" for r in runs)
    parse = next((r for r in runs if r.name == "parse_json" and r.outcome == "completed"), None)
    if parse is None or any(r.outcome == "pending" for r in runs):
        return False, save_scheduled
    after = [e for e in history.events if e.event_time.ToDatetime(tzinfo=timezone.utc) >= parse.closed_at]
    task_done = any(hist.kind(e) == "WORKFLOW_TASK_COMPLETED" for e in after)
    return task_done and not save_scheduled, save_scheduled


async def reach_gate(harness: Lab02Harness, path: Run) -> None:
    """Wait until the run waits for a decision; record what the gate looked like, or why it never did."""
    began = time.monotonic()
    deadline = began + REACH_GATE_S
    status, query_error = None, None
    while time.monotonic() < deadline:
        history = await path.handle.fetch_history()
        closed = hist.closure(history)
        if closed is not None and path.timeout_s is not None and isinstance(closed.result, dict) \
                and closed.result.get("status") == "expired":
            # A short timeout can pass before this poll sees the wait (a loaded machine): it did wait.
            path.gate = Gate(by="history", status=None, query_error=None, rows=harness.rows(path.workflow_id),
                             save_scheduled=False, elapsed_s=time.monotonic() - began, at=time.monotonic())
            return
        if closed is not None:
            path.gate_failure = closed_before_gate(harness, path, closed, history)
            return
        failed = await harness.workflow_task_failure(
            path.handle, expected="AnalyzeWorkflow.run calls call_llm and parse_json, then waits for a decision",
            history=history)
        if failed is not None:
            path.gate_failure = failed
            return
        if any(r.name == "parse_json" and r.outcome == "completed" for r in temporal.activity_runs(history)):
            status, query_error = await query_status(path.handle)
            if query_error and "TODO(lab02)" in query_error:
                path.gate_failure = unfinished(query_error, LAB)
                return
            idle, save_scheduled = _idle_after_parse(history)
            if _stage(status) == AWAITING or idle:
                path.gate = Gate(by="query" if _stage(status) == AWAITING else "history", status=status,
                                 query_error=query_error, rows=harness.rows(path.workflow_id),
                                 save_scheduled=save_scheduled, elapsed_s=time.monotonic() - began,
                                 at=time.monotonic())
                return
        await asyncio.sleep(0.05)
    runs = temporal.activity_runs(await path.handle.fetch_history())
    path.gate_failure = CheckFailed(
        f"The {path.key} run did not reach the approval gate within {REACH_GATE_S:.0f} s",
        observed=("activities so far: " + (", ".join(f"{r.name} ({r.outcome})" for r in runs) or "none")
                  + f"; status query: {status if query_error is None else query_error}"),
        expected=f"call_llm and parse_json complete, then the workflow waits: the status query says {AWAITING!r}",
        revisit="After parse_json, set the stage to awaiting_approval and await "
                "workflow.wait_condition(...). " + REVISIT_STATE,
        details=tail(harness.workers[-1].output()))


async def settle(harness: Lab02Harness, path: Run) -> None:
    """Wait until the run has finished or waits with no activity running: a kill now costs it nothing.

    (SIGKILL during a running activity would cost that activity's start_to_close_timeout.)
    """
    deadline = time.monotonic() + REACH_GATE_S
    while time.monotonic() < deadline:
        history = await path.handle.fetch_history()
        if hist.closure(history) is not None or _idle_after_parse(history)[0]:
            return
        if await harness.workflow_task_failure(path.handle, expected="", history=history) is not None:
            return
        await asyncio.sleep(0.05)


def closed_before_gate(harness: Lab02Harness, path: Run, closed: hist.Closure,
                       history: WorkflowHistory) -> CheckFailed:
    runs = temporal.activity_runs(history)
    rows = harness.rows(path.workflow_id)
    if closed.status == "COMPLETED":
        return CheckFailed(
            f"The {path.key} run finished before anyone decided: nothing made it wait",
            observed=(f"it completed with {closed.result!r} before any decision was sent; activities: "
                      + ", ".join(f"{r.name} ({r.outcome})" for r in runs) + f"; rows saved: {len(rows)}"),
            expected=f"after parse_json it waits (status {AWAITING!r}) until approve, reject or the timeout",
            revisit="The gate: `await workflow.wait_condition(lambda: <a decision arrived>, timeout=...)` "
                    "between parse_json and save_to_db, and the decision set only by the handlers of "
                    "THIS workflow run. " + REVISIT_STATE)
    return CheckFailed(
        f"The {path.key} run ended {closed.status} before the approval gate: {closed.failure[:200]}",
        observed=f"AnalyzeWorkflow ended {closed.status}",
        expected=f"it waits for a decision after parse_json (status {AWAITING!r})",
        revisit="Read the cause above and the worker log.",
        details=tail(harness.workers[-1].output()))


async def send(path: Run, client: Client, *, decision: str, reviewer: str, note: str, via: str) -> Sent:
    at = datetime.now(timezone.utc)
    what = f"{decision}({reviewer})" if via == "signal" else f"decide({decision!r}, {reviewer})"
    try:
        if decision in ("approve", "reject"):
            result: DecisionResult = await send_decision(
                None, path.workflow_id, decision=decision, reviewer=reviewer, comment_or_reason=note, via=via,
                client=client, update_timeout=UPDATE_ANSWER_S)
            if via == "signal":
                sent = Sent(what, at, "recorded")
            else:
                sent = Sent(what, at, "accepted" if result.accepted else "refused",
                            result.ack if result.accepted else result.refusal)
        else:  # a decision the course's approve command would not even send
            try:
                ack = await asyncio.wait_for(path.handle.execute_update("decide", args=[decision, reviewer, note]),
                                             UPDATE_ANSWER_S)
                sent = Sent(what, at, "accepted", ack)
            except WorkflowUpdateFailedError as err:
                sent = Sent(what, at, "refused", getattr(err.cause, "message", None) or str(err.cause or err))
            except (asyncio.TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
                sent = Sent(what, at, "error", f"no answer within {UPDATE_ANSWER_S:.0f} s")
    except (ApprovalError, RPCError) as err:
        sent = Sent(what, at, "error", str(err))
    path.sent.append(sent)
    return sent


async def wait_result(harness: Lab02Harness, path: Run, deadline: float) -> None:
    result = asyncio.ensure_future(path.handle.result())
    try:
        while not result.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait({result}, timeout=min(0.5, remaining))
            if not result.done():
                failed = await harness.workflow_task_failure(
                    path.handle, expected="AnalyzeWorkflow runs to the end once a decision arrives")
                if failed is not None:
                    path.finish_failure = failed
                    return
        if not result.done():
            status, query_error = await query_status(path.handle)
            pending = await temporal.pending_activities(path.handle)
            path.still_running = True
            path.finish_failure = CheckFailed(
                f"The {path.key} run did not finish",
                observed=(f"still running; status query: {status if query_error is None else query_error}"
                          + ("; pending: " + ", ".join(f"{p.name} attempt {p.attempt}" for p in pending)
                             if pending else "")),
                expected="it ends once a decision arrives (or its approval timeout passes)",
                revisit=REVISIT_STATE,
                details=tail(harness.workers[-1].output()))
            return
        try:
            path.result = result.result()
        except WorkflowFailureError as err:
            path.finish_failure = CheckFailed(
                f"The {path.key} run failed: {err.cause}",
                observed="AnalyzeWorkflow ended FAILED",
                expected="it completes and returns an AnalyzeResult (status, row_id, reviewer, note)",
                revisit="Read the cause above. A rejection or an expiry is a normal result, not an exception.",
                details=tail(harness.workers[-1].output()))
        path.finished_at = datetime.now(timezone.utc)
    finally:
        result.cancel()


async def run_scenario(harness: Lab02Harness, scenario: Scenario) -> None:
    client = await Client.connect(harness.services.temporal_address)
    p = scenario.paths
    worker1 = harness.start_worker()
    scenario.old_identities = await harness.wait_polling(client, worker1)
    # Started now, the replay process imports the workflow module while the scenario runs.
    replay = harness.replay = ReplaySet(root=harness.target.root, module=harness.target.module("workflows"))

    # The early run first: its decision travels with the start.
    p["early"].handle = await client.start_workflow(
        "AnalyzeWorkflow", start_input(p["early"]), id=p["early"].workflow_id, task_queue=harness.task_queue,
        start_signal="approve", start_signal_args=["erin", "approved before the analysis"])
    p["early"].sent.append(Sent("approve(erin) with the start", datetime.now(timezone.utc), "recorded"))
    for key in ("approve", "reject", "update", "expire"):
        p[key].handle = await client.start_workflow(
            "AnalyzeWorkflow", start_input(p[key]), id=p[key].workflow_id, task_queue=harness.task_queue)
    await asyncio.gather(settle(harness, p["early"]),
                         *(reach_gate(harness, p[key]) for key in ("approve", "reject", "update", "expire")))

    # The fault: SIGKILL the worker while the runs wait for people.
    worker1.kill()
    scenario.killed_pid, scenario.killed_returncode = worker1.pid, worker1.returncode
    scenario.killed_at = datetime.now(timezone.utc)
    for path in p.values():
        with contextlib.suppress(RPCError):  # do what a graceful shutdown would have; see temporal.forget_sticky_queue
            await temporal.forget_sticky_queue(client, path.workflow_id)

    # Decisions while no worker runs: the server records the signals.
    if p["approve"].gate:
        await send(p["approve"], client, decision="approve", reviewer="alice", note="looks right", via="signal")
    late = None
    if p["reject"].gate:
        await send(p["reject"], client, decision="reject", reviewer="bob", note=REASON, via="signal")
        await send(p["reject"], client, decision="approve", reviewer="mallory", note="ship it", via="signal")
        # And a late decision by update. An update waits for a worker to validate it; that worker
        # sees the two signals first (they are earlier in the history), so it must refuse it.
        late = asyncio.ensure_future(send(p["reject"], client, decision="approve", reviewer="dave",
                                          note="overruling bob", via="update"))
        await asyncio.sleep(0.2)  # the request reaches the server before any worker can end the run

    scenario.restarted_at = datetime.now(timezone.utc)
    restarted = time.monotonic()
    worker2 = harness.start_worker()
    try:
        scenario.new_identities = await harness.wait_polling(client, worker2, scenario.old_identities)

        update = p["update"]
        if update.gate:
            await send(update, client, decision="maybe", reviewer="carol", note="not sure", via="update")
            await send(update, client, decision="approve", reviewer="carol", note="approved by update",
                       via="update")
        if late is not None:
            await late

        expire = p["expire"]
        expire_deadline = restarted + FINISH_AFTER_RESTART_S
        if expire.gate:
            expire_deadline = max(expire_deadline, expire.gate.at + EXPIRE_AFTER_S + EXPIRY_SLACK_S)
        waits = []
        for path in p.values():
            if path.gate or path.key == "early":
                deadline = expire_deadline if path.key == "expire" else restarted + FINISH_AFTER_RESTART_S
                waits.append(wait_result(harness, path, deadline))
        await asyncio.gather(*waits)

        ledger = harness.services.llm.ledger().entries(caller=harness.api_key)
        for path in p.values():
            path.history = await path.handle.fetch_history()
            path.rows = harness.rows(path.workflow_id)
            path.llm_calls = [e for e in ledger if path.marker in e.prompt]

        async def final_status(path: Run) -> None:
            path.final_status, path.final_status_error = await query_status(path.handle)

        await asyncio.gather(*(final_status(p[key]) for key in ("approve", "reject", "expire")
                               if hist.closure(p[key].history)))
        worker2.signal_tree(signal.SIGINT)  # shuts down gracefully while the replay runs
        histories = {path.workflow_id: path.history for path in p.values() if hist.closure(path.history)}
        scenario.replay = await asyncio.to_thread(replay.verdict, histories)
    finally:
        replay.close()
        if late is not None:
            late.cancel()


@pytest.fixture(scope="module")
def scenario(lab_target, services, tmp_path_factory) -> Scenario:
    key = uuid.uuid4().hex[:8]
    harness = Lab02Harness(lab_target, services, tmp_path_factory.mktemp("lab02-run"), key)
    paths = {name: Run(name, f"analyze-{name}-{key}", f"[run {name}-{key}]")
             for name in ("approve", "reject", "expire", "update", "early")}
    paths["expire"].timeout_s = EXPIRE_AFTER_S
    found = Scenario(paths=paths)
    try:
        asyncio.run(run_scenario(harness, found))
    except CheckFailed as failure:
        found.failure = failure
    finally:
        harness.close()
    return found


def sent_by(path: Run) -> str:
    return "; ".join(f"{s.what} -> {s.outcome}" + (f" ({s.detail})" if s.detail else "") for s in path.sent)


# --- the checks ----------------------------------------------------------------------------------

@pytest.mark.check("waits-for-approval")
def test_waits_for_a_decision_before_saving(scenario, evidence):
    """Given a run whose analysis is parsed,
    Then it waits at the approval gate, and no row exists while it waits."""
    if scenario.failure:
        raise scenario.failure
    approve = scenario.approve
    if approve.gate_failure:
        raise approve.gate_failure
    gate = approve.reached_gate()
    evidence.update(gate=f"{gate.elapsed_s:.1f}s", rows_at_gate=len(gate.rows))
    if gate.rows or gate.save_scheduled:
        raise CheckFailed(
            "A row was saved before anyone approved it",
            observed=(f"while the run waited (status {_stage(gate.status)!r}), table analysis already held "
                      f"{len(gate.rows)} row(s) for it" + ("; save_to_db had been scheduled" if gate.save_scheduled
                                                           else "")),
            expected="no save_to_db, and no row, until an approve decision arrives",
            revisit="The gate sits between parse_json and save_to_db: parse, wait, then save only if approved. "
                    + REVISIT_STATE)


@pytest.mark.check("status-query")
def test_status_query_reports_the_stage_and_the_row(scenario, evidence):
    """Then while waiting, the `status` query says awaiting_approval and shows the parsed row;
    and after the end it says done / rejected / expired."""
    scenario.require()
    approve = scenario.approve
    gate = approve.reached_gate()
    revisit = ("`@workflow.query def status(self) -> ApprovalStatus`: return the stage and the parsed row from "
               "the workflow's fields. A query reads state; it must not change it or await anything.")
    if gate.query_error:
        raise CheckFailed("The status query failed", observed=gate.query_error,
                          expected=f"an ApprovalStatus with stage {AWAITING!r} and the parsed row", revisit=revisit)
    if _stage(gate.status) != AWAITING:
        raise CheckFailed(
            "The status query does not say the run awaits approval",
            observed=f"the run waited after parse_json (seen in its history), and status answered {gate.status!r}",
            expected=f"stage {AWAITING!r}", revisit=revisit)
    replies = [json.loads(c.reply) for c in approve.llm_calls if c.reply]
    row = gate.status.get("row")
    if not isinstance(row, dict) or not replies or any(row.get(k) != replies[0].get(k)
                                                       for k in ("sentiment", "summary", "topics")):
        raise CheckFailed(
            "The status query does not show the row the reviewer is asked to approve",
            observed=f"row = {row!r}",
            expected=f"the parsed analysis: {replies[0] if replies else 'the LLM reply, parsed'}",
            revisit="Keep parse_json's result on the workflow (self._row) and return it in the status.")
    # Each ended run's last stage must match how it ended (whether it ended right is its own check's job).
    final_stage = {"approved": "done", "rejected": "rejected", "expired": "expired"}
    for key in ("approve", "reject", "expire"):
        path = scenario.paths[key]
        ended = path.result.get("status") if isinstance(path.result, dict) else None
        if path.finish_failure or path.gate is None or ended not in final_stage:
            continue
        if _stage(path.final_status) != final_stage[ended]:
            raise CheckFailed(
                f"After the {key} run ended {ended}, the status query does not say {final_stage[ended]!r}",
                observed=f"status = {path.final_status if path.final_status_error is None else path.final_status_error}",
                expected=f"stage {final_stage[ended]!r}", revisit=revisit + " Set the stage on every way out of run().")
    evidence["stages"] = "awaiting_approval,done,rejected,expired"


@pytest.mark.check("approval-survives-crash")
def test_approval_sent_while_no_worker_runs_is_applied(scenario, evidence):
    """Given the worker SIGKILLed while the run waited,
    When `approve` is signalled while no worker runs, and then a new worker starts,
    Then the run completes there: approved, by alice."""
    scenario.require()
    approve = scenario.approve
    approve.reached_gate()
    evidence.update(restarts=1, killed_pid=scenario.killed_pid)
    if scenario.killed_returncode != -signal.SIGKILL:
        raise CheckFailed("The worker was not killed", observed=f"exit status {scenario.killed_returncode}",
                          expected="killed by SIGKILL (-9) while the run waited")
    signals = [s for s in hist.signals(approve.history) if s.name == "approve"]
    if not signals:
        raise CheckFailed("The approve signal is not in the run's history",
                          observed=sent_by(approve), expected="one WorkflowExecutionSignaled event 'approve'")
    first = signals[0]
    if not (scenario.killed_at <= first.at <= scenario.restarted_at):
        raise CheckFailed("The approval was not sent while the worker was down",
                          observed=f"killed {scenario.killed_at}, signal recorded {first.at}, "
                                   f"restart {scenario.restarted_at}",
                          expected="kill < signal < restart")
    evidence["signal_while_down"] = f"{(scenario.restarted_at - first.at).total_seconds():.2f}s"
    result = approve.finished()
    if not isinstance(result, dict) or result.get("status") != "approved" or result.get("reviewer") != "alice":
        raise CheckFailed(
            "The approval sent while the worker was dead was not applied",
            observed=f"the run returned {result!r}",
            expected="AnalyzeResult(status='approved', row_id=<the row>, reviewer='alice', note='looks right')",
            revisit="The new worker replays the history, signal included, so the handler runs again and sets "
                    "the decision. " + REVISIT_STATE)
    save = next((r for r in temporal.activity_runs(approve.history) if r.name == "save_to_db"), None)
    if save is None or save.identity not in scenario.new_identities:
        raise CheckFailed(
            "The save did not run on the new worker",
            observed=f"save_to_db ran on {save.identity if save else 'no worker'!r}",
            expected=f"a worker started after the kill: {sorted(scenario.new_identities)}",
            revisit="The kill must stop the whole worker process; a second worker must not be running.")


@pytest.mark.check("one-row-after-approval")
def test_one_row_and_one_llm_call(scenario, evidence):
    """Then the approved run left exactly one row, its id is the result's row_id,
    and the LLM was called once despite the crash and the wait."""
    scenario.require()
    approve = scenario.approve
    approve.reached_gate()
    result = approve.finished()
    evidence.update(rows=len(approve.rows), llm_calls=len(approve.llm_calls))
    row_id = result.get("row_id") if isinstance(result, dict) else None
    if len(approve.rows) != 1 or approve.rows[0][0] != row_id:
        raise CheckFailed(
            f"The approved run left {len(approve.rows)} row(s)",
            observed=f"rows {approve.rows}, result row_id {row_id!r}",
            expected="exactly one row for the workflow id, and its id as AnalyzeResult.row_id",
            revisit="After an approval, save_to_db(row) once; return its id in the result (not a magic -1).")
    if len(approve.llm_calls) != 1:
        raise CheckFailed(
            f"call_llm reached the LLM {len(approve.llm_calls)} times for one run",
            observed=f"{len(approve.llm_calls)} requests in the course LLM's ledger",
            expected="exactly 1: the wait and the worker's death must not repeat the analysis",
            revisit="The LLM call is an activity; its result is in the history and replay reuses it. Never "
                    "call the LLM (or re-run the analysis) from a signal handler or after the wait.")


@pytest.mark.check("signal-recorded-once")
def test_history_shows_the_signal_exactly_once(scenario, evidence):
    """Then the run's history holds exactly one `approve` signal event, with alice's arguments."""
    scenario.require()
    approve = scenario.approve
    approve.reached_gate()
    signals = hist.signals(approve.history)
    evidence["signals"] = ",".join(s.name for s in signals)
    approvals = [s for s in signals if s.name == "approve"]
    if len(approvals) != 1 or approvals[0].args[:1] != ["alice"]:
        raise CheckFailed(
            f"The history shows {len(approvals)} approve signal(s)",
            observed="; ".join(f"event {s.event_id}: {s.name}{tuple(s.args)}" for s in signals) or "no signals",
            expected="exactly one: approve('alice', 'looks right') - one decision, one event",
            revisit="The signal is `approve(reviewer, comment)` (two arguments), sent once from outside the "
                    "workflow (`lab approve`). The history, not the worker, is the record of it.")


@pytest.mark.check("reject-keeps-reason")
def test_reject_saves_nothing_and_keeps_the_reason(scenario, evidence):
    """Given `reject` (bob, a reason), a contradicting `approve` signal (mallory) and `decide` update (dave),
    all sent while no worker ran,
    Then the first decision wins: status rejected, no row, bob and his reason in the result."""
    scenario.require()
    reject = scenario.reject
    reject.reached_gate()
    result = reject.finished()
    evidence["rows"] = len(reject.rows)
    expected = f"AnalyzeResult(status='rejected', row_id=None, reviewer='bob', note={REASON!r}), and no row"
    if reject.rows or not isinstance(result, dict) or result.get("status") != "rejected":
        raise CheckFailed(
            "The rejected run did not end rejected" + (" - and it saved a row" if reject.rows else ""),
            observed=f"result {result!r}; rows {reject.rows}; decisions sent: {sent_by(reject)}",
            expected=expected,
            revisit="The first decision wins: a signal cannot be refused, so a handler ignores a decision "
                    "that comes after one was made. A rejection returns without calling save_to_db.")
    if result.get("reviewer") != "bob" or result.get("note") != REASON or result.get("row_id") is not None:
        raise CheckFailed(
            "The rejection's reviewer or reason was not kept",
            observed=f"result {result!r}", expected=expected,
            revisit="reject(reviewer, reason): keep both on the workflow and return them in AnalyzeResult.")


@pytest.mark.check("timeout-expires")
def test_nobody_decides_and_the_run_expires(scenario, evidence):
    """Given approval_timeout_seconds=2 in the input and no decision,
    Then the run ends expired, saves nothing, soon after its timeout."""
    scenario.require()
    expire = scenario.expire
    expire.reached_gate()
    if expire.finish_failure and not expire.still_running:
        raise expire.finish_failure
    if expire.finish_failure:
        raise CheckFailed(
            f"Nobody decided, and the run did not expire within {EXPIRY_SLACK_S:.0f} s of its "
            f"{EXPIRE_AFTER_S:g} s approval timeout",
            observed=expire.finish_failure.observed,
            expected="AnalyzeResult(status='expired', row_id=None, ...) about 2 s after it began to wait",
            revisit="Pass the input's timeout to the wait: `await workflow.wait_condition(fn, "
                    "timeout=timedelta(seconds=request.approval_timeout_seconds))`, and catch "
                    "asyncio.TimeoutError to return an expired result (the default is 24 h).")
    result = expire.result
    saves = [r for r in temporal.activity_runs(expire.history) if r.name == "save_to_db"]
    if not isinstance(result, dict) or result.get("status") != "expired" or result.get("row_id") is not None \
            or expire.rows or saves:
        raise CheckFailed(
            "The timed-out run did not end expired with nothing saved",
            observed=f"result {result!r}; rows {expire.rows}; save_to_db scheduled {len(saves)} time(s)",
            expected="AnalyzeResult(status='expired', row_id=None, reviewer=None), no save_to_db, no row",
            revisit="On asyncio.TimeoutError from wait_condition, return the expired result: an expired "
                    "approval is an answer, not a failure, and nothing is saved.")
    closed = hist.closure(expire.history)
    waited = hist.timers(expire.history)
    if waited:
        evidence["expired_after"] = f"{(closed.at - waited[0].started_at).total_seconds():.1f}s"


@pytest.mark.check("durable-wait")
def test_the_wait_is_one_durable_timer(scenario, evidence):
    """Then each wait is one server-side timer as long as the approval timeout (24 h by default,
    2 s for the expire run), and the approved run saved without any timer firing first."""
    scenario.require()
    approve, expire = scenario.approve, scenario.expire
    approve.reached_gate()
    approve.finished()
    revisit = ("`workflow.wait_condition(fn, timeout=...)` is one durable timer plus a condition the workflow "
               "re-checks whenever a signal or update changes its state: it reacts at once and writes two "
               "events. A loop of sleeps wakes the workflow on every tick, writes a timer per tick and reacts "
               "late.")
    for path, seconds in ((approve, DEFAULT_TIMEOUT_S), (expire, EXPIRE_AFTER_S)):
        if path.history is None or path.gate is None:
            continue
        timers = hist.timers(path.history)
        if len(timers) != 1 or abs(timers[0].seconds - seconds) > 0.01:
            raise CheckFailed(
                f"The {path.key} run's wait is not one timer of {seconds:g} s",
                observed=f"{len(timers)} timer(s): " + (", ".join(f"{t.seconds:g} s ({t.outcome})" for t in timers)
                                                       or "none"),
                expected=f"one timer of {seconds:g} s (approval_timeout_seconds"
                         + (", default 24 h" if path.timeout_s is None else "") + ")",
                revisit=revisit)
    save = next(r for r in temporal.activity_runs(approve.history) if r.name == "save_to_db")
    fired = [t for t in hist.timers(approve.history) if t.outcome == "fired" and t.closed_at <= save.scheduled_at]
    if fired:
        raise CheckFailed("The approved run waited for a timer before it saved",
                          observed=f"timer {fired[0].timer_id} fired before save_to_db was scheduled",
                          expected="the decision wakes the workflow; no timer fires", revisit=revisit)
    evidence["timers"] = "1x24h,1x2s"


@pytest.mark.check("update-acknowledged")
def test_update_returns_an_ack(scenario, evidence):
    """When `decide("approve", "carol")` is sent as an update,
    Then the caller gets an acknowledgement back, and the run completes approved by carol."""
    scenario.require()
    update = scenario.update
    update.reached_gate()
    valid = next((s for s in update.sent if s.what.startswith("decide('approve'")), None)
    if valid is None or valid.outcome != "accepted":
        raise CheckFailed(
            "The decide update was not accepted",
            observed=sent_by(update),
            expected="decide('approve', 'carol', note) answered with a DecisionAck",
            revisit="`@workflow.update def decide(self, decision, reviewer, note) -> DecisionAck`: record the "
                    "decision and return the ack. The validator must let a valid first decision through.")
    ack = valid.detail
    if not isinstance(ack, dict) or ack.get("decision") != "approve" or ack.get("reviewer") != "carol":
        raise CheckFailed("The update's acknowledgement does not say what was accepted",
                          observed=f"the caller received {ack!r}",
                          expected="DecisionAck(workflow_id, decision='approve', reviewer='carol', accepted_at)",
                          revisit="Return a DecisionAck from the update handler: that is what makes an update "
                                  "different from a fire-and-forget signal.")
    evidence["ack"] = "yes"
    result = update.finished()
    if not isinstance(result, dict) or result.get("status") != "approved" or result.get("reviewer") != "carol" \
            or len(update.rows) != 1:
        raise CheckFailed("The run decided by update did not end approved by carol with one row",
                          observed=f"result {result!r}; rows {update.rows}; sent: {sent_by(update)}",
                          expected="AnalyzeResult(status='approved', row_id=<row>, reviewer='carol')",
                          revisit="The update sets the same decision fields as the signals do.")


@pytest.mark.check("validator-refuses")
def test_validator_refuses_without_a_trace(scenario, evidence):
    """When `decide("maybe")` is sent, and `decide("approve")` reaches a run already rejected by signal,
    Then the validator refuses both, and neither leaves a trace in the history."""
    scenario.require()
    update, reject = scenario.update, scenario.reject
    update.reached_gate()
    reject.reached_gate()
    revisit = ("`@decide.validator` runs before the update is written to history: raise there to refuse an "
               "unknown decision, or any decision once one was made (by a signal or an update). A refusal "
               "leaves no event; an exception in the handler itself comes too late (the update is already in "
               "the history).")
    for run, prefix, why in ((update, "decide('maybe'", "an unknown decision"),
                             (reject, "decide('approve', dave", "a decision after the run was already rejected")):
        sent = next((s for s in run.sent if s.what.startswith(prefix)), None)
        if sent is None or sent.outcome != "refused":
            raise CheckFailed(
                f"The validator did not refuse {why}",
                observed=(f"{sent.what} -> {sent.outcome}" + (f": {sent.detail!r}" if sent.detail else "")
                          if sent else "it was never sent") + f"  (decisions sent to the {run.key} run: "
                                                               f"{sent_by(run)})",
                expected="refused by the validator (the caller gets WorkflowUpdateFailedError)",
                revisit=revisit)
    accepted = {run.key: hist.updates(run.history) for run in (update, reject)}
    evidence["updates_in_history"] = sum(len(found) for found in accepted.values())
    wrong = accepted["reject"] or len(accepted["update"]) != 1 or accepted["update"][0].args[:2] != ["approve", "carol"]
    if wrong:
        raise CheckFailed(
            "Refused updates left a trace in the history",
            observed="; ".join(f"{key} run, event {u.event_id}: {u.name}{tuple(u.args)} {u.outcome}"
                               for key, found in accepted.items() for u in found) or "no accepted update",
            expected="exactly one accepted update, decide('approve', 'carol', ...), in the update run; none in "
                     "the rejected run",
            revisit=revisit)


@pytest.mark.check("early-signal")
def test_a_signal_before_the_wait_is_not_lost(scenario, evidence):
    """Given a run started together with its `approve` signal (before it even called the LLM),
    Then the decision is kept and the run completes approved by erin, with one row."""
    scenario.require()
    early = scenario.early
    revisit = ("Handlers can run before run() does (signal-with-start), or while an activity runs: set up "
               "the decision fields in __init__, never at the top of run() or just before the wait, or an "
               "early decision is overwritten. " + REVISIT_STATE)
    if early.finish_failure and not early.still_running:
        raise early.finish_failure
    if early.finish_failure:
        raise CheckFailed("An approval that arrived before the wait was lost",
                          observed=f"the run started with approve('erin') is {early.finish_failure.observed}",
                          expected="it completes approved by erin without another decision", revisit=revisit,
                          details=early.finish_failure.details)
    result = early.result
    evidence["rows"] = len(early.rows)
    if not isinstance(result, dict) or result.get("status") != "approved" or result.get("reviewer") != "erin" \
            or len(early.rows) != 1:
        raise CheckFailed("The early approval was not applied", observed=f"result {result!r}; rows {early.rows}",
                          expected="AnalyzeResult(status='approved', row_id=<row>, reviewer='erin')",
                          revisit=revisit)


@pytest.mark.check("history-replays")
def test_histories_replay_deterministically(scenario, evidence):
    """Then every recorded history (signals, updates, timers, the crash) replays against the workflow code."""
    scenario.require()
    verdict = scenario.replay
    if verdict is None:
        raise NotChecked("not checked: no history was recorded")
    if verdict.ok and scenario.approve.workflow_id not in verdict.results:
        raise NotChecked("not checked: the approve run never finished, so there was no history to replay")
    evidence["replayed"] = len(verdict.results)
    if not verdict.ok:
        failures = verdict.failures()
        raise CheckFailed(
            "A recorded history does not replay against your workflow code",
            observed=verdict.error or "; ".join(f"{wid}: {error}" for wid, error in failures.items()),
            expected="the same commands on replay, for every run",
            revisit="A workflow is replayed from its history after a crash, so it must be deterministic: "
                    "no wall-clock time, randomness or I/O in workflow code or its handlers (use "
                    "workflow.now(), workflow.random(), and activities).",
            details=verdict.detail)
