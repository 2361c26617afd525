"""Lab 01's scenario: AnalyzeWorkflow runs survive a worker SIGKILLed at random moments.

The check (checks/test_lab01_temporal_crash.py) and the sweep (`lab sweep 01`, bench/crash_sweep.py)
share this module: how a run is started (its input), how the `analysis` rows and a run's LLM
requests are read, and the invariants both prove (one row per run, its id the result; call_llm,
parse_json and save_to_db each completed once, in order; no LLM request outside a run). The check
kills one worker at one chosen moment (parse_json's retry backoff) and teaches from what it sees;
the sweep below (`Sweep`) kills at many seeded random moments and audits the same invariants.

Sweep, per trial: a fresh task queue, LLM key and SQLite file; one worker (forked from a warm
interpreter, like the Lab 05 check's); `subjects` AnalyzeWorkflow runs started `start_gap_s`
apart, so the kills find them in different places (the LLM call, parse_json's deliberate
first-attempt failure and its 2 s backoff, save_to_db, between workflow tasks).

Logical LLM call: call_llm of one workflow = the ledger entries under the trial's key whose
prompt carries that workflow's marker; recorded = call_llm's ActivityTaskCompleted in history.
Invariants verified at the end: every workflow COMPLETED; exactly one `analysis` row per
workflow id, and it is the workflow's result; no row for anything else; the history records
call_llm, parse_json and save_to_db each completed once; no LLM call outside a workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory

from labkit import course, prefork, temporal
from labkit.llm import LedgerEntry
from labkit.pytest_plugin import Services
from labkit.services import CourseLLM, TemporalServer
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy, with_latency
from labkit.sweep_temporal import STARTED, WORKFLOW_TASK_TIMEOUT, ForkedWorkers, WorkerScenario, release_dead_worker, results_of

PRELOAD = ["temporalio.client", "temporalio.worker", "temporalio.workflow", "temporalio.activity",
           "temporalio.common", "temporalio.exceptions", "openai", "sqlmodel", "pydantic"]
ACTIVITIES = ["call_llm", "parse_json", "save_to_db"]  # what AnalyzeWorkflow schedules, in this order
EXPECTED_RETRY = {"maximum_attempts": 3, "initial_interval_s": 2.0, "backoff_coefficient": 2.0}  # every activity's
MAX_ATTEMPTS = EXPECTED_RETRY["maximum_attempts"]
Row = tuple  # (id, workflow_id, sentiment, summary, topics): a row of table analysis


# --- shared by the check and the sweep -----------------------------------------------------------

def start_input(marker: str) -> dict:
    """AnalyzeWorkflow's input: a review whose text carries `marker`, so the LLM ledger's requests can be
    told apart per run (the course LLM's `analysis` rule answers any of them)."""
    return {"prompt": f"Analyze this customer review {marker}: the parcel came two days late, "
                      f"but support sorted it out in minutes."}


def analysis_rows(db_path: Path, workflow_id: str | None = None) -> list[Row]:
    """The rows of table analysis (of one workflow id, or all), oldest first; none before the table exists."""
    if not Path(db_path).exists():
        return []
    with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as db:
        try:
            if workflow_id is None:
                return db.execute("SELECT id, workflow_id, sentiment, summary, topics FROM analysis ORDER BY id").fetchall()
            return db.execute("SELECT id, workflow_id, sentiment, summary, topics FROM analysis "
                              "WHERE workflow_id = ? ORDER BY id", (workflow_id,)).fetchall()
        except sqlite3.Error:
            return []


def one_row_saved(rows: Sequence[Row], workflow_id: str, result: object) -> bool:
    """The invariant on the database: exactly one row for the run, and its id is the run's result."""
    mine = [row[0] for row in rows if row[1] == workflow_id]
    return mine == [result]


def activity_sequence(history: WorkflowHistory) -> list[tuple[str, str, int]]:
    """(activity, outcome, attempt) of each activity the run scheduled, in the history's order."""
    return [(run.name, run.outcome, run.attempt) for run in temporal.activity_runs(history)]


def each_activity_completed_once(history: WorkflowHistory) -> bool:
    """The invariant on the history: call_llm, parse_json and save_to_db, each scheduled once and completed."""
    return [(name, outcome) for name, outcome, _ in activity_sequence(history)] == [(n, "completed") for n in ACTIVITIES]


def requests_of(entries: Iterable[LedgerEntry], marker: str) -> list[LedgerEntry]:
    """The LLM requests a run's prompt caused (its marker in the prompt)."""
    return [entry for entry in entries if marker in entry.prompt]


def stray_requests(entries: Iterable[LedgerEntry], markers: Iterable[str]) -> list[LedgerEntry]:
    """The invariant on the LLM: requests that carry no run's text (the LLM asked outside any run)."""
    markers = list(markers)
    return [entry for entry in entries if not any(marker in entry.prompt for marker in markers)]


# --- the sweep -----------------------------------------------------------------------------------


class Sweep(WorkerScenario):
    lab = "01"

    def __init__(self, workdir: Path, subjects: int = 4, path: Path | None = None, latency_ms: int = 400,
                 start_gap_s: float = 0.7, kill_window: tuple[float, float] = (0.3, 2.5),
                 finish_timeout_s: float = 60.0):
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.start_gap_s, self.kill_window = latency_ms, start_gap_s, kill_window
        self.finish_timeout_s = finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self.attempts_failed_for_dead_workers = 0
        self.counts: Counter = Counter()  # across trials, for the report
        # (workflow id, activity type): attempts a kill interrupted. A run whose activity had every
        # attempt killed fails as its retry policy says (a timeout after a crash is an attempt); how
        # many kills land on a running attempt depends on the machine's speed, so it is counted.
        self.killed_attempts: Counter = Counter()

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.temporal = TemporalServer(state, ui_port=None)
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        for server in filter(None, (self.temporal, self.llm, self.forks)):
            server.launch()
        await asyncio.to_thread(self.temporal.wait_ready)
        await asyncio.to_thread(self.llm.wait_ready)
        self.llm.push_rules(with_latency(["analysis"], self.latency_ms))
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)
        self.services = Services(temporal_address=self.temporal.address, course_llm=self.llm,
                                 temporal=self.temporal)
        self.client = await Client.connect(self.temporal.address)

    async def stop(self) -> None:
        for server in filter(None, (getattr(self, "forks", None), getattr(self, "llm", None),
                                    getattr(self, "temporal", None))):
            server.stop()

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        key = f"sweep-{self.run_id}-t{trial}"
        workdir = self.workdir / f"trial{trial}"
        self.db_path = workdir / f"lab{self.lab}.sqlite"
        self.harness = ForkedWorkers(self.target, self.services, workdir, lab=self.lab, key=key, forks=self.forks,
                                     **{f"LAB{self.lab}_DATABASE_URL": f"sqlite:///{self.db_path}"})
        workdir.mkdir(parents=True, exist_ok=True)
        self.plan = {f"analyze-{key}-w{i}": f"[sweep {key} w{i}]" for i in range(self.subjects)}
        self.handles: dict[str, WorkflowHandle] = {}
        self.results: dict[str, object] = {}
        self.identities: set[str] = set()
        self.gate, self.feed = gate, None
        self.harness.start_worker()

    async def _start_runs(self) -> None:
        for n, (workflow_id, marker) in enumerate(self.plan.items()):
            if n:
                await asyncio.sleep(self.start_gap_s)
            await self.gate.wait()
            self.handles[workflow_id] = await self.client.start_workflow(
                "AnalyzeWorkflow", start_input(marker), id=workflow_id, task_queue=self.harness.task_queue,
                task_timeout=WORKFLOW_TASK_TIMEOUT)

    async def after_kill(self) -> None:
        for workflow_id, handle in list(self.handles.items()):
            for pending in (await handle.describe()).raw_description.pending_activities:
                if pending.state == STARTED:
                    self.killed_attempts[(workflow_id, pending.activity_type.name)] += 1
            self.attempts_failed_for_dead_workers += await release_dead_worker(self.client, handle)

    def spent_by_kills(self, workflow_id: str) -> str | None:
        """The activity whose every attempt a kill interrupted, if any: the run rightly failed."""
        return next((name for name in ACTIVITIES if self.killed_attempts[(workflow_id, name)] >= MAX_ATTEMPTS), None)

    async def recorded(self) -> set[str]:
        return {f"{workflow_id}/call_llm" for workflow_id, handle in list(self.handles.items())
                if ("call_llm", "completed") in {step[:2] for step in activity_sequence(await handle.fetch_history())}}

    async def finish(self) -> None:
        self.results = await results_of(self.handles, self.feed, self.finish_timeout_s)

    async def logical_calls(self) -> list[LogicalCall]:
        entries = self.llm.ledger().entries(caller=self.harness.api_key)
        self.strays = stray_requests(entries, self.plan.values())
        calls = []
        for workflow_id, marker in self.plan.items():
            mine = [(e.at, e.status) for e in requests_of(entries, marker)]
            if not mine and self.spent_by_kills(workflow_id) == "call_llm" \
                    and isinstance(self.results.get(workflow_id), WorkflowFailureError):
                # every call_llm attempt was killed before its request reached the LLM (a slow worker):
                # the run failed as its retry policy says (verify counts it), and made no call to audit
                self.counts["LLM calls never sent: every call_llm attempt killed first"] += 1
                continue
            calls.append(LogicalCall(key=f"{workflow_id}/call_llm", subject=workflow_id, successor=None, entries=mine))
        return calls

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        rows = self._rows()
        for workflow_id in self.plan:
            result = self.results.get(workflow_id, "never started")
            if isinstance(result, WorkflowFailureError) and self.spent_by_kills(workflow_id):
                self.counts[f"runs failed: every {self.spent_by_kills(workflow_id)} attempt killed"] += 1
                continue
            if not isinstance(result, int):
                found.append(Violation(trial, workflow_id, "workflow lost", f"{type(result).__name__}: {result}",
                                       "AnalyzeWorkflow COMPLETED, returning its row id"))
                continue
            if not one_row_saved(rows, workflow_id, result):
                found.append(Violation(trial, workflow_id, "not exactly one database row for the run",
                                       f"rows {[row[0] for row in rows if row[1] == workflow_id]} in table analysis, "
                                       f"workflow result {result}", f"exactly one row, id {result}"))
            history = await self.handles[workflow_id].fetch_history()
            if not each_activity_completed_once(history):
                found.append(Violation(trial, workflow_id, "activities not each completed once in history",
                                       ", ".join(f"{name} ({outcome}, attempt {attempt})"
                                                 for name, outcome, attempt in activity_sequence(history)),
                                       ", ".join(f"{name} (completed)" for name in ACTIVITIES)))
        strangers = [row[:2] for row in rows if row[1] not in self.plan]
        if strangers:
            found.append(Violation(trial, "table analysis", "rows for no workflow of the trial",
                                   f"{strangers}", "one row per workflow of the trial, nothing else"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls outside any workflow",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].prompt[:80]!r}",
                                   "every request carries the prompt of one of the trial's workflows"))
        return found

    def _rows(self) -> list[Row]:
        return analysis_rows(self.db_path)

    async def end_trial(self) -> None:
        if self.feed is not None and not self.feed.done():
            self.feed.cancel()
        for handle in self.handles.values():  # a run the sweep gave up on must not run on
            try:
                await handle.terminate("crash sweep trial over")
            except Exception:
                pass  # already closed: the usual case
        self.harness.close()
