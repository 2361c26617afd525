"""Lab 06 autograder: an agent's tools as Temporal activities, and a notification sent exactly once.

Scenario, run once for the module against a fresh Temporal dev server, the course LLM (Responses
API, scripted tool calls) and the notification sink (a stand-in chat service):
  Given a sales dataset the check writes with a seed of its own (new numbers every run, so only a
    tool that reads the file can report them), the student's worker running as its own process,
    and three AnalystAgentWorkflow runs:
      cleanup, cleanup-again  the same question twice (two users asked it), so the two runs share
               every activity number and every message. The script counts the North rows, then
               tries every kind of write (DELETE, UPDATE, INSERT, CREATE ... AS, a writable PRAGMA,
               ATTACH, two statements in one, WITH ... DELETE, and PRAGMA query_only = OFF first),
               raises the same #security alert twice (two real alerts with one text), notifies
               #data-team, answers;
      revenue  query_database (a Q3 SELECT), send_notification to #sales, then the answer;
  When both cleanups have finished and the sink has recorded revenue's notification, the sink
    SIGKILLs the worker before it answers (the side effect happened, the activity never
    completed), and a new worker starts.
  Then each check below reads its evidence from outside the student's process: the Temporal
    history, the attempt log (every activity attempt, labkit.attribution), the course LLM's ledger
    (every model turn, which activity sent it, the tool outputs the model was sent), the sink's
    record (attempts, deliveries, keys, which activity posted), the dataset file compared with a
    query the check runs itself, and a replay of every history as on another host.

No verdict waits on the clock: every wait is for a state (a poller, a recorded delivery, a closed
workflow); HANG_S only ends a run that is stuck, and says what it was waiting for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError

from labkit import course, prefork, temporal
from labkit import history as hist
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import BENIGN_TASK_FAILURES, WorkerHarness
from labkit.llm import LedgerEntry, Rule
from labkit.replays import ReplaySet, ReplaySetVerdict
from labkit.sink import Attempt, Delivery
from scenario_lab06_agent_tools import (CLEANUP_RULE, MODEL_ACTIVITY, NO_TRACING, PRELOAD, REVENUE_RULE, SALES_CHANNEL,
                                        question, script)

LAB = "06"
TOOLS = ("query_database", "send_notification")
PLUGIN = "temporalio.openai_agents:OpenAIAgentsPlugin"
HELD_CHANNEL = SALES_CHANNEL  # revenue's notification: the one the crash lands on
DATASET_SEED = 64  # dataset.py's default: the check never uses it
# send_notification's start_to_close_timeout, as the README asks: long enough that the post always
# reaches the chat service before it runs out (at a quarter of a core, too), short enough that the
# retry after the crash comes soon.
SEND_TIMEOUT_S = (2.0, 30.0)
# A hang guard, never a verdict: a run still waiting after this long is stuck. Every wait below ends
# as soon as the state it waits for is there (a poller, a delivery, a closed workflow).
HANG_S = 300.0

pytestmark = pytest.mark.timeout(3 * HANG_S)  # the scenario runs inside the first check

REVISIT_TOOLS = ("§64.2.1.1: give the Agent tools made with `activity_as_tool(fn, start_to_close_timeout=...)` "
                 "(from temporalio.openai_agents.workflow; the text's agents.extensions.temporal does not "
                 "exist), and run the worker and client with OpenAIAgentsPlugin. Then every model turn is an "
                 "invoke_model_activity and every tool call an activity, both recorded in the history.")
REVISIT_ONCE = ("Temporal records an activity's result once, but runs the activity at least once: a worker "
                "that dies after the side effect and before completing leaves the server no choice but to "
                "run it again (§64.2.1.1 says \"exactly once\"; that holds for recorded results, not for "
                "side effects). Send an Idempotency-Key header that is the same on every attempt of this "
                "activity and different for every other: f\"{info.workflow_id}/{info.activity_id}\" from "
                "activity.info(). The chat service delivers each key once.")
REVISIT_READ_ONLY = ("Open the database read-only (sqlite3.connect(path.resolve().as_uri() + '?mode=ro', "
                     "uri=True)) and run one statement with execute(): then SQLite itself refuses every write, "
                     "whatever the SQL looks like. A list of forbidden words on a read-write connection is never "
                     "complete (PRAGMA, CREATE ... AS, REPLACE, ATTACH, WITH ... DELETE). Return the refusal as "
                     "the tool's answer.")


def scripted_groups(rule: Rule) -> list[list[str]]:
    """The activities the script implies, in order: a model turn, then that turn's tool calls."""
    groups: list[list[str]] = []
    for turn in rule.turns:
        groups.append([MODEL_ACTIVITY])
        if turn.tool_calls():
            groups.append(sorted(call.tool for call in turn.tool_calls()))
    return groups


def tool_calls_of(rule: Rule, tool: str) -> list[dict[str, Any]]:
    return [call.arguments for turn in rule.turns for call in turn.tool_calls() if call.tool == tool]


@dataclass
class ToolOutput:
    """One tool result the model was sent (a function_call_output in a later Responses request)."""

    name: str
    arguments: str
    output: str

    def argument(self, name: str) -> Any:
        with contextlib.suppress(ValueError, AttributeError):
            return json.loads(self.arguments).get(name)
        return None


def tool_outputs(entry: LedgerEntry) -> list[ToolOutput]:
    items = entry.request.get("input") if isinstance(entry.request.get("input"), list) else []
    calls = {i.get("call_id"): i for i in items if isinstance(i, dict) and i.get("type") == "function_call"}
    found = []
    for item in items:
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            call = calls.get(item.get("call_id"), {})
            output = item.get("output")
            found.append(ToolOutput(str(call.get("name", "?")), str(call.get("arguments", "")),
                                    output if isinstance(output, str) else json.dumps(output)))
    return found


def origin_activity(item) -> dict:
    """The activity attempt that sent a request (a ledger entry or a sink attempt), or {}."""
    return ((getattr(item, "origin", None) or {}).get("activity")) or {}


@dataclass
class Run:
    key: str  # "revenue" | "cleanup" | "cleanup-again"
    workflow_id: str
    question: str
    rule: Rule
    handle: WorkflowHandle | None = None
    result: Any = None
    failure: CheckFailed | None = None
    failed_after_kill: bool = False
    history: WorkflowHistory | None = None
    llm: list[LedgerEntry] = field(default_factory=list)  # the run's model turns (and any other request it made)

    @property
    def marker(self) -> str:
        return self.question[self.question.rindex("(run "):]

    def finished(self) -> Any:
        if self.failure is not None:
            raise self.failure
        return self.result

    def require(self) -> Run:
        if self.failure is not None:
            raise NotChecked(f"not checked: the {self.key} run did not finish ({self.failure.summary})")
        return self

    def activities(self) -> list[temporal.ActivityRun]:
        return temporal.activity_runs(self.history) if self.history else []

    def owns(self, entry: LedgerEntry) -> bool:
        """A ledger entry of this run: sent from one of its activities (attribution), or, without an
        origin, carrying its marker."""
        activity = origin_activity(entry)
        if activity:
            return activity.get("workflow_id") == self.workflow_id
        return self.marker in entry.prompt

    def turns(self) -> list[LedgerEntry]:
        """The answered model requests of this run, sent by invoke_model_activity."""
        return [e for e in self.llm if e.ok and (e.activity_type or MODEL_ACTIVITY) == MODEL_ACTIVITY]

    def final_request(self) -> LedgerEntry | None:
        answered = self.turns()
        return answered[-1] if answered else None

    def outputs(self) -> list[ToolOutput]:
        """Every tool result the model was sent, from the run's last model request."""
        last = self.final_request()
        return tool_outputs(last) if last else []


@dataclass
class Scenario:
    revenue: Run
    cleanups: list[Run]
    target: Any = None  # the graded folder (labkit.pytest_plugin.LabTarget)
    token: str = ""
    seed: int = 0
    db_path: Path | None = None
    workdir: Path | None = None
    db_before: dict[str, Any] = field(default_factory=dict)
    db_after: dict[str, Any] = field(default_factory=dict)
    files_before: list[str] = field(default_factory=list)
    files_after: list[str] = field(default_factory=list)
    writes: set[str] = field(default_factory=set)  # the script's statements that change a read-write copy
    expected: dict[str, list[tuple]] = field(default_factory=dict)  # sql -> rows the check's own query found
    old_identities: set[str] = field(default_factory=set)
    new_identities: set[str] = field(default_factory=set)
    held: Attempt | None = None  # the revenue notification's attempt whose answer was held
    killed_pid: int = 0
    killed_returncode: int | None = None
    killed_at: float = 0.0  # time.time() of the held delivery: the sink killed the worker right after
    notify_timeout_s: float | None = None
    retry_interval_s: float = 1.0
    restart_to_done_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    activity_attempts: list = field(default_factory=list)  # labkit.attribution.Attempt
    llm: list[LedgerEntry] = field(default_factory=list)
    replay: ReplaySetVerdict | None = None
    failure: CheckFailed | None = None

    @property
    def runs(self) -> list[Run]:
        return [*self.cleanups, self.revenue]

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the crash scenario did not finish ({self.failure.summary})")
        return self

    def sent_to(self, channel: str) -> tuple[list[Attempt], list[Delivery]]:
        return ([a for a in self.attempts if a.channel == channel],
                [d for d in self.deliveries if d.channel == channel])

    @property
    def db_changed(self) -> bool:
        return self.db_after != self.db_before or self.files_after != self.files_before


# --- the dataset ---------------------------------------------------------------------------------

def course_dataset(lab: course.Lab):
    """The course's own dataset.py (from the reference folder: course code, never the student's),
    loaded as a module of a private package so its relative import of models works."""
    package = f"_lab06_course_{uuid.uuid4().hex[:6]}"
    spec = importlib.util.spec_from_file_location(package, lab.solution_dir / "__init__.py",
                                                  submodule_search_locations=[str(lab.solution_dir)])
    parent = importlib.util.module_from_spec(spec)
    sys.modules[package] = parent
    try:
        spec.loader.exec_module(parent)
        return importlib.import_module(f"{package}.dataset")
    finally:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            sys.modules.pop(name, None)


def connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)


def snapshot(path: Path) -> dict[str, Any]:
    """What the dataset holds, read without a chance of writing: the file header's user_version and
    application_id, every schema object, and a digest and row count of every table."""
    found: dict[str, Any] = {}
    with contextlib.closing(connect_read_only(path)) as db:
        found["user_version"] = db.execute("PRAGMA user_version").fetchone()[0]
        found["application_id"] = db.execute("PRAGMA application_id").fetchone()[0]
        for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall():
            found[f"{kind} {name}"] = sql
            if kind == "table":
                digest, count = hashlib.sha256(), 0
                for row in db.execute(f'SELECT * FROM "{name}" ORDER BY rowid'):
                    digest.update(repr(row).encode())
                    count += 1
                found[f"rows {name}"] = (count, digest.hexdigest())
        if "table sales" in found:
            found["per region"] = db.execute(
                "SELECT region, COUNT(*), SUM(units) FROM sales GROUP BY region ORDER BY region").fetchall()
    return found


def describe_change(before: dict, after: dict, new_files: list[str]) -> str:
    said = []
    for name in sorted(set(before) | set(after)):
        if name.startswith(("table ", "index ", "view ", "trigger ")):
            if name not in after:
                said.append(f"{name} is gone")
            elif name not in before:
                said.append(f"a new {name}")
    for name in ("user_version", "application_id"):
        if before.get(name) != after.get(name):
            said.append(f"PRAGMA {name} {before.get(name)} -> {after.get(name)}")
    if "table sales" in after and before.get("rows sales") != after.get("rows sales"):
        said.append(f"sales rows per region (region, rows, units) {before.get('per region')} -> "
                    f"{after.get('per region')}")
    said += [f"a new file {name}" for name in new_files]
    return "; ".join(said) or "the file's content changed"


def is_write(sql: str, pristine: Path, scratch: Path) -> bool:
    """Whether the statement changes a read-write copy of the dataset (run whole, as executescript
    would). ATTACH is not run here (its relative path would land in the check's own directory): it
    changes no dataset by itself. (Even on a `?mode=ro` connection SQLite opens, and creates, an
    attached file read-write: the file appears in the worker's directory, so only the dataset's own
    directory is compared.)"""
    if sql.lstrip().upper().startswith("ATTACH"):
        return False
    copy = scratch / f"copy-{uuid.uuid4().hex[:6]}.sqlite"
    shutil.copyfile(pristine, copy)
    before = snapshot(copy)
    try:
        with contextlib.closing(sqlite3.connect(copy, isolation_level=None)) as db:
            db.executescript(sql)
    except sqlite3.Error:
        return False
    return snapshot(copy) != before


NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")  # 35337.61, 35,337.61


def rows_missing(output: str, rows: list[tuple]) -> list[str]:
    """The values of `rows` the output does not show, in the rows' order: each text value as text,
    each number as a number (to the cent). Any shape of output passes that shows them all."""
    numbers = [float(n.replace(",", "")) for n in NUMBER.findall(output)]
    missing, position = [], 0
    for row in rows:
        for value in row:
            if isinstance(value, str):
                found = output.find(value, position)
                if found < 0:
                    missing.append(repr(value))
                else:
                    position = found
            elif isinstance(value, (int, float)) and not any(abs(n - value) < 0.006 for n in numbers):
                missing.append(repr(value))
    return missing


# --- the scenario --------------------------------------------------------------------------------

class Lab06Harness(WorkerHarness):
    def __init__(self, target, services, sink, workdir: Path, key: str, forks: prefork.ForkServer | None):
        self.db_path = Path(workdir) / "data" / "lab06_sales.sqlite"
        self.token = f"lab-{key}"
        self.sink, self.forks = sink, forks
        super().__init__(target, services, workdir, lab=LAB, key=key, LAB06_DATABASE=str(self.db_path),
                         LAB06_NOTIFY_URL=sink.messages_url, LAB06_NOTIFY_TOKEN=self.token, **NO_TRACING)
        self.replay: ReplaySet | None = None

    async def wait_polling(self, client, worker, known=frozenset(), timeout: float = HANG_S) -> set[str]:
        try:
            return await super().wait_polling(client, worker, known, timeout)
        except CheckFailed as failed:
            log = worker.output()
            if "Failed validating workflow" not in log:
                raise
            causes = [line.strip() for line in log.splitlines()
                      if re.match(r"\s*\w+(\.\w+)*(Error|Exception): ", line) and "Failed validating" not in line]
            raise CheckFailed(
                "Temporal's sandbox refused your workflow module, so the worker could not start",
                observed=f"Failed validating workflow AnalystAgentWorkflow: {causes[-1] if causes else failed.summary}",
                expected="workflows.py defines the workflow and imports the rest under "
                         "workflow.unsafe.imports_passed_through()",
                revisit="The sandbox imports the workflow module afresh for each run and refuses module-level "
                        "objects it cannot isolate. Build the OpenAI client (or any client, connection or "
                        "engine) inside an activity, or leave it to OpenAIAgentsPlugin, never at import time "
                        "in workflows.py (facts: §64.2.1.1).",
                details=tail(log)) from None

    async def workflow_task_failure(self, handle, expected, history=None) -> CheckFailed | None:
        """The harness's verdict, unless the failure shows one of this lab's two misplaced calls:
        a tool's function called from workflow code, or a model client built in the workflow."""
        history = history or await handle.fetch_history()
        for event in history.events:
            if event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                continue
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause in BENIGN_TASK_FAILURES:
                continue
            misplaced = misplaced_call(self.target, f"{attrs.failure.message}\n{attrs.failure.stack_trace}")
            if misplaced is not None:
                return misplaced
        return await super().workflow_task_failure(handle, expected, history=history)

    def start_worker(self):
        """`python -m <lab>.worker`, forked from a warm interpreter when the fork server runs."""
        if self.forks is None:
            return super().start_worker()
        n = len(self.workers) + 1
        cwd, env = self.next_host()  # as on a host of its own: a fresh working directory, TMPDIR, HOME
        self.forks.wait_ready(timeout=HANG_S)
        worker = self.forks.start(self.target.module("worker"), [], name=f"worker{n}",
                                  log_path=self.workdir / f"worker{n}.log", env=env, cwd=cwd)
        self.workers.append(worker)
        return worker


def student_frames(target, text: str) -> list[tuple[str, str]]:
    """(file, function) of the frames of a stack trace that are in the graded lab's own files."""
    root = str(Path(target.root) / target.name)
    return [(Path(path).name, function) for path, function in
            re.findall(r'File \\?"([^"\\]+)\\?", line \d+, in (\w+)', text) if path.startswith(root)]


def misplaced_call(target, text: str) -> CheckFailed | None:
    """The teaching message for workflow code that does an activity's or the plugin's work itself."""
    frames = student_frames(target, text)
    tool = next((function for name, function in frames if name == "activities.py" and function in TOOLS), None)
    if tool is not None or "Not in activity context" in text:
        tool = tool or "a tool"
        return CheckFailed(
            f"Your workflow code calls {tool} directly, instead of through an activity",
            observed=f"{tool} ran inside the workflow: {text.strip().splitlines()[0][:200]}",
            expected=f"{tool} runs only as an activity: the Agent calls it through activity_as_tool "
                     "(which is workflow.execute_activity), and its result is recorded in the history",
            revisit="An activity's function called from workflow code is an ordinary call: it runs inside the "
                    "workflow (no activity.info(), I/O that is not recorded) and runs again on every replay, "
                    "on any host. Give the function to the Agent as activity_as_tool(fn, "
                    "start_to_close_timeout=...), or call it with workflow.execute_activity(fn, ...). "
                    + REVISIT_TOOLS)
    if "inside a workflow" in text and ("openai" in text.lower() or "platform.system" in text):
        return CheckFailed(
            "Your workflow builds a model client, which cannot run inside a workflow",
            observed=f"the workflow task failed: {text.strip().splitlines()[0][:200]}",
            expected="the Agent gets a model *name* (model=request.model) and OpenAIAgentsPlugin on the "
                     "worker sends each turn through invoke_model_activity",
            revisit="Leave the model call to the plugin: no AsyncOpenAI(), OpenAIResponsesModel or other client "
                    "in workflows.py. The plugin's invoke_model_activity builds the client in an activity, "
                    "where I/O belongs, and records every turn. " + REVISIT_TOOLS)
    return None


async def watch(harness: Lab06Harness, run: Run, *, before_kill: bool) -> CheckFailed | None:
    """Why the run can no longer make progress, if it cannot: it ended, its code fails, or (before
    the kill, when nothing should fail) an activity fails and is being retried."""
    history = await run.handle.fetch_history()
    closed = hist.closure(history)
    if closed is not None and closed.status != "COMPLETED":
        return await ended_badly(harness, run, closed)
    failed = await harness.workflow_task_failure(
        run.handle, history=history,
        expected="AnalystAgentWorkflow.run builds the Agent with tools from activity_as_tool and awaits "
                 "Runner.run(agent, request.question)")
    if failed is not None or closed is not None:
        return failed
    for pending in await temporal.pending_activities(run.handle):
        if not pending.last_failure:
            continue
        if (todo := unfinished(pending.last_failure, LAB)) is not None:
            return todo
        if before_kill:
            return CheckFailed(
                f"{pending.name} failed in the {run.key} run (attempt {pending.attempt - 1}): "
                f"{pending.last_failure.splitlines()[0][:200]}",
                observed=f"{pending.name} raised, and Temporal is retrying it",
                expected="every activity succeeds: a refused query returns its reason, it does not raise",
                revisit="Read the error (the worker log has the traceback). " + REVISIT_TOOLS,
                details=tail(harness.workers[-1].output()))
    return None


async def ended_badly(harness: Lab06Harness, run: Run, closed: hist.Closure) -> CheckFailed:
    message = closed.failure or closed.status
    with contextlib.suppress(WorkflowFailureError, RPCError):
        await run.handle.result()
    if (todo := unfinished(message, LAB)) is not None:
        return todo
    runs = temporal.activity_runs(await run.handle.fetch_history())
    failed = [r for r in runs if r.failure]
    cause = "; ".join(f"{r.name} attempt {r.attempt}: {r.failure}" for r in failed[-2:])
    if (todo := unfinished(cause, LAB)) is not None:
        return todo
    gave_up = next((r for r in reversed(failed) if r.outcome in ("timed_out", "failed")
                    and r.retry_policy.get("maximum_attempts") and r.attempt >= r.retry_policy["maximum_attempts"]),
                   None)
    if gave_up is not None and gave_up.retry_policy["maximum_attempts"] <= 2:
        limit = gave_up.retry_policy["maximum_attempts"]
        return CheckFailed(
            f"{gave_up.name}'s retry policy gave up after {limit} attempt{'s' if limit > 1 else ''}, and the "
            f"{run.key} run failed with it",
            observed=f"{gave_up.name} {gave_up.outcome.replace('_', ' ')} on attempt {gave_up.attempt} "
                     f"(RetryPolicy maximum_attempts={limit}): {gave_up.failure}; the run ended {closed.status}",
            expected=f"a retry policy that allows another attempt: the attempt the crash interrupted times out, "
                     f"and a new attempt on the new worker completes the {gave_up.name}",
            revisit="A worker can die in the middle of any activity; only a retry finishes the job. Not "
                    "retrying a send does not make it happen once (the crash already cut the first attempt "
                    "short, after the post); it makes the tool fail. Let Temporal retry (maximum_attempts of a "
                    "few, initial_interval=timedelta(seconds=1)) and make the retry harmless with the "
                    "idempotency key. " + REVISIT_ONCE)
    return CheckFailed(
        f"The {run.key} run ended {closed.status}: {message.splitlines()[0][:200] if message else ''}",
        observed=f"AnalystAgentWorkflow ({run.key}) ended {closed.status}" + (f"; {cause}" if cause else ""),
        expected="it completes and returns the agent's final answer",
        revisit="Read the cause above and the worker log. A tool that raises fails the agent's run: "
                "a refused query is an answer (a string starting with 'refused:'), not an exception. "
                + REVISIT_TOOLS,
        details=tail(harness.workers[-1].output()))


def start_argument(run: Run) -> dict:
    return {"question": run.question, "model": "gpt-4o-mini"}


async def finish(harness: Lab06Harness, run: Run, *, before_kill: bool, deadline: float, waiting_for: str) -> None:
    """Wait until the run closes (or can no longer make progress); the deadline is a hang guard."""
    result = asyncio.ensure_future(run.handle.result())
    try:
        while not result.done():
            await asyncio.wait({result}, timeout=0.25)
            if result.done():
                break
            failed = await watch(harness, run, before_kill=before_kill)
            if failed is not None:
                run.failure, run.failed_after_kill = failed, not before_kill
                return
            harness.require_running(harness.workers[-1], f"running the {run.key} run")
            if time.monotonic() > deadline:
                pending = await temporal.pending_activities(run.handle)
                run.failed_after_kill = not before_kill
                run.failure = CheckFailed(
                    f"The {run.key} run was stuck: still running after {HANG_S:.0f} s",
                    observed="still waiting on: " + ("; ".join(
                        f"{p.name} attempt {p.attempt} ({p.state.lower()})" for p in pending) or "a workflow task"),
                    expected=waiting_for,
                    revisit="Read the worker log: something in your code waits forever (an activity that never "
                            "returns, a tool that blocks the workflow). " + REVISIT_TOOLS,
                    details=tail(harness.workers[-1].output()))
                return
        try:
            run.result = result.result()
        except WorkflowFailureError:
            run.failure = await ended_badly(harness, run, hist.closure(await run.handle.fetch_history()))
            run.failed_after_kill = not before_kill
    finally:
        result.cancel()


async def reach_held_send(harness: Lab06Harness, scenario: Scenario, worker) -> None:
    """Wait until the sink has recorded revenue's notification (and killed the worker)."""
    revenue = scenario.revenue
    deadline = time.monotonic() + HANG_S
    def held() -> Attempt | None:
        return next((a for a in harness.sink.attempts(caller=harness.token) if a.held and a.channel == HELD_CHANNEL),
                    None)

    while True:
        scenario.held = held()
        if scenario.held is not None:
            return
        failed = await watch(harness, revenue, before_kill=True)
        if failed is not None:
            raise failed
        if hist.closure(await revenue.handle.fetch_history()) is not None or time.monotonic() > deadline:
            raise await no_send_to_hold(harness, scenario)
        if not worker.alive:  # killed by the sink (then the held post is recorded), or died on its own
            scenario.held = held()
            if scenario.held is not None:
                return
            harness.require_running(worker, "running the revenue run")
        await asyncio.sleep(0.05)


async def no_send_to_hold(harness: Lab06Harness, scenario: Scenario) -> CheckFailed:
    revenue = scenario.revenue
    history = await revenue.handle.fetch_history()
    names = [r.name for r in temporal.activity_runs(history)]
    attempts = harness.sink.attempts(caller=harness.token)
    sent = [a for a in attempts if a.channel == HELD_CHANNEL]
    closed = hist.closure(history)
    taken = next((a for a in sent if a.outcome == "duplicate"), None)
    if taken is not None:
        first = next((a for a in attempts if a.key == taken.key and a.outcome == "delivered"), None)
        by = origin_activity(first) if first else {}
        return CheckFailed(
            f"The revenue run's notification to {HELD_CHANNEL} was taken for a repeat of an earlier one",
            observed=f"its Idempotency-Key {taken.key!r} was already used"
                     + (f" by {first.channel} ({by.get('workflow_id', '?')}, activity {by.get('id', '?')})"
                        if first else "") + ", so the chat service did not deliver it",
            expected="a key that no other notification has: one per activity of one workflow",
            revisit=REVISIT_ONCE)
    if sent:
        observed = f"the sink got {len(sent)} post(s) to {HELD_CHANNEL}, none of them held"
    elif "send_notification" in names:
        observed = "send_notification ran, but nothing reached the chat service (LAB06_NOTIFY_URL)"
    else:
        observed = "no send_notification activity; activities so far: " + (", ".join(names) or "none")
    return CheckFailed(
        f"The revenue run's notification to {HELD_CHANNEL} never reached the chat service"
        + (f"; the run ended {closed.status}" if closed else f" (still waiting after {HANG_S:.0f} s)"),
        observed=observed,
        expected=f"send_notification posts the scripted message to {HELD_CHANNEL} at LAB06_NOTIFY_URL "
                 "(JSON {channel, text}, Authorization: Bearer LAB06_NOTIFY_TOKEN)",
        revisit="The course LLM asks for query_database, then send_notification. " + REVISIT_TOOLS,
        details=tail(harness.workers[-1].output()))


def send_timeout_outside_range(scenario: Scenario) -> CheckFailed | None:
    low, high = SEND_TIMEOUT_S
    timeout = scenario.notify_timeout_s
    if timeout is not None and low <= timeout <= high:
        return None
    shown = "none" if timeout is None else f"{timeout:g} s"
    return CheckFailed(
        f"send_notification's start_to_close_timeout is {shown}; the lab asks for {low:g} to {high:g} s (5 s)",
        observed=f"ActivityTaskScheduled for send_notification: start_to_close_timeout {shown}",
        expected=f"between {low:g} s and {high:g} s: the lab's 5 s",
        revisit="After a crash the server waits out the interrupted attempt's start_to_close_timeout before "
                "the retry: a long one makes every crash that costly. A very short one runs out while a post "
                "is still on its way on a busy machine, and the activity is retried although nothing "
                "crashed. Give activity_as_tool(send_notification, start_to_close_timeout=timedelta(seconds=5), "
                "retry_policy=...).")


def create_dataset(lab: course.Lab, path: Path, seed: int) -> None:
    course_dataset(lab).create_dataset(path, seed)


async def run_scenario(harness: Lab06Harness, scenario: Scenario) -> None:
    client = await Client.connect(harness.services.temporal_address)
    # The data: written by the check, with a seed no student process sees, before the worker starts.
    scenario.seed = random.Random().choice([s for s in range(1, 10_000) if s != DATASET_SEED])
    create_dataset(harness.target.lab, harness.db_path, scenario.seed)
    scenario.db_path, scenario.workdir = harness.db_path, harness.workdir
    scenario.db_before = snapshot(harness.db_path)
    scenario.files_before = sorted(p.name for p in harness.db_path.parent.iterdir())
    pristine = harness.workdir / "pristine"
    pristine.mkdir()
    statements = [call["sql"] for call in tool_calls_of(scenario.cleanups[0].rule, "query_database")]
    scenario.writes = {sql for sql in statements if is_write(sql, harness.db_path, pristine)}
    shutil.rmtree(pristine, ignore_errors=True)

    worker1 = harness.start_worker()
    scenario.old_identities = await harness.wait_polling(client, worker1)
    harness.services.llm  # the course LLM answers before the first model turn

    # The cleanups first, both at once: the same script, so the same activity numbers and messages.
    for run in scenario.cleanups:
        run.handle = await client.start_workflow("AnalystAgentWorkflow", start_argument(run), id=run.workflow_id,
                                                 task_queue=harness.task_queue)
    deadline = time.monotonic() + HANG_S
    await asyncio.gather(*(finish(harness, run, before_kill=True, deadline=deadline,
                                  waiting_for="the cleanup script's queries and notifications, then the answer")
                           for run in scenario.cleanups))

    # Then revenue, on the same worker. The fault: the chat service records the #sales post and, before
    # it answers, SIGKILLs the worker (labkit.sink's kill_pid): the side effect happened, the activity
    # never completed, and no timeout of the student's can run out in between.
    harness.sink.hold(caller=harness.token, channel=HELD_CHANNEL, times=1, kill_pid=worker1.pid)
    revenue = scenario.revenue
    revenue.handle = await client.start_workflow("AnalystAgentWorkflow", start_argument(revenue),
                                                 id=revenue.workflow_id, task_queue=harness.task_queue)
    await reach_held_send(harness, scenario, worker1)
    worker1.wait(HANG_S)
    worker1.kill()  # reaps it (the sink's SIGKILL came first: its exit status says so)
    scenario.killed_at = scenario.held.at
    scenario.killed_pid, scenario.killed_returncode = worker1.pid, worker1.returncode
    with contextlib.suppress(RPCError):  # as a graceful shutdown would; see temporal.forget_sticky_queue
        await temporal.forget_sticky_queue(client, revenue.workflow_id)

    restarted = time.monotonic()
    worker2 = harness.start_worker()
    # Started now, the replay process imports the workflow module while the server waits out the
    # interrupted send's timeout. It replays as on another host: no dataset, no chat service.
    harness.replay = ReplaySet(root=harness.target.root, module=harness.target.module("workflows"),
                               plugin=PLUGIN, env={**NO_TRACING, "LAB06_DATABASE": str(harness.workdir / "absent"
                                                                                      / "lab06_sales.sqlite"),
                                                   "LAB06_NOTIFY_URL": "http://127.0.0.1:9/api/messages"})
    scenario.new_identities = await harness.wait_polling(client, worker2, scenario.old_identities)
    send = next((r for r in temporal.activity_runs(await revenue.handle.fetch_history())
                 if r.name == "send_notification"), None)
    if send is not None:
        scenario.notify_timeout_s = send.start_to_close_s
        scenario.retry_interval_s = send.retry_policy["initial_interval_s"] or 1.0
    if (too := send_timeout_outside_range(scenario)) is not None:
        revenue.failure, revenue.failed_after_kill = too, True
    else:
        await finish(harness, revenue, before_kill=False,
                     deadline=time.monotonic() + scenario.notify_timeout_s + scenario.retry_interval_s + HANG_S,
                     waiting_for="the new worker retries the interrupted send once its start_to_close_timeout "
                                 "has passed, then the model's last turn answers")
    scenario.restart_to_done_s = time.monotonic() - restarted
    harness.sink.release()  # nothing should be held any more; never leave a caller waiting

    scenario.llm = harness.services.llm.ledger().entries(caller=harness.api_key)
    scenario.attempts = harness.sink.attempts(caller=harness.token)
    scenario.deliveries = harness.sink.deliveries(caller=harness.token)
    scenario.activity_attempts = harness.attempts()
    scenario.db_after = snapshot(harness.db_path)
    scenario.files_after = sorted(p.name for p in harness.db_path.parent.iterdir())
    # What the scripts' reads find now, by the check's own read-only queries. The same as before the
    # runs, unless a write got through (write-refused reports that, and query-reads-database waits).
    reads = [tool_calls_of(revenue.rule, "query_database")[0]["sql"]] + [
        sql for sql in statements if sql not in scenario.writes and sql.lstrip().upper().startswith("SELECT")
        and ";" not in sql]
    for sql in reads:
        with contextlib.suppress(sqlite3.Error), contextlib.closing(connect_read_only(harness.db_path)) as db:
            scenario.expected[sql] = db.execute(sql).fetchall()
    histories = {}
    for run in scenario.runs:
        run.history = await run.handle.fetch_history()
        run.llm = [e for e in scenario.llm if run.owns(e)]
        if hist.closure(run.history) is not None and run.failure is None:
            histories[run.workflow_id] = run.history
    worker2.signal_tree(signal.SIGINT)  # a graceful stop while the replay runs
    if histories:
        scenario.replay = await asyncio.to_thread(harness.replay.verdict, histories, HANG_S)


@pytest.fixture(scope="session")
def lab06_forks(tmp_path_factory):
    """The fork server, launched before the services so its imports overlap their start."""
    if not prefork.enabled():
        yield None
        return
    forks = prefork.ForkServer(tmp_path_factory.mktemp("lab06-forks"), PRELOAD, env=dict(os.environ, **NO_TRACING))
    try:
        yield forks.launch()
    finally:
        forks.stop()


@pytest.fixture(scope="module")
def scenario(lab_target, lab06_forks, sink, services, tmp_path_factory) -> Scenario:
    # The servers were launched together; wait for each as long as this machine needs (at a quarter
    # of a core the course LLM and the sink take longer than their default 20 s to import and start).
    services.course_llm.wait_ready(timeout=HANG_S)
    sink.wait_ready(timeout=HANG_S)
    key = uuid.uuid4().hex[:8]
    harness = Lab06Harness(lab_target, services, sink, tmp_path_factory.mktemp("lab06-run"), key, lab06_forks)
    found = Scenario(
        revenue=Run("revenue", f"analyst-revenue-{key}", question("revenue", f"revenue-{key}"), script(REVENUE_RULE)),
        cleanups=[Run(name, f"analyst-{name}-{key}", question("cleanup", f"{name}-{key}"), script(CLEANUP_RULE))
                  for name in ("cleanup", "cleanup-again")],
        target=lab_target, token=harness.token)
    try:
        asyncio.run(run_scenario(harness, found))
    except CheckFailed as failure:
        found.failure = failure
    finally:
        with contextlib.suppress(Exception):
            sink.release()
        harness.stop_all()
        if harness.replay:
            harness.replay.close()
    return found


# --- the checks ----------------------------------------------------------------------------------

def describe_activities(runs: list[temporal.ActivityRun]) -> str:
    return ", ".join(f"{r.name}" + (f"@{r.attempt}" if r.attempt > 1 else "") for r in runs) or "no activities"


def before_the_crash(run: Run) -> Run:
    """The run, for a check of what happened before the crash: its own failure then is this check's
    to report; a failure after the crash is crash-after-send's."""
    if run.failure is not None and run.failed_after_kill:
        raise NotChecked(f"not checked: the {run.key} run did not finish after the crash (see crash-after-send)")
    return run


@pytest.mark.check("agent-turns")
def test_each_model_turn_is_one_activity(scenario, evidence):
    """Given the three runs,
    Then each model turn of the course LLM's script ran as one invoke_model_activity (the history
    and the LLM's ledger agree, turn by turn), and each workflow returned the script's final answer."""
    if scenario.failure:
        raise scenario.failure
    for run in scenario.runs:
        result = before_the_crash(run).finished()
        turns = len(run.rule.turns)
        model_runs = [r for r in run.activities() if r.name == MODEL_ACTIVITY]
        answered = run.turns()
        evidence[f"model_turns_{run.key}"] = len(model_runs)
        if not model_runs and answered:
            raise CheckFailed(
                f"The {run.key} run called the model, but not through invoke_model_activity",
                observed=f"{len(answered)} model request(s) in the course LLM's ledger; no {MODEL_ACTIVITY} "
                         "in the history: " + describe_activities(run.activities()),
                expected=f"{turns} {MODEL_ACTIVITY} activities, one per model turn",
                revisit="Run the Agent with Runner.run inside the workflow, and give Client.connect "
                        "plugins=[OpenAIAgentsPlugin()] in worker.py: the plugin turns each model call into "
                        "an activity. " + REVISIT_TOOLS)
        if len(model_runs) != turns or [e.turn for e in answered] != list(range(turns)):
            raise CheckFailed(
                f"The {run.key} run did not take the script's {turns} model turns, one activity each",
                observed=f"{len(model_runs)} {MODEL_ACTIVITY} in the history; the ledger's turns: "
                         f"{[e.turn for e in answered]}",
                expected=f"{turns} {MODEL_ACTIVITY} activities and turns {list(range(turns))} in the ledger",
                revisit="Pass the tools the script calls (query_database, send_notification) to the Agent, "
                        "and return the tool's text so the conversation goes on. " + REVISIT_TOOLS)
        final = run.rule.turn_text(run.rule.turns[-1])
        if result != final:
            raise CheckFailed(
                f"The {run.key} run did not return the agent's final answer",
                observed=f"the workflow returned {result!r}"[:300],
                expected=f"{final!r}: result.final_output of Runner.run"[:300],
                revisit="Return `result.final_output` from AnalystAgentWorkflow.run.")


@pytest.mark.check("tools-as-activities")
def test_tools_ran_as_activities_in_the_scripted_order(scenario, evidence):
    """Then the history shows a model turn, then the tools that turn asked for, as activities, in the
    script's order."""
    scenario.require()
    for run in scenario.runs:
        run.require()
        expected = scripted_groups(run.rule)
        names = [r.name for r in run.activities()]
        evidence[f"activities_{run.key}"] = len(names)
        actual, position = [], 0
        for group in expected:
            actual.append(sorted(names[position:position + len(group)]))
            position += len(group)
        if actual != expected or position != len(names):
            sent = sorted({o.name for o in run.outputs()})
            missing = [tool for tool in sent if tool not in names]
            observed = "the history's activities: " + describe_activities(run.activities())
            if missing:
                observed += (f"; yet the model was sent results of {', '.join(missing)}: they ran inside the "
                             "workflow, not as activities")
            raise CheckFailed(
                f"The {run.key} run's tools did not run as activities in the scripted order",
                observed=observed,
                expected=" -> ".join("+".join(g) for g in expected),
                revisit="A plain function tool (or @function_tool) runs inside the workflow: nothing about "
                        "it is recorded, and it runs again on every replay. " + REVISIT_TOOLS)


@pytest.mark.check("query-reads-database")
def test_query_results_come_from_the_dataset(scenario, evidence):
    """Given a dataset the check wrote with a seed of its own (other numbers every run),
    Then what query_database sent the model for each read (revenue's Q3 totals, the cleanups' row
    count) shows exactly the rows the check's own read-only query finds in the file."""
    scenario.require()
    if scenario.db_changed:
        raise NotChecked("not checked: the dataset changed during the runs (see write-refused)")
    evidence["seed"] = scenario.seed
    compared = 0
    for run in scenario.runs:
        run.require()
        if not any(r.name == "query_database" for r in run.activities()):
            raise NotChecked("not checked: query_database did not run as an activity (see tools-as-activities)")
        for output in (o for o in run.outputs() if o.name == "query_database"):
            rows = scenario.expected.get(output.argument("sql"))
            if rows is None:
                continue
            compared += 1
            missing = rows_missing(output.output, rows)
            if missing:
                raise CheckFailed(
                    f"The model was not sent what the {run.key} run's query finds in the dataset",
                    observed=f"query_database({output.argument('sql')!r}) -> the model was sent "
                             f"{output.output[:300]!r}; it lacks {', '.join(missing[:6])}",
                    expected=f"the rows the check's own query finds in LAB06_DATABASE: {rows}"[:400],
                    revisit="query_database runs the model's SQL on the dataset at database_path() "
                            "(LAB06_DATABASE) and returns its rows (json.dumps of them); the tool's return value is "
                            "all the model reads. The check writes new data for every run: rows that do not come "
                            "from that file (a copy, a cache, the seeded generator, another path) do not match.")
    if not compared:
        raise CheckFailed("query_database sent the model no result of a read",
                          observed="no query_database output for the scripts' SELECTs in the last model request",
                          expected="the Q3 totals and the row count, as the tool's outputs")
    evidence["reads_compared"] = compared


@pytest.mark.check("crash-after-send")
def test_the_worker_died_after_the_send_before_completion(scenario, evidence):
    """Given the sink recorded revenue's notification and, before answering, SIGKILLed the worker,
    Then the kill really landed in that window (the attempt log shows the send's attempt cut short on
    the killed worker), and a new worker ran send_notification's retry to completion."""
    if scenario.failure:
        raise scenario.failure
    revenue = scenario.revenue
    if revenue.failure is not None and not revenue.failed_after_kill:
        raise NotChecked("not checked: the revenue run failed before the crash (see agent-turns)")
    revenue.finished()
    held = scenario.held
    evidence.update(restarts=1, killed_pid=scenario.killed_pid, resumed_in=f"{scenario.restart_to_done_s:.1f}s",
                    send_timeout=f"{scenario.notify_timeout_s or 0:g}s")
    if scenario.killed_returncode != -signal.SIGKILL:
        raise CheckFailed("The worker was not killed by SIGKILL",
                          observed=f"worker exit status {scenario.killed_returncode}",
                          expected=f"{-signal.SIGKILL} (killed by SIGKILL mid-send)")
    cut_short = [a for a in scenario.activity_attempts if a.activity_type == "send_notification"
                 and a.workflow_id == revenue.workflow_id and a.pid == scenario.killed_pid and not a.finished]
    if held.answered_at is not None and not held.caller_gone or (scenario.activity_attempts and not cut_short):
        raise CheckFailed("The kill did not land between the side effect and the activity's completion",
                          observed=f"delivery recorded at {held.at:.3f}, answered: {held.answered_at}; "
                                   f"send attempts cut short on the killed worker: {len(cut_short)}",
                          expected="the delivery recorded, its answer held, the attempt cut short by the kill")
    if cut_short:  # from the attempt's start in the worker to the post at the chat service
        evidence["post_after"] = f"{held.at - cut_short[0].started:.2f}s"
    send = next((r for r in revenue.activities() if r.name == "send_notification"), None)
    if send is None or send.outcome != "completed" or send.attempt < 2:
        raise CheckFailed(
            "send_notification was not retried after the crash",
            observed=(f"send_notification {send.outcome} on attempt {send.attempt}" if send
                      else "no send_notification activity in the history"),
            expected="attempt 1 died with the worker (mid-send); attempt 2 completed on the new worker",
            revisit="send_notification must be an activity (activity_as_tool) with a retry policy that "
                    "allows a second attempt. " + REVISIT_TOOLS)
    if send.identity not in scenario.new_identities:
        raise CheckFailed("The retried send did not run on the new worker",
                          observed=f"attempt {send.attempt} ran on {send.identity!r}",
                          expected=f"the worker started after the kill: {sorted(scenario.new_identities)}")
    evidence["send_attempts"] = send.attempt


@pytest.mark.check("one-delivery")
def test_the_notification_was_delivered_exactly_once(scenario, evidence):
    """Then the chat service delivered revenue's notification once, although send_notification ran
    twice: both attempts carried the same idempotency key, and the second got the first's answer."""
    scenario.require()
    scenario.revenue.require()
    attempts, deliveries = scenario.sent_to(HELD_CHANNEL)
    keys = [a.key for a in attempts]
    evidence.update(deliveries=len(deliveries), posts=len(attempts))
    if len(deliveries) == 1:
        return
    if len(deliveries) == 0:
        raise CheckFailed(f"The notification to {HELD_CHANNEL} was never delivered",
                          observed=f"{len(attempts)} post(s), outcomes {[a.outcome for a in attempts]}",
                          expected="exactly 1 delivery")
    if all(key is None for key in keys):
        why = ("both posts came without an Idempotency-Key header, so the chat service had no way to tell "
               "the retry from a new message")
    elif len(set(keys)) > 1:
        why = (f"the attempts sent different keys ({', '.join(repr(k) for k in keys)}): a key that changes "
               "between attempts (the attempt number, a uuid, the time) never matches")
    else:
        why = f"the key {keys[0]!r} was sent, yet delivered twice"
    raise CheckFailed(
        f"The notification to {HELD_CHANNEL} was delivered {len(deliveries)} times",
        observed=f"{len(deliveries)} deliveries of {len(attempts)} posts: {why}",
        expected="1 delivery: the retry after the crash carries the same key and is not delivered again",
        revisit=REVISIT_ONCE)


def describe_origin(entry: LedgerEntry, scenario: Scenario) -> str:
    activity = origin_activity(entry)
    run = next((r.key for r in scenario.runs if r.workflow_id == activity.get("workflow_id")), None)
    when = " (after the kill)" if entry.at > scenario.killed_at else ""
    if activity:
        return (f"{activity.get('type')} attempt {activity.get('attempt')} of the {run or '?'} run{when}: "
                f"{entry.endpoint} {entry.prompt[:50]!r}")
    where = (entry.origin or {}).get("program") or "a program the check did not start"
    return f"no activity (code outside any activity, in {where}){when}: {entry.endpoint} {entry.prompt[:50]!r}"


@pytest.mark.check("model-turns-once")
def test_model_turns_were_not_repeated(scenario, evidence):
    """Then the course LLM's ledger holds each of revenue's model turns once, although the worker died
    mid-run: the new worker replayed the recorded turns. And every request to the LLM came from an
    invoke_model_activity (the attribution each request carries): none from a tool or elsewhere."""
    scenario.require()
    revenue = scenario.revenue.require()
    turns = [e.turn for e in revenue.turns()]
    evidence["llm_calls"] = len(scenario.llm)
    expected = list(range(len(revenue.rule.turns)))
    if any(e.origin for e in scenario.llm):  # attributed: every request says which code sent it
        others = [e for e in scenario.llm if e.activity_type != MODEL_ACTIVITY]
    else:  # programs started without labkit.attribution: a run's requests carry its marker
        others = [e for e in scenario.llm if not any(run.owns(e) for run in scenario.runs)]
    if others:
        sources = Counter(e.activity_type or "no activity" for e in others)
        raise CheckFailed(
            f"The lab's code called the LLM {len(others)} more time(s), outside the agent's turns "
            f"(from {', '.join(sources)})",
            observed="; ".join(describe_origin(e, scenario)  # those after the kill first: the retry asked again
                               for e in sorted(others, key=lambda e: e.at <= scenario.killed_at)[:4]),
            expected=f"every request from {MODEL_ACTIVITY} (the agent's own model turns, through the plugin)",
            revisit="A tool activity that calls the LLM (to word a message, to fix a query) calls it again on "
                    "every retry: after the crash it asked again, and none of it is a recorded model turn. Let "
                    "the agent's model turns do the talking; the tools only query and send.")
    if turns != expected:
        after = [e.turn for e in revenue.turns() if e.at > scenario.killed_at]
        raise CheckFailed(
            f"The revenue run asked the model {len(turns)} times for {len(expected)} turns",
            observed=f"turns in the course LLM's ledger: {turns}; after the kill: {after}",
            expected=f"each turn once: {expected}",
            revisit="Finished model turns are recorded results (invoke_model_activity): a new worker replays "
                    "them from the history. Calling the model anywhere else (in a tool activity, in the "
                    "workflow) is not recorded, and runs again.")


def send_activities(scenario: Scenario) -> dict[tuple[str, str], Run]:
    """Every send_notification activity of the three runs: (workflow id, activity id) -> its run."""
    return {(run.workflow_id, r.activity_id): run for run in scenario.runs for r in run.activities()
            if r.name == "send_notification"}


@dataclass
class Collision:
    """A notification the chat service took for a retry: its key had been used by another one."""

    run: Run
    send: tuple[str, str]  # (workflow id, activity id) of the notification that was not delivered
    post: Attempt  # its post, answered as a duplicate
    taken_by: Attempt | None  # the delivered post whose key it reused

    @property
    def other(self) -> tuple[str | None, str | None]:
        activity = origin_activity(self.taken_by) if self.taken_by else {}
        return activity.get("workflow_id"), activity.get("id")

    @property
    def same_workflow(self) -> bool:
        return self.other[0] == self.send[0]

    @property
    def same_id(self) -> bool:
        return self.other[1] == self.send[1]

    @property
    def same_text(self) -> bool:
        return self.taken_by is not None and (self.taken_by.channel, self.taken_by.text) == (self.post.channel,
                                                                                           self.post.text)

    def describe(self, scenario: Scenario) -> str:
        runs = {run.workflow_id: run.key for run in scenario.runs}
        if self.taken_by is None:
            return (f"the {self.run.key} run's {self.post.channel} notification sent the key {self.post.key!r}, "
                    "used before")
        return (f"the {self.run.key} run's {self.post.channel} notification (activity {self.send[1]}) sent the key "
                f"{self.post.key!r}, already used by the {runs.get(self.other[0], '?')} run's "
                f"{self.taken_by.channel} notification (activity {self.other[1]})"
                + (", which has the same text" if self.same_text else ""))


def key_idea(collisions: list[Collision]) -> tuple[str, Collision]:
    """What the key gets wrong, from every collision at once (one alone can mislead: a key of the
    workflow id also collides between two alerts with the same text), and the collision that shows it."""
    def first(test) -> Collision | None:
        return next((c for c in collisions if c.taken_by is not None and test(c)), None)

    if (shown := first(lambda c: c.same_workflow and not c.same_text)) is not None:
        return ("the key names the workflow but not the activity: the workflow id alone is shared by every "
                "notification of the run"), shown
    if (shown := first(lambda c: not c.same_text)) is not None:
        return "the key does not name one activity of one workflow", shown
    if (shown := first(lambda c: not c.same_id and c.same_workflow) or first(lambda c: not c.same_id)) is not None:
        return ("the key is made from the message (its channel and text): two real notifications with the "
                "same text are not retries of each other"), shown
    if (shown := first(lambda c: not c.same_workflow)) is not None:
        return ("the key names the activity but not the workflow: every workflow numbers its activities from "
                "1, so two runs of one script share every activity id"), shown
    return "the key does not name one activity of one workflow", collisions[0]


@pytest.mark.check("keys-per-call")
def test_each_notification_has_its_own_key(scenario, evidence):
    """Given two cleanup runs of one script (the same activity numbers, the same messages) that each
    raise the same #security alert twice,
    Then every notification of every run was delivered once: each activity's posts carried a key of
    its own, different from every other activity's, in this run and the others."""
    scenario.require()
    for run in scenario.cleanups:
        run.require()
    if all(a.key is None for a in scenario.attempts):
        raise NotChecked("not checked: no Idempotency-Key was sent (see one-delivery)")
    sends = send_activities(scenario)
    evidence.update(keys=len({a.key for a in scenario.attempts}), notifications=len(sends))
    if all(origin_activity(a) for a in scenario.attempts):
        by_activity: dict[tuple, list[Attempt]] = {}
        for attempt in scenario.attempts:
            activity = origin_activity(attempt)
            by_activity.setdefault((activity.get("workflow_id"), activity.get("id")), []).append(attempt)
        collisions = []
        for send, run in sends.items():
            posts = by_activity.get(send, [])
            delivered = [a for a in posts if a.outcome == "delivered"]
            if run is scenario.revenue or len(delivered) == 1:
                continue  # revenue's one send: one-delivery
            duplicate = next((a for a in posts if a.outcome == "duplicate"), None)
            if duplicate is None:
                raise CheckFailed(
                    f"A notification of the {run.key} run was delivered {len(delivered)} times",
                    observed=f"activity {send[1]}: posts {[a.outcome for a in posts]}",
                    expected="each notification delivered once",
                    revisit=REVISIT_ONCE)
            taken_by = next((a for a in scenario.attempts if a.key == duplicate.key and a.outcome == "delivered"),
                            None)
            collisions.append(Collision(run, send, duplicate, taken_by))
        if collisions:
            idea, shown = key_idea(collisions)
            raise CheckFailed(
                f"{len(collisions)} notification(s) of the cleanup runs were never delivered: {idea}",
                observed=shown.describe(scenario) + ", so the chat service took it for a retry and delivered "
                         "nothing",
                expected="each notification delivered once: a key per activity of a workflow, the same on "
                         "its retries",
                revisit=REVISIT_ONCE)
        return
    # Posts sent without the attribution header (another HTTP client): count by message instead.
    wanted = Counter()
    for run in scenario.cleanups:
        for call in tool_calls_of(run.rule, "send_notification"):
            wanted[(call["channel"], call["message"])] += 1
    got = Counter((d.channel, d.text) for d in scenario.deliveries)
    for (channel, text), count in wanted.items():
        if got[(channel, text)] != count:
            raise CheckFailed(
                f"The cleanup runs' notifications to {channel} were delivered {got[(channel, text)]} times, "
                f"not {count}",
                observed=f"{count} send_notification activities posted {text[:60]!r}; the chat service "
                         f"delivered it {got[(channel, text)]} times: their keys collided",
                expected="each notification delivered once: a key per activity of a workflow "
                         "(not from the message, not the activity id alone)",
                revisit=REVISIT_ONCE)


@pytest.mark.check("write-refused")
def test_writes_are_refused_and_nothing_changes(scenario, evidence):
    """Given the cleanup script: DELETE, UPDATE, INSERT, CREATE TABLE ... AS, PRAGMA user_version = 7,
    ATTACH, a SELECT with a DELETE after it, WITH ... DELETE, DROP TABLE, and PRAGMA query_only = OFF
    before them,
    Then the dataset file is unchanged (schema, rows, header, no new file beside it), and query_database sent
    the model a refusal for every statement that writes."""
    scenario.require()
    evidence["db_unchanged"] = not scenario.db_changed
    outputs = [(run, o) for run in scenario.cleanups for o in run.outputs() if o.name == "query_database"]
    if scenario.db_changed:
        new_files = sorted(set(scenario.files_after) - set(scenario.files_before))
        refused = sorted({o.argument("sql") for _, o in outputs if o.output.strip().lower().startswith("refused")
                          and o.argument("sql") in scenario.writes})
        ran = sorted({o.argument("sql") for _, o in outputs
                      if not o.output.strip().lower().startswith("refused") and o.argument("sql") in scenario.writes})
        plain = [sql for sql in ran if sql.split()[0].upper() in ("DELETE", "UPDATE", "INSERT", "DROP")]
        if ran and not plain:  # the obvious writes refused, the others run: a guard that reads words
            idea = (f"Your guard refused the obvious writes and let {len(ran)} other(s) through: it judges the "
                    "SQL's words, on a connection that can write. ")
        else:
            idea = "query_database ran the writes: nothing stopped them. "
        raise CheckFailed(
            "The sales dataset changed: a write got through query_database",
            observed=f"{describe_change(scenario.db_before, scenario.db_after, new_files)}. Statements that ran "
                     f"(not refused): {', '.join(repr(s[:60]) for s in ran) or 'none the model was told of'}",
            expected="the dataset exactly as the check wrote it: query_database is read-only",
            revisit=idea + REVISIT_READ_ONLY)
    for run in scenario.cleanups:
        run.require()
        if not any(r.name == "query_database" for r in run.activities()):
            raise NotChecked("not checked: query_database did not run as an activity (see tools-as-activities)")
    answered = {o.argument("sql") for _, o in outputs}
    for run, output in outputs:
        sql = output.argument("sql")
        if sql in scenario.writes and not output.output.strip().lower().startswith("refused"):
            raise CheckFailed(
                "query_database did not refuse a statement that writes",
                observed=f"{sql!r} -> the model was sent {output.output[:200]!r}",
                expected="an answer starting with 'refused:' and the reason",
                revisit="The model reads the tool's output: say it was refused and why, so it can tell the "
                        "user (the lab's contract: a string starting with REFUSED from models.py). Running only "
                        "part of what the model sent (the first statement) is not a refusal either.")
    unanswered = sorted(scenario.writes - answered)
    if unanswered:
        raise CheckFailed("The model was not sent a reason for every refused query",
                          observed=f"no query_database result for {', '.join(repr(s[:60]) for s in unanswered)}",
                          expected=f"{len(scenario.writes)} refusals: one per write the script asked for")
    evidence["refused"] = len(scenario.writes)


@pytest.mark.check("history-replays")
def test_histories_replay_deterministically(scenario, evidence):
    """Then every recorded history replays against the workflow code (with OpenAIAgentsPlugin), in a
    process that runs as on another host (no dataset, no chat service), without an error."""
    scenario.require()
    for run in scenario.runs:
        run.require()
    verdict = scenario.replay
    if verdict is None:
        raise NotChecked("not checked: no finished history to replay")
    evidence["replayed"] = len(verdict.results) if verdict.ok else "no"
    if not verdict.ok:
        failures = verdict.failures()
        text = verdict.error + "\n" + "\n".join(failures.values())
        # The replay failed inside a tool's code: the workflow calls it directly.
        tool = next((function for name, function in student_frames(scenario.target, text)
                     if name == "activities.py" and function in TOOLS), None)
        if tool is not None:
            raise CheckFailed(
                f"Your workflow code calls {tool} directly: the replay ran it again, and it failed",
                observed=f"replaying on another host (no dataset, no chat service), {tool} ran inside the workflow "
                         f"of {len(failures)} run(s) and failed: "
                         + "; ".join(sorted({(re.findall(r'message: \\?"([^"\\]*)', err) or [err[:160]])[0]
                                             for err in failures.values()})),
                expected=f"{tool} runs only as an activity, whose recorded result the replay reuses",
                revisit="An activity's function called from workflow code is an ordinary call: it runs inside "
                        "the workflow, on every replay, wherever the replay runs (here without the dataset). Give "
                        "it to the Agent as activity_as_tool(fn, ...), or call it with "
                        "workflow.execute_activity(fn, ...). " + REVISIT_TOOLS,
                details=verdict.detail)
        raise CheckFailed(
            "The recorded history does not replay against your workflow code",
            observed=verdict.error or "; ".join(f"{wid}: {err[:300]}" for wid, err in failures.items()),
            expected="the same commands on replay: each model turn and each tool call as before",
            revisit="The agent's loop is workflow code and is replayed after every crash: build the Agent and "
                    "its tools from the input alone (no clock, randomness, environment or I/O in the "
                    "workflow), and keep clients and connections in the activities.",
            details=verdict.detail)
