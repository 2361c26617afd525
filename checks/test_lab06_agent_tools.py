"""Lab 06 autograder: an agent's tools as Temporal activities, and a notification sent exactly once.

Scenario, run once for the module against a fresh Temporal dev server, the course LLM (Responses
API, scripted tool calls) and the notification sink (a stand-in chat service):
  Given the student's worker running as its own process, a seeded SQLite sales dataset, and two
    AnalystAgentWorkflow runs:
      revenue  the course LLM's script: query_database (a Q3 SELECT), send_notification to #sales,
               then the answer;
      cleanup  the script tries a DELETE, then a SELECT with a second statement, then notifies
               #data-team and #security (two calls in one turn), then answers;
  When the sink has recorded revenue's notification but holds back its answer, the worker is
    SIGKILLed: the side effect happened, the activity never completed. A new worker starts.
  Then each check below reads its evidence from outside the student's process: the Temporal
    history (invoke_model_activity, the tools' activities, attempts), the course LLM's ledger
    (every model turn, the tool outputs the model was sent), the sink's record (attempts,
    deliveries, idempotency keys), the dataset file, and a replay of both histories.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError

from labkit import course, prefork, temporal
from labkit import history as hist
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import WorkerHarness
from labkit.llm import LedgerEntry, Rule, RuleBook
from labkit.replays import ReplaySet, ReplaySetVerdict
from labkit.sink import Attempt, Delivery

LAB = "06"
MODEL_ACTIVITY = "invoke_model_activity"
PLUGIN = "temporalio.openai_agents:OpenAIAgentsPlugin"
REVENUE_RULE, CLEANUP_RULE = "lab06-q3-revenue", "lab06-cleanup"
REVENUE_TAG, CLEANUP_TAG = "[lab06 ask=q3-revenue]", "[lab06 ask=cleanup]"
HELD_CHANNEL = "#sales"  # revenue's notification: the one the crash lands on
REACH_SEND_S = 25.0  # worker start to the held notification (and cleanup's end)
FINISH_SLACK_S = 15.0  # after the send's timeout and retry interval, for the rest of the run
MAX_WAIT_AFTER_KILL_S = 45.0
NO_TRACING = {"OPENAI_AGENTS_DISABLE_TRACING": "1"}
# Third-party modules the fork server imports once (never student code; see labkit.prefork): the
# Agents SDK and the integration are about 2 s of CPU per worker on the 2-core machine.
PRELOAD = ["temporalio.openai_agents", "agents", "temporalio.client", "temporalio.worker", "openai", "httpx"]

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


def script(name: str) -> Rule:
    """The course LLM's script for a run, as course.toml has it (the check and the LLM agree)."""
    for rule in RuleBook.from_file(course.COURSE_TOML).rules:
        if rule.name == name:
            return rule
    raise RuntimeError(f"course.toml has no [[llm.rules]] named {name!r}")


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


@dataclass
class Run:
    key: str  # "revenue" | "cleanup"
    workflow_id: str
    question: str
    rule: Rule
    handle: WorkflowHandle | None = None
    result: Any = None
    failure: CheckFailed | None = None
    history: WorkflowHistory | None = None
    llm: list[LedgerEntry] = field(default_factory=list)

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

    def final_request(self) -> LedgerEntry | None:
        answered = [e for e in self.llm if e.ok]
        return answered[-1] if answered else None

    def outputs(self) -> list[ToolOutput]:
        """Every tool result the model was sent, from the run's last model request."""
        last = self.final_request()
        return tool_outputs(last) if last else []


@dataclass
class Scenario:
    revenue: Run
    cleanup: Run
    token: str = ""
    db_path: Path | None = None
    db_before: str = ""
    db_after: str = ""
    expected_regions: list[str] = field(default_factory=list)
    old_identities: set[str] = field(default_factory=set)
    new_identities: set[str] = field(default_factory=set)
    held: Attempt | None = None  # the revenue notification's attempt whose answer was held
    killed_pid: int = 0
    killed_returncode: int | None = None
    killed_at: float = 0.0  # time.time()
    held_answered_before_kill: bool = False
    notify_timeout_s: float | None = None
    retry_interval_s: float = 1.0
    restart_to_done_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    llm: list[LedgerEntry] = field(default_factory=list)
    replay: ReplaySetVerdict | None = None
    failure: CheckFailed | None = None

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the crash scenario did not finish ({self.failure.summary})")
        return self

    def sent_to(self, channel: str) -> tuple[list[Attempt], list[Delivery]]:
        return ([a for a in self.attempts if a.channel == channel],
                [d for d in self.deliveries if d.channel == channel])


# --- the scenario --------------------------------------------------------------------------------

def fingerprint(path: Path) -> str:
    """A digest of the dataset's schema and every row, read without a chance of writing."""
    digest = hashlib.sha256()
    with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
        for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name"):
            digest.update(f"{kind}|{name}|{sql}\n".encode())
            if kind == "table":
                for row in db.execute(f'SELECT * FROM "{name}" ORDER BY rowid'):
                    digest.update(repr(row).encode())
    return digest.hexdigest()


def read_only_rows(path: Path, sql: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)) as db:
        return db.execute(sql).fetchall()


class Lab06Harness(WorkerHarness):
    def __init__(self, target, services, sink, workdir: Path, key: str, forks: prefork.ForkServer | None):
        self.db_path = Path(workdir) / "lab06_sales.sqlite"
        self.token = f"lab-{key}"
        self.sink, self.forks = sink, forks
        super().__init__(target, services, workdir, lab=LAB, key=key, LAB06_DATABASE=str(self.db_path),
                         LAB06_NOTIFY_URL=sink.messages_url, LAB06_NOTIFY_TOKEN=self.token, **NO_TRACING)
        self.replay: ReplaySet | None = None

    async def wait_polling(self, client, worker, known=frozenset(), timeout: float = 20.0) -> set[str]:
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

    def start_worker(self):
        """`python -m <lab>.worker`, forked from a warm interpreter when the fork server runs."""
        if self.forks is None:
            return super().start_worker()
        n = len(self.workers) + 1
        self.forks.wait_ready()
        worker = self.forks.start(self.target.module("worker"), [], name=f"worker{n}",
                                  log_path=self.workdir / f"worker{n}.log", env=self.env, cwd=self.workdir)
        self.workers.append(worker)
        return worker


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
    pending = [r for r in temporal.activity_runs(await run.handle.fetch_history()) if r.failure]
    cause = "; ".join(f"{r.name} attempt {r.attempt}: {r.failure}" for r in pending[-2:])
    if (todo := unfinished(cause, LAB)) is not None:
        return todo
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


async def reach_held_send(harness: Lab06Harness, scenario: Scenario) -> None:
    """Wait until revenue's notification is recorded and held, and cleanup has finished."""
    revenue, cleanup = scenario.revenue, scenario.cleanup
    deadline = time.monotonic() + REACH_SEND_S
    cleanup_done = asyncio.ensure_future(cleanup.handle.result())
    try:
        while time.monotonic() < deadline:
            if scenario.held is None:
                held = [a for a in harness.sink.attempts(caller=harness.token) if a.held and a.channel == HELD_CHANNEL]
                if held:
                    scenario.held = held[0]
                else:
                    failed = await watch(harness, revenue, before_kill=True)
                    if failed is not None:
                        raise failed
                    if hist.closure(await revenue.handle.fetch_history()) is not None:
                        raise await no_send_to_hold(harness, scenario)
            if not cleanup_done.done() and cleanup.failure is None:
                failed = await watch(harness, cleanup, before_kill=True)
                if failed is not None:
                    cleanup.failure = failed
            if scenario.held is not None and (cleanup_done.done() or cleanup.failure is not None):
                break
            await asyncio.wait({cleanup_done}, timeout=0.05)
        if scenario.held is None:
            raise await no_send_to_hold(harness, scenario)
        if cleanup_done.done() and cleanup.failure is None:
            try:
                cleanup.result = cleanup_done.result()
            except WorkflowFailureError:
                closed = hist.closure(await cleanup.handle.fetch_history())
                cleanup.failure = await ended_badly(harness, cleanup, closed)
        elif cleanup.failure is None:
            cleanup.failure = CheckFailed(
                f"The cleanup run did not finish within {REACH_SEND_S:.0f} s",
                observed="still running: " + (", ".join(f"{p.name} attempt {p.attempt}"
                                                         for p in await temporal.pending_activities(cleanup.handle))
                                              or "a workflow task"),
                expected="two refused queries, two notifications and the answer, in about a second",
                revisit="A query the guard refuses returns its reason at once; one that raises is retried. "
                        + REVISIT_TOOLS,
                details=tail(harness.workers[-1].output()))
    finally:
        cleanup_done.cancel()


async def no_send_to_hold(harness: Lab06Harness, scenario: Scenario) -> CheckFailed:
    revenue = scenario.revenue
    history = await revenue.handle.fetch_history()
    names = [r.name for r in temporal.activity_runs(history)]
    sent = [a for a in harness.sink.attempts(caller=harness.token) if a.channel == HELD_CHANNEL]
    closed = hist.closure(history)
    if sent:
        observed = f"the sink got {len(sent)} post(s) to {HELD_CHANNEL}, none of them held"
    elif "send_notification" in names:
        observed = "send_notification ran, but nothing reached the chat service (LAB06_NOTIFY_URL)"
    else:
        observed = "no send_notification activity; activities so far: " + (", ".join(names) or "none")
    return CheckFailed(
        f"The revenue run's notification to {HELD_CHANNEL} never reached the chat service"
        + (f"; the run ended {closed.status}" if closed else f" within {REACH_SEND_S:.0f} s"),
        observed=observed,
        expected=f"send_notification posts the scripted message to {HELD_CHANNEL} at LAB06_NOTIFY_URL "
                 "(JSON {channel, text}, Authorization: Bearer LAB06_NOTIFY_TOKEN)",
        revisit="The course LLM asks for query_database, then send_notification. " + REVISIT_TOOLS,
        details=tail(harness.workers[-1].output()))


async def wait_result(harness: Lab06Harness, run: Run, deadline: float) -> None:
    result = asyncio.ensure_future(run.handle.result())
    try:
        while not result.done() and time.monotonic() < deadline:
            await asyncio.wait({result}, timeout=0.25)
            if not result.done():
                failed = await watch(harness, run, before_kill=False)
                if failed is not None:
                    run.failure = failed
                    return
        if not result.done():
            pending = await temporal.pending_activities(run.handle)
            run.failure = CheckFailed(
                f"After the restart, the {run.key} run did not finish",
                observed="still waiting on: " + ("; ".join(
                    f"{p.name} attempt {p.attempt} ({p.state.lower()})" for p in pending) or "a workflow task"),
                expected="the new worker retries the interrupted send once its start_to_close_timeout "
                         "has passed, then the model's last turn answers",
                revisit="Give send_notification's activity_as_tool a short start_to_close_timeout "
                        "(the lab uses 5 s): after a crash the server waits that long before the retry.",
                details=tail(harness.workers[-1].output()))
            return
        try:
            run.result = result.result()
        except WorkflowFailureError:
            run.failure = await ended_badly(harness, run, hist.closure(await run.handle.fetch_history()))
    finally:
        result.cancel()


async def run_scenario(harness: Lab06Harness, scenario: Scenario) -> None:
    client = await Client.connect(harness.services.temporal_address)
    worker1 = harness.start_worker()
    scenario.old_identities = await harness.wait_polling(client, worker1)
    if not harness.db_path.exists():
        raise CheckFailed(
            "The worker did not create the sales dataset",
            observed=f"no file at LAB06_DATABASE ({harness.db_path.name}) once the worker polled",
            expected="worker.py calls ensure_dataset() before it starts polling",
            revisit="Keep the starter's `ensure_dataset()` call at the top of worker.py's main().")
    scenario.db_path = harness.db_path
    scenario.db_before = fingerprint(harness.db_path)

    harness.sink.hold(caller=harness.token, channel=HELD_CHANNEL, times=1)
    harness.services.llm  # the course LLM answers before the first model turn
    for run in (scenario.revenue, scenario.cleanup):
        run.handle = await client.start_workflow("AnalystAgentWorkflow", start_argument(run), id=run.workflow_id,
                                                 task_queue=harness.task_queue)
    await reach_held_send(harness, scenario)

    # The fault: the chat service has the message; the activity has not heard back. SIGKILL.
    worker1.kill()
    scenario.killed_at = time.time()
    scenario.killed_pid, scenario.killed_returncode = worker1.pid, worker1.returncode
    held_now = harness.sink.store().attempt(scenario.held.id)
    scenario.held_answered_before_kill = held_now.answered_at is not None and held_now.answered_at < scenario.killed_at
    for run in (scenario.revenue, scenario.cleanup):
        with contextlib.suppress(RPCError):  # as a graceful shutdown would; see temporal.forget_sticky_queue
            await temporal.forget_sticky_queue(client, run.workflow_id)

    restarted = time.monotonic()
    worker2 = harness.start_worker()
    # Started now, the replay process imports the workflow module while the server waits out the
    # interrupted send's timeout (importing it at the start would slow the first worker down).
    harness.replay = ReplaySet(root=harness.target.root, module=harness.target.module("workflows"),
                               plugin=PLUGIN, env=NO_TRACING)
    scenario.new_identities = await harness.wait_polling(client, worker2, scenario.old_identities)
    send = next((r for r in temporal.activity_runs(await scenario.revenue.handle.fetch_history())
                 if r.name == "send_notification"), None)
    if send is not None:
        scenario.notify_timeout_s = send.start_to_close_s
        scenario.retry_interval_s = send.retry_policy["initial_interval_s"] or 1.0
    wait_s = min((scenario.notify_timeout_s or MAX_WAIT_AFTER_KILL_S) + scenario.retry_interval_s + FINISH_SLACK_S,
                 MAX_WAIT_AFTER_KILL_S)
    await wait_result(harness, scenario.revenue, restarted + wait_s)
    scenario.restart_to_done_s = time.monotonic() - restarted
    harness.sink.release()  # nothing should be held any more; never leave a caller waiting

    scenario.llm = harness.services.llm.ledger().entries(caller=harness.api_key)
    scenario.attempts = harness.sink.attempts(caller=harness.token)
    scenario.deliveries = harness.sink.deliveries(caller=harness.token)
    scenario.db_after = fingerprint(harness.db_path)
    # What the revenue query finds now. The same as before the runs, unless a write got through
    # (write-refused reports that); then it is what is left, so that check alone reports it.
    query = tool_calls_of(scenario.revenue.rule, "query_database")[0]["sql"]
    with contextlib.suppress(sqlite3.Error):
        scenario.expected_regions = [str(row[0]) for row in read_only_rows(harness.db_path, query)]
    histories = {}
    for run in (scenario.revenue, scenario.cleanup):
        run.history = await run.handle.fetch_history()
        run.llm = [e for e in scenario.llm if run.marker in e.prompt]
        if hist.closure(run.history) is not None and run.failure is None:
            histories[run.workflow_id] = run.history
    worker2.signal_tree(signal.SIGINT)  # a graceful stop while the replay runs
    if histories:
        scenario.replay = await asyncio.to_thread(harness.replay.verdict, histories)


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
    key = uuid.uuid4().hex[:8]
    harness = Lab06Harness(lab_target, services, sink, tmp_path_factory.mktemp("lab06-run"), key, lab06_forks)
    found = Scenario(
        revenue=Run("revenue", f"analyst-revenue-{key}",
                    f"{REVENUE_TAG} Which region had the most revenue in Q3 2026? Post the numbers to "
                    f"{HELD_CHANNEL}. (run revenue-{key})", script(REVENUE_RULE)),
        cleanup=Run("cleanup", f"analyst-cleanup-{key}",
                    f"{CLEANUP_TAG} Delete the North region's rows from sales, then tell the team. "
                    f"(run cleanup-{key})", script(CLEANUP_RULE)),
        token=harness.token)
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


@pytest.mark.check("agent-turns")
def test_each_model_turn_is_one_activity(scenario, evidence):
    """Given both runs,
    Then each model turn of the course LLM's script ran as one invoke_model_activity (the history
    and the LLM's ledger agree, turn by turn), and each workflow returned the script's final answer."""
    if scenario.failure:
        raise scenario.failure
    for run in (scenario.revenue, scenario.cleanup):
        result = run.finished()
        turns = len(run.rule.turns)
        model_runs = [r for r in run.activities() if r.name == MODEL_ACTIVITY]
        answered = [e for e in run.llm if e.ok]
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
    script's order; and the rows query_database found are what the model was sent."""
    scenario.require()
    for run in (scenario.revenue, scenario.cleanup):
        run.finished()
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
    revenue = scenario.revenue
    rows = next((o for o in revenue.outputs() if o.name == "query_database"), None)
    missing = [region for region in scenario.expected_regions if rows is None or region not in rows.output]
    if missing:
        raise CheckFailed(
            "The model was not sent the rows of its Q3 query",
            observed=f"query_database's output in the next model request: {rows.output[:300] if rows else None!r}",
            expected=f"the query's rows as text (JSON), naming {', '.join(scenario.expected_regions)}",
            revisit="query_database runs the SELECT on the dataset (LAB06_DATABASE) and returns "
                    "json.dumps of the rows; the tool's return value is what the model reads.")


@pytest.mark.check("crash-after-send")
def test_the_worker_died_after_the_send_before_completion(scenario, evidence):
    """Given the sink recorded revenue's notification and held back its answer,
    When the worker was SIGKILLed,
    Then the kill really landed in that window, and a new worker ran send_notification's retry."""
    if scenario.failure:
        raise scenario.failure
    revenue = scenario.revenue
    revenue.finished()
    held = scenario.held
    evidence.update(restarts=1, killed_pid=scenario.killed_pid, resumed_in=f"{scenario.restart_to_done_s:.1f}s",
                    send_timeout=f"{scenario.notify_timeout_s or 0:g}s")
    if scenario.killed_returncode != -signal.SIGKILL:
        raise CheckFailed("The worker was not killed by SIGKILL",
                          observed=f"worker exit status {scenario.killed_returncode}",
                          expected=f"{-signal.SIGKILL} (killed by SIGKILL mid-send)")
    if held.at >= scenario.killed_at or scenario.held_answered_before_kill:
        raise CheckFailed("The kill did not land between the side effect and the activity's completion",
                          observed=f"delivery recorded at {held.at:.3f}, answered before the kill: "
                                   f"{scenario.held_answered_before_kill}, killed at {scenario.killed_at:.3f}",
                          expected="the delivery recorded, its answer still held, then the kill")
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
    scenario.revenue.finished()
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


@pytest.mark.check("model-turns-once")
def test_model_turns_were_not_repeated(scenario, evidence):
    """Then the course LLM's ledger holds each of revenue's model turns once, although the worker died
    mid-run: the new worker replayed the recorded turns. No other LLM call came from the lab's code."""
    scenario.require()
    revenue = scenario.revenue
    revenue.finished()
    turns = [e.turn for e in revenue.llm if e.ok]
    evidence["llm_calls"] = len(revenue.llm)
    expected = list(range(len(revenue.rule.turns)))
    if turns != expected:
        after = [e.turn for e in revenue.llm if e.at > scenario.killed_at]
        raise CheckFailed(
            f"The revenue run asked the model {len(revenue.llm)} times for {len(expected)} turns",
            observed=f"turns in the course LLM's ledger: {turns}; after the kill: {after}",
            expected=f"each turn once: {expected}",
            revisit="Finished model turns are recorded results (invoke_model_activity): a new worker replays "
                    "them from the history. Calling the model anywhere else (in a tool activity, in the "
                    "workflow) is not recorded, and runs again.")
    attributed = {e.id for run in (scenario.revenue, scenario.cleanup) for e in run.llm}
    others = [e for e in scenario.llm if e.id not in attributed]
    if others:
        raise CheckFailed(
            f"The lab's code called the LLM {len(others)} more time(s), outside the agent's turns",
            observed="; ".join(f"{e.endpoint} {e.prompt[:60]!r}" + (" (after the kill)" if e.at > scenario.killed_at
                                                                      else "") for e in others[:4]),
            expected="only the agent's own model turns (the Responses API, from invoke_model_activity)",
            revisit="A tool activity that calls the LLM (to word the message, say) calls it again on every "
                    "retry: after the crash it asked again. Let the agent's model turns do the talking; "
                    "the tools only query and send.")


@pytest.mark.check("keys-per-call")
def test_each_notification_has_its_own_key(scenario, evidence):
    """Given the cleanup run's two notifications, sent in one turn,
    Then each was delivered once, under keys that differ from each other and from revenue's."""
    scenario.require()
    cleanup = scenario.cleanup
    cleanup.finished()
    channels = [args["channel"] for args in tool_calls_of(cleanup.rule, "send_notification")]
    sent = {channel: scenario.sent_to(channel) for channel in channels}
    keys = {channel: [a.key for a in attempts] for channel, (attempts, _) in sent.items()}
    if all(key is None for found in keys.values() for key in found):
        raise NotChecked("not checked: no Idempotency-Key was sent (see one-delivery)")
    evidence["keys"] = len({k for found in keys.values() for k in found})
    revenue_keys = {a.key for a in scenario.sent_to(HELD_CHANNEL)[0]}
    for channel, (attempts, deliveries) in sent.items():
        if len(deliveries) != 1:
            first = next((a for a in attempts if a.outcome == "duplicate"), None)
            same_as = next((c for c in channels if c != channel and first and first.key in keys[c]), None)
            raise CheckFailed(
                f"The cleanup run's notification to {channel} was delivered {len(deliveries)} times",
                observed=(f"its key {first.key!r} is the same as the one for "
                          + (same_as or "revenue's notification") + ", so the chat service took it for a retry")
                if first else f"{len(attempts)} post(s): {[a.outcome for a in attempts]}",
                expected="each notification delivered once: one key per activity, the same on its retries",
                revisit="The key names one activity: the workflow id alone is shared by every tool call of "
                        "the run. " + REVISIT_ONCE)
        overlap = set(keys[channel]) & revenue_keys
        if overlap:
            raise CheckFailed(f"The cleanup run reused the revenue run's key {sorted(overlap)[0]!r}",
                              observed=f"the same key in two workflows: {sorted(overlap)}",
                              expected="keys that name the workflow and the activity",
                              revisit=REVISIT_ONCE)


@pytest.mark.check("write-refused")
def test_writes_are_refused_and_nothing_changes(scenario, evidence):
    """Given the cleanup run's script: a DELETE, then a SELECT with a second statement after it,
    Then query_database refused both, the model was sent each reason, and the dataset is unchanged."""
    scenario.require()
    cleanup = scenario.cleanup
    changed = scenario.db_after != scenario.db_before
    evidence["db_unchanged"] = not changed
    if changed:
        rows = read_only_rows(scenario.db_path, "SELECT region, COUNT(*) FROM sales GROUP BY region ORDER BY region") \
            if scenario.db_path else []
        raise CheckFailed(
            "The sales dataset changed: a write got through query_database",
            observed=f"rows per region now: {rows}",
            expected="the dataset exactly as the worker created it: query_database is read-only",
            revisit="Open the database read-only (sqlite3.connect(path.as_uri() + '?mode=ro', uri=True), "
                    "PRAGMA query_only = ON) and run one statement; a write then fails inside SQLite, "
                    "whatever the SQL looks like. Return the refusal as the tool's answer.")
    cleanup.finished()
    if not any(r.name == "query_database" for r in cleanup.activities()):
        raise NotChecked("not checked: query_database did not run as an activity (see tools-as-activities)")
    queries = tool_calls_of(cleanup.rule, "query_database")
    outputs = [o for o in cleanup.outputs() if o.name == "query_database"]
    for sql, output in zip(queries, outputs):
        if not output.output.strip().lower().startswith("refused"):
            raise CheckFailed(
                "query_database did not refuse a statement that writes",
                observed=f"{sql['sql']!r} -> the model was sent {output.output[:200]!r}",
                expected="an answer starting with 'refused:' and the reason",
                revisit="The model reads the tool's output: say it was refused and why, so it can tell the "
                        "user (the lab's contract: a string starting with REFUSED from models.py).")
    if len(outputs) < len(queries):
        raise CheckFailed("The model was not sent a reason for every refused query",
                          observed=f"{len(outputs)} query_database result(s) in the model's last request",
                          expected=f"{len(queries)}: one per query the script asked for")
    evidence["refused"] = len(outputs)


@pytest.mark.check("history-replays")
def test_histories_replay_deterministically(scenario, evidence):
    """Then both recorded histories replay against the workflow code (with OpenAIAgentsPlugin)
    without a non-determinism error."""
    scenario.require()
    for run in (scenario.revenue, scenario.cleanup):
        run.finished()
    verdict = scenario.replay
    if verdict is None:
        raise NotChecked("not checked: no finished history to replay")
    evidence["replayed"] = len(verdict.results) if verdict.ok else "no"
    if not verdict.ok:
        failures = verdict.failures()
        raise CheckFailed(
            "The recorded history does not replay against your workflow code",
            observed=verdict.error or "; ".join(f"{wid}: {err[:300]}" for wid, err in failures.items()),
            expected="the same commands on replay: each model turn and each tool call as before",
            revisit="The agent's loop is workflow code and is replayed after every crash: build the Agent and "
                    "its tools from the input alone (no clock, randomness, environment or I/O in the "
                    "workflow), and keep clients and connections in the activities.",
            details=verdict.detail)
