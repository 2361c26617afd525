"""Lab 01 autograder: a worker killed mid-retry loses nothing and repeats nothing.

Scenario, run once for the module against a fresh Temporal dev server and course LLM:
  Given the student's worker running as its own process,
    and two AnalyzeWorkflow runs: A, and B whose row was already committed by an
    attempt that died before it could report (the at-least-once window),
  When parse_json's deliberate first-attempt failure puts both in the retry backoff
    and the worker is SIGKILLed there, then a new worker starts,
  Then both complete, and each check below reads the evidence from outside the
    student's process: the LLM ledger, the Temporal history, the SQLite rows, a replay.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory

from labkit import limits, temporal
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import WorkerHarness
from labkit.llm import LedgerEntry

LAB = "01"
BACKOFF_S = 2.0  # the lab's initial_interval: the time the retry must wait
WORKER_START_S = 20.0
REACH_BACKOFF_S = 20.0
FINISH_AFTER_RESTART_S = BACKOFF_S + 15.0
EXPECTED_RETRY = {"maximum_attempts": 3, "initial_interval_s": 2.0, "backoff_coefficient": 2.0}
SEEDED_ROW_ID = 4242

EXPECTED_WORKFLOW = "AnalyzeWorkflow.run schedules call_llm, parse_json and save_to_db in turn"
REVISIT_ACTIVITIES = ("§64.2.1 workflows and activities: every call with a side effect (the LLM, "
                      "the database) is its own activity, so Temporal records its result and a retry "
                      "of a later step does not repeat it.")


@dataclass
class Run:
    """One workflow of the scenario and the evidence gathered about it."""

    label: str
    workflow_id: str
    marker: str
    handle: WorkflowHandle | None = None
    result: object = None
    history: WorkflowHistory | None = None
    llm_requests: list[LedgerEntry] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    failed: str = ""  # why the workflow failed, when the scenario went on without it


@dataclass
class Scenario:
    a: Run
    b: Run
    killed_pid: int = 0
    killed_at: datetime | None = None
    backoff_at_kill: list[temporal.PendingActivity] = field(default_factory=list)
    old_identities: set[str] = field(default_factory=set)
    llm_requests: list[LedgerEntry] = field(default_factory=list)  # every request under the scenario's key
    new_identities: set[str] = field(default_factory=set)
    restart_to_done_s: float = 0.0
    beyond_backoff_s: float = 0.0  # completion minus max(new worker start, retry due): our overhead
    replay: temporal.ReplayVerdict | None = None
    failure: CheckFailed | None = None

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the crash scenario did not finish ({self.failure.summary})")
        return self


# --- the scenario --------------------------------------------------------------------------------

class Harness(WorkerHarness):
    """The generic worker harness (labkit.harness) plus Lab 01's parts: the SQLite file and its seeded
    row, the wait for parse_json's retry backoff, and the verdicts on a workflow that ended early."""

    registers = "the workflow and the three activities"

    def __init__(self, target, services, workdir: Path, key: str):
        self.db_path = Path(workdir) / "lab01.sqlite"
        # The worker starts while the course LLM finishes starting; run_scenario waits for it.
        super().__init__(target, services, workdir, lab=LAB, key=key, wait_for_llm=False,
                         LAB01_DATABASE_URL=f"sqlite:///{self.db_path}")
        self.replay: temporal.Replay | None = None

    def seed_committed_row(self, workflow_id: str) -> None:
        """The row an earlier save_to_db attempt committed before its worker died."""
        with sqlite3.connect(self.db_path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS analysis (id INTEGER NOT NULL PRIMARY KEY, "
                       "workflow_id VARCHAR NOT NULL UNIQUE, sentiment VARCHAR NOT NULL, "
                       "summary VARCHAR NOT NULL, topics VARCHAR NOT NULL)")
            db.execute("INSERT INTO analysis VALUES (?, ?, 'positive', 'saved before the crash', '')",
                       (SEEDED_ROW_ID, workflow_id))

    async def wait_in_backoff(self, run: Run) -> temporal.PendingActivity:
        deadline = time.monotonic() + REACH_BACKOFF_S
        last: list[temporal.PendingActivity] = []
        while time.monotonic() < deadline:
            self.require_running(self.workers[-1], f"workflow {run.label} was on its way to parse_json's retry")
            description = await run.handle.describe()
            if description.status is not None and description.status.name != "RUNNING":
                raise await self.closed_early(run, description.status.name)
            last = await temporal.pending_activities(run.handle)
            for pending in last:
                if pending.name == "parse_json" and pending.attempt >= 2 and pending.in_backoff:
                    return pending
                if pending.last_failure and (todo := unfinished(pending.last_failure, LAB)):
                    raise todo
                if pending.name != "parse_json" and pending.attempt >= 2 and pending.last_failure:
                    raise CheckFailed(
                        f"{pending.name} failed (attempt {pending.attempt - 1}): {pending.last_failure}",
                        observed=f"{pending.name} is being retried; only parse_json should fail, once",
                        expected="call_llm succeeds on its first attempt; parse_json fails on attempt 1 only",
                        revisit=limits.explain(None, pending.last_failure) or
                                "Read the error: the activity raised it. The course LLM is at OPENAI_BASE_URL; "
                                "create the openai client with max_retries=0 and let Temporal retry.",
                        details=tail(self.workers[-1].output()))
            failure = await self.workflow_task_failure(run.handle, EXPECTED_WORKFLOW)
            if failure:
                raise failure
            await asyncio.sleep(0.05)
        waiting = "; ".join(f"{p.name} attempt {p.attempt} ({p.state.lower()})" for p in last) or "nothing"
        raise CheckFailed(
            f"parse_json never reached its retry backoff within {REACH_BACKOFF_S:.0f} s",
            observed=f"workflow {run.label} was waiting on: {waiting}",
            expected="call_llm completes, then parse_json fails on attempt 1 and waits 2 s for attempt 2",
            revisit="An activity that never returns holds the workflow until its start_to_close_timeout. "
                    "Check that call_llm returns the reply text and that nothing blocks.",
            details=tail(self.workers[-1].output()))

    async def result_after_restart(self, run: Run, timeout: float):
        """The workflow's result; a workflow task failure (non-determinism on the new worker's
        replay) is reported as soon as the history shows it, not after the timeout."""
        result = asyncio.ensure_future(run.handle.result())
        deadline = time.monotonic() + timeout
        try:
            while not result.done():
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError
                self.require_running(self.workers[-1], f"workflow {run.label} was finishing after the restart")
                failure = await self.workflow_task_failure(run.handle, EXPECTED_WORKFLOW)
                if failure:
                    raise failure
                await asyncio.wait({result}, timeout=0.25)
            return result.result()
        finally:
            result.cancel()

    async def closed_early(self, run: Run, status: str) -> CheckFailed:
        if status == "COMPLETED":
            runs = temporal.activity_runs(await run.handle.fetch_history())
            parse = next((r for r in runs if r.name == "parse_json"), None)
            return CheckFailed(
                "The workflow finished without any retry, so there was nothing to crash into",
                observed=(f"parse_json completed on attempt {parse.attempt}" if parse
                          else "no parse_json activity in the history: "
                               + (", ".join(r.name for r in runs) or "no activities at all")),
                expected="parse_json raises on attempt 1 (keyed on activity.info().attempt) and succeeds on attempt 2",
                revisit="The lab's deliberate failure: `if activity.info().attempt == 1: raise ...`.")
        try:
            await run.handle.result()
        except WorkflowFailureError as err:
            cause = root_cause(err)  # "Activity task failed" says little; its cause says why
            return CheckFailed(
                f"The workflow {status.lower()}: {cause}",
                observed=f"AnalyzeWorkflow {run.label} ended {status}",
                expected="it completes and returns the saved row's id",
                revisit=limits.explain(None, cause) or
                        "Read the cause above; retries run out after maximum_attempts=3.",
                details=tail(self.workers[-1].output()))
        return CheckFailed(f"The workflow ended {status}", expected="it completes")


def root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    text = (str(err).splitlines() or [""])[0][:300]
    kind = getattr(err, "type", None)  # an ApplicationError names the exception the activity raised
    if kind and not text.startswith(kind):
        return f"{kind}: {text}" if text else kind
    return text or type(err).__name__


def start_input(marker: str) -> dict:
    return {"prompt": f"Analyze this customer review {marker}: the parcel came two days late, "
                      f"but support sorted it out in minutes."}


async def run_scenario(harness: Harness, scenario: Scenario) -> None:
    client = await Client.connect(harness.services.temporal_address)
    worker1 = harness.start_worker()
    scenario.old_identities = await harness.wait_polling(client, worker1, timeout=WORKER_START_S)

    harness.services.llm  # the course LLM answers before any workflow needs it
    harness.seed_committed_row(scenario.b.workflow_id)
    for run in (scenario.a, scenario.b):
        run.handle = await client.start_workflow(
            "AnalyzeWorkflow", start_input(run.marker), id=run.workflow_id, task_queue=harness.task_queue)
    for run in (scenario.a, scenario.b):
        scenario.backoff_at_kill.append(await harness.wait_in_backoff(run))

    # The fault: SIGKILL the worker while both retries wait on the server's timer.
    worker1.kill()
    scenario.killed_pid = worker1.pid
    scenario.killed_at = datetime.now(timezone.utc)
    for run in (scenario.a, scenario.b):
        # Do what a graceful shutdown would have done; see temporal.forget_sticky_queue.
        await temporal.forget_sticky_queue(client, run.workflow_id)

    restarted, restarted_at = time.monotonic(), datetime.now(timezone.utc)
    worker2 = harness.start_worker()
    replay = harness.replay = temporal.Replay(root=harness.target.root, module=harness.target.module("workflows"),
                                              workflow_id=scenario.a.workflow_id)
    scenario.new_identities = await harness.wait_polling(client, worker2, scenario.old_identities,
                                                         timeout=WORKER_START_S)
    for run in (scenario.a, scenario.b):
        try:
            run.result = await harness.result_after_restart(run, FINISH_AFTER_RESTART_S)
        except asyncio.TimeoutError:
            pending = await temporal.pending_activities(run.handle)
            raise CheckFailed(
                f"After the restart, workflow {run.label} did not finish within {FINISH_AFTER_RESTART_S:.0f} s",
                observed="still waiting on: " + ("; ".join(f"{p.name} attempt {p.attempt}" for p in pending)
                                                 or "a workflow task"),
                expected=f"the new worker finishes the run about {BACKOFF_S:.0f} s after the kill",
                revisit="Is an activity blocking? Is the new worker polling the same task queue?",
                details=tail(worker2.output()))
        except WorkflowFailureError as err:
            if run is scenario.b and scenario.a.result is not None:
                # B differs from A only by the row committed before the crash: its failure is
                # save_to_db's handling of that row, which one-row-saved reports.
                run.failed = root_cause(err)
                continue
            raise await harness.closed_early(run, "FAILED")
    scenario.restart_to_done_s = time.monotonic() - restarted
    retry_due = max(p.next_attempt_at for p in scenario.backoff_at_kill)
    scenario.beyond_backoff_s = (datetime.now(timezone.utc) - max(restarted_at, retry_due)).total_seconds()

    ledger = scenario.llm_requests = harness.services.llm.ledger().entries(caller=harness.api_key)
    for run in (scenario.a, scenario.b):
        run.history = await run.handle.fetch_history()
        run.llm_requests = [e for e in ledger if run.marker in e.prompt]
    with sqlite3.connect(harness.db_path) as db:
        for run in (scenario.a, scenario.b):
            try:
                run.rows = db.execute("SELECT id, workflow_id FROM analysis WHERE workflow_id = ?",
                                      (run.workflow_id,)).fetchall()
            except sqlite3.Error:
                run.rows = []
    worker2.signal_tree(signal.SIGINT)  # shuts down gracefully while the replay runs
    scenario.replay = await asyncio.to_thread(replay.verdict, scenario.a.history)


@pytest.fixture(scope="module")
def scenario(lab_target, services, tmp_path_factory) -> Scenario:
    key = uuid.uuid4().hex[:8]
    harness = Harness(lab_target, services, tmp_path_factory.mktemp("lab01-run"), key)
    found = Scenario(a=Run("A", f"analyze-a-{key}", f"[run a-{key}]"),
                     b=Run("B", f"analyze-b-{key}", f"[run b-{key}]"))
    try:
        asyncio.run(run_scenario(harness, found))
    except CheckFailed as failure:
        found.failure = failure
    finally:
        harness.close()
    return found


# --- the checks ----------------------------------------------------------------------------------

@pytest.mark.check("crash-resume")
def test_killed_worker_resumes_on_a_new_worker(scenario, evidence):
    """Given a worker SIGKILLed during parse_json's retry backoff,
    When a new worker starts,
    Then the workflow completes there, and the kill really happened mid-backoff."""
    if scenario.failure:
        raise scenario.failure
    a = scenario.a
    evidence.update(restarts=1, killed_pid=scenario.killed_pid,
                    resumed_in=f"{scenario.restart_to_done_s:.1f}s",
                    beyond_backoff=f"{scenario.beyond_backoff_s:.2f}s")
    pending = scenario.backoff_at_kill[0]
    if not (pending.next_attempt_at and scenario.killed_at and pending.next_attempt_at > scenario.killed_at):
        raise CheckFailed("The worker was not killed during the retry backoff",
                          observed=f"kill at {scenario.killed_at}, retry due at {pending.next_attempt_at}",
                          expected="the kill lands before the server's retry timer fires")
    parse = next(r for r in temporal.activity_runs(a.history) if r.name == "parse_json")
    if parse.identity in scenario.old_identities or parse.identity not in scenario.new_identities:
        raise CheckFailed(
            "The retried parse_json did not run on the new worker",
            observed=f"parse_json attempt {parse.attempt} ran on {parse.identity!r}",
            expected=f"a worker started after the kill: {sorted(scenario.new_identities)}",
            revisit="The kill must stop the whole worker process; a second worker must not be running.")


@pytest.mark.check("llm-called-once")
def test_llm_called_exactly_once_per_run(scenario, evidence):
    """Given the crash scenario,
    Then the LLM ledger holds exactly one request for each workflow run."""
    scenario.require()
    for run in (scenario.a, scenario.b):
        calls = run.llm_requests
        evidence[f"llm_calls_{run.label.lower()}"] = len(calls)
        if len(calls) != 1:
            when = ", ".join(datetime.fromtimestamp(c.at).strftime("%H:%M:%S.%f")[:-3] for c in calls)
            raise CheckFailed(
                f"call_llm reached the LLM {len(calls)} times in run {run.label}",
                observed=f"{len(calls)} requests in the course LLM's ledger for this run"
                         + (f" (at {when})" if calls else ""),
                expected="exactly 1: the retry of parse_json and the worker's death must not repeat it",
                revisit="The LLM call must be its own activity (call_llm), and parse_json must take the "
                        "text as its argument rather than call the LLM again. " + REVISIT_ACTIVITIES)
    attributed = {c.id for run in (scenario.a, scenario.b) for c in run.llm_requests}
    others = [c for c in scenario.llm_requests if c.id not in attributed]
    if others:
        raise CheckFailed(
            f"The LLM was called {len(others)} more time(s) with a prompt that is neither run's text",
            observed="extra requests in the course LLM's ledger: "
                     + "; ".join(repr(c.prompt[:60]) for c in others[:4]) + (" ..." if len(others) > 4 else ""),
            expected="exactly 1 request per run: call_llm with the user's text, and no other LLM call",
            revisit="parse_json validates the text it is given; it must not ask the LLM again (each of its "
                    "retries would repeat that call). " + REVISIT_ACTIVITIES)


@pytest.mark.check("activities-completed-once")
def test_each_activity_completed_once(scenario, evidence):
    """Then the history shows call_llm, parse_json and save_to_db each completed exactly once,
    in that order, with parse_json on attempt 2: only attempt 1 fails on purpose."""
    scenario.require()
    runs = temporal.activity_runs(scenario.a.history)
    names = [r.name for r in runs]
    evidence["activities"] = ",".join(f"{r.name}@{r.attempt}" for r in runs)
    if names != ["call_llm", "parse_json", "save_to_db"] or any(r.outcome != "completed" for r in runs):
        raise CheckFailed(
            "The activities in the history are not call_llm → parse_json → save_to_db, each completed once",
            observed=", ".join(f"{r.name} ({r.outcome}, attempt {r.attempt})" for r in runs) or "no activities",
            expected="call_llm (completed), parse_json (completed), save_to_db (completed)",
            revisit="AnalyzeWorkflow awaits the three activities one after the other, each once. "
                    + REVISIT_ACTIVITIES)
    if runs[0].attempt != 1:
        raise CheckFailed("call_llm needed more than one attempt",
                          observed=f"call_llm completed on attempt {runs[0].attempt}",
                          expected="attempt 1: the LLM call itself never fails in this lab",
                          revisit=REVISIT_ACTIVITIES)
    if runs[1].attempt < 2:
        raise CheckFailed("parse_json completed on its first attempt",
                          observed=f"parse_json attempt {runs[1].attempt}",
                          expected="attempt 2: attempt 1 fails on purpose",
                          revisit="Key the deliberate failure on activity.info().attempt == 1.")
    if runs[1].attempt > 2:
        raise CheckFailed(
            "parse_json failed again on the restarted worker",
            observed=f"parse_json completed on attempt {runs[1].attempt}, so attempt 2, the first one on "
                     "the new worker, failed too",
            expected="attempt 2: only attempt 1 fails on purpose",
            revisit="Key the deliberate failure on activity.info().attempt == 1, which the server keeps. "
                    "A module-level flag (a bool, a set of workflow ids) lives in the worker's memory: "
                    "the restart wiped it, so the new worker failed the retry again.")


@pytest.mark.check("retry-policy")
def test_activities_scheduled_with_the_lab_retry_policy(scenario, evidence):
    """Then every activity was scheduled with maximum_attempts=3, initial_interval=2 s,
    backoff_coefficient=2.0, and a start_to_close_timeout."""
    scenario.require()
    for run in temporal.activity_runs(scenario.a.history):
        got = {k: run.retry_policy[k] for k in EXPECTED_RETRY}
        if got != EXPECTED_RETRY:
            raise CheckFailed(
                f"{run.name} was scheduled with a different retry policy",
                observed=", ".join(f"{k}={v:g}" for k, v in got.items()) + "  (0 means unlimited / default)",
                expected=", ".join(f"{k}={v:g}" for k, v in EXPECTED_RETRY.items()),
                revisit="RetryPolicy lives in temporalio.common: RetryPolicy(maximum_attempts=3, "
                        "initial_interval=timedelta(seconds=2), backoff_coefficient=2.0), passed as "
                        "retry_policy= to each execute_activity call.")
        if not run.start_to_close_s:
            raise CheckFailed(f"{run.name} has no start_to_close_timeout",
                              observed="only schedule_to_close or no timeout",
                              expected="start_to_close_timeout on every activity",
                              revisit="Without it a hung attempt is never retried.")
    evidence["retry"] = "3x 2s x2.0"


@pytest.mark.check("one-row-saved")
def test_exactly_one_row_per_workflow(scenario, evidence):
    """Then SQLite holds exactly one row for run A and its id is the workflow's result;
    and for run B, whose row an earlier attempt had already committed, still one row, returned as-is."""
    scenario.require()
    a, b = scenario.a, scenario.b
    evidence["rows"] = len(a.rows)
    if len(a.rows) != 1 or a.rows[0][0] != a.result:
        raise CheckFailed(
            f"Run A left {len(a.rows)} row(s) for its workflow id",
            observed=f"rows {a.rows}, workflow result {a.result!r}",
            expected="exactly one row in table analysis with workflow_id = the workflow id, and its id returned",
            revisit="save_to_db inserts one AnalysisRow with workflow_id=activity.info().workflow_id and "
                    "returns its id; the workflow returns that id.")
    if len(b.rows) != 1 or b.result != SEEDED_ROW_ID:
        raise CheckFailed(
            "save_to_db is not idempotent: a retried save must not insert again",
            observed=f"run B, whose row {SEEDED_ROW_ID} was already committed, left {len(b.rows)} row(s) "
                     + (f"and failed: {b.failed}" if b.failed else f"and returned {b.result!r}"),
            expected=f"one row, and save_to_db returns the existing id {SEEDED_ROW_ID}",
            revisit="Temporal runs an activity at least once: a worker can die after the INSERT commits and "
                    "before the result is recorded. Look the row up by workflow id first and return it.")


@pytest.mark.check("history-replays")
def test_history_replays_deterministically(scenario, evidence):
    """Then the recorded history replays against the workflow code without a non-determinism error."""
    scenario.require()
    verdict = scenario.replay
    evidence["replayed"] = ",".join(verdict.workflows) if verdict.ok else "no"
    if not verdict.ok:
        raise CheckFailed(
            "The recorded history does not replay against your workflow code",
            observed=verdict.error,
            expected="the same decisions on replay: call_llm, then parse_json, then save_to_db",
            revisit="A workflow is replayed from its history after a crash, so it must be deterministic: "
                    "no wall-clock time, randomness or I/O in workflow code (use workflow.now(), "
                    "workflow.random(), and activities).",
            details=verdict.detail)
