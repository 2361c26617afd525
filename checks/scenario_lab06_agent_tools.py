"""Lab 06 crash sweep: agent runs (tools as activities) survive a worker SIGKILLed at random moments,
and every notification reaches the chat service exactly once.

Per trial: a fresh task queue, LLM key, sink token and sales dataset; one worker (forked from a
warm interpreter that has imported the Agents SDK, as the Lab 06 check does); `subjects`
AnalystAgentWorkflow runs, alternately the check's two scripts (revenue: query, one send to
#sales, answer; cleanup: two refused queries, two sends in one turn, answer), started
`start_gap_s` apart so the kills find them in different places (a model turn in flight, a tool
running, a send the sink has received but not yet answered, between workflow tasks). The course
LLM answers `latency_ms` late and the sink answers each send `send_latency_s` late (it records the
send on arrival), so kills land inside those windows too.

Two ledgers, one rule (labkit.sweep):
- model turns: turn N of workflow W = the course LLM's ledger entries under the trial's key whose
  prompt carries W's marker and that the script answered as turn N; recorded = the history has
  N+1 completed invoke_model_activity; successor = turn N+1.
- sends (the sink's receipts): the k-th send to channel C of workflow W (the cleanup script posts
  to #security twice) = the sink's attempts under the trial's token whose Idempotency-Key is
  `W/<activity id>` for the k-th such activity id (in order) whose posts went to C; recorded = that
  send_notification activity completed in history; successor = the turn after the one that asked.
  A repeat caught in flight is the at-least-once window: the sink received it again and suppressed
  the second delivery (its attempts say "duplicate").
Invariants verified at the end: every workflow COMPLETED with its script's final answer; exactly
one delivery per send at the sink (deliveries, not receipts); no delivery without a key of the
trial's workflows; the history records each model turn and each tool call completed once; no LLM
call outside a workflow.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

from temporalio.client import Client, WorkflowHandle

from labkit import course, prefork, temporal
from labkit.llm import Rule, RuleBook
from labkit.pytest_plugin import Services
from labkit.services import CourseLLM, TemporalServer
from labkit.sink import NotificationSink
from labkit.sweep import LogicalCall, Violation
from labkit.sweep_kit import graded_copy, with_latency
from labkit.sweep_temporal import WORKFLOW_TASK_TIMEOUT, ForkedWorkers, WorkerScenario, release_dead_worker, results_of

# --- what the check and the sweep share ------------------------------------------------------------

MODEL_ACTIVITY = "invoke_model_activity"
NO_TRACING = {"OPENAI_AGENTS_DISABLE_TRACING": "1"}  # offline: the Agents SDK would export traces
# Third-party modules the fork server imports once (never student code; see labkit.prefork): the
# Agents SDK and the integration are about 2 s of CPU per worker on the 2-core machine.
PRELOAD = ["temporalio.openai_agents", "agents", "temporalio.client", "temporalio.worker", "openai", "httpx"]
REVENUE_RULE, CLEANUP_RULE = "lab06-q3-revenue", "lab06-cleanup"
REVENUE_TAG, CLEANUP_TAG = "[lab06 ask=q3-revenue]", "[lab06 ask=cleanup]"
SALES_CHANNEL = "#sales"  # where the revenue script posts its numbers
SCRIPTS = {  # the two runs: the course LLM's rule, the question (a run's marker follows it)
    "revenue": (REVENUE_RULE, f"{REVENUE_TAG} Which region had the most revenue in Q3 2026? "
                              f"Post the numbers to {SALES_CHANNEL}."),
    "cleanup": (CLEANUP_RULE, f"{CLEANUP_TAG} Delete the North region's rows from sales, then tell the team."),
}


def question(kind: str, run: str) -> str:
    """The question a `kind` run asks, marked with its run name: "(run <run>)" is in every prompt of
    the run's model turns, so each ledger entry belongs to one run."""
    return f"{SCRIPTS[kind][1]} (run {run})"


def script(name: str) -> Rule:
    """The course LLM's script for a run, as course.toml has it (the check and the LLM agree)."""
    for rule in RuleBook.from_file(course.COURSE_TOML).rules:
        if rule.name == name:
            return rule
    raise RuntimeError(f"course.toml has no [[llm.rules]] named {name!r}")


def send_slots(attempts, workflow_id: str) -> dict[str, str]:
    """Idempotency-Key -> the logical send it is, `sink:W/<channel>#<k>`: the k-th send of W to
    that channel, counting W's keys to the channel in activity order (a retry keeps its key)."""
    per_channel: dict[str, set[str]] = {}
    for attempt in attempts:
        if attempt.key and attempt.key.startswith(f"{workflow_id}/"):
            per_channel.setdefault(attempt.channel, set()).add(attempt.key)
    slots = {}
    for channel, keys in per_channel.items():
        def number(key: str) -> int:
            tail = key.rsplit("/", 1)[1]
            return int(tail) if tail.isdigit() else 0

        ordered = sorted(keys, key=number)
        slots.update({key: f"sink:{workflow_id}/{channel}#{k}" for k, key in enumerate(ordered)})
    return slots


def belongs(key: str | None, workflow_id: str) -> bool:
    """A send of this workflow: the solution's key is `<workflow id>/<activity id>`; a key of the
    workflow id alone (a known-bad variant) still names the workflow, so its verdict can say what
    went wrong (one delivery for two sends) instead of "no send made"."""
    return key is not None and (key == workflow_id or key.startswith(f"{workflow_id}/"))


class Sweep(WorkerScenario):
    lab = "06"

    def __init__(self, workdir: Path, subjects: int = 4, path: Path | None = None, latency_ms: int = 300,
                 send_latency_s: float = 0.4, start_gap_s: float = 0.6, kill_window: tuple[float, float] = (0.3, 2.8),
                 finish_timeout_s: float = 60.0):
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.start_gap_s, self.kill_window = latency_ms, start_gap_s, kill_window
        self.send_latency_s = send_latency_s
        self.finish_timeout_s = finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self.rules = {kind: script(name) for kind, (name, _) in SCRIPTS.items()}
        self.counts: Counter = Counter()  # the sink's receipts and deliveries, across trials

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.temporal = TemporalServer(state, ui_port=None)
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.sink = NotificationSink(state)
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env(**NO_TRACING)) \
            if prefork.enabled() else None
        for server in filter(None, (self.forks, self.temporal, self.llm, self.sink)):
            server.launch()
        await asyncio.to_thread(self.temporal.wait_ready)
        await asyncio.to_thread(self.llm.wait_ready)
        await asyncio.to_thread(self.sink.wait_ready)
        self.llm.push_rules(with_latency([name for name, _ in SCRIPTS.values()], self.latency_ms))
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)
        self.services = Services(temporal_address=self.temporal.address, course_llm=self.llm,
                                 temporal=self.temporal)
        self.client = await Client.connect(self.temporal.address)

    async def stop(self) -> None:
        for server in filter(None, (getattr(self, name, None) for name in ("forks", "sink", "llm", "temporal"))):
            server.stop()

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        key = f"sweep-{self.run_id}-t{trial}"
        workdir = self.workdir / f"trial{trial}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.token = f"lab-sink-{key}"
        self.harness = ForkedWorkers(self.target, self.services, workdir, lab=self.lab, key=key, forks=self.forks,
                                     LAB06_DATABASE=str(workdir / "lab06_sales.sqlite"),
                                     LAB06_NOTIFY_URL=self.sink.messages_url, LAB06_NOTIFY_TOKEN=self.token,
                                     **NO_TRACING)
        kinds = list(SCRIPTS)
        self.plan = {f"analyst-{key}-w{i}": kinds[i % len(kinds)] for i in range(self.subjects)}  # id: script
        self.markers = {workflow_id: f"(run {workflow_id})" for workflow_id in self.plan}  # what question() adds
        self.handles: dict[str, WorkflowHandle] = {}
        self.results: dict[str, object] = {}
        self.identities: set[str] = set()
        self.gate, self.feed = gate, None
        # The sink records each send on arrival and answers it send_latency_s later (a hold that
        # releases itself): a kill can then land between the side effect and the activity's completion.
        self.sink.hold(caller=self.token, times=10_000, release_after_s=self.send_latency_s)
        self.harness.start_worker()

    async def _start_runs(self) -> None:
        for n, (workflow_id, kind) in enumerate(self.plan.items()):
            if n:
                await asyncio.sleep(self.start_gap_s)
            await self.gate.wait()
            self.handles[workflow_id] = await self.client.start_workflow(
                "AnalystAgentWorkflow", {"question": question(kind, workflow_id), "model": "gpt-4o-mini"},
                id=workflow_id,
                task_queue=self.harness.task_queue, task_timeout=WORKFLOW_TASK_TIMEOUT)

    async def after_kill(self) -> None:
        for handle in list(self.handles.values()):
            await release_dead_worker(self.client, handle)

    async def _completed(self, handle: WorkflowHandle) -> list[temporal.ActivityRun]:
        return [run for run in temporal.activity_runs(await handle.fetch_history()) if run.outcome == "completed"]

    async def recorded(self) -> set[str]:
        attempts = self.sink.attempts(caller=self.token)
        found = set()
        for workflow_id, handle in list(self.handles.items()):
            completed = await self._completed(handle)
            turns = sum(run.name == MODEL_ACTIVITY for run in completed)
            found |= {f"{workflow_id}/turn{n}" for n in range(turns)}
            sent = {f"{workflow_id}/{run.activity_id}" for run in completed if run.name == "send_notification"}
            slots = send_slots(attempts, workflow_id)
            found |= {slots[key] for key in sent if key in slots}
        return found

    async def finish(self) -> None:
        self.results = await results_of(self.handles, self.feed, self.finish_timeout_s)

    # --- the ledgers ----------------------------------------------------------------------------------

    def _sends(self, kind: str) -> list[tuple[int, str]]:
        """(the turn that asks, channel) of every send in the script."""
        return [(n, call.arguments["channel"]) for n, turn in enumerate(self.rules[kind].turns)
                for call in turn.tool_calls() if call.tool == "send_notification"]

    async def logical_calls(self) -> list[LogicalCall]:
        entries = self.llm.ledger().entries(caller=self.harness.api_key)
        self.strays = [e for e in entries if not any(marker in e.prompt for marker in self.markers.values())]
        calls = []
        for workflow_id, kind in self.plan.items():
            mine = [e for e in entries if self.markers[workflow_id] in e.prompt]
            turns = len(self.rules[kind].turns)
            calls += [LogicalCall(key=f"{workflow_id}/turn{n}", subject=workflow_id,
                                  successor=f"{workflow_id}/turn{n + 1}" if n + 1 < turns else None,
                                  entries=[(e.at, e.status) for e in mine if e.turn == n])
                      for n in range(turns)]
        return calls

    async def ledgers(self) -> dict[str, tuple[str, list[LogicalCall]]]:
        attempts = self.sink.attempts(caller=self.token)
        sends = []
        for workflow_id, kind in self.plan.items():
            slots = send_slots(attempts, workflow_id)
            seen: Counter = Counter()
            for turn, channel in self._sends(kind):
                key = f"sink:{workflow_id}/{channel}#{seen[channel]}"
                seen[channel] += 1
                sends.append(LogicalCall(key=key, subject=workflow_id, successor=f"{workflow_id}/turn{turn + 1}",
                                         entries=[(a.at, 200) for a in attempts if slots.get(a.key) == key]))
        return {"sink": ("send", sends)}

    # --- the end state --------------------------------------------------------------------------------

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        deliveries = self.sink.deliveries(caller=self.token)
        attempts = self.sink.attempts(caller=self.token)
        self.counts["sink receipts"] += len(attempts)
        self.counts["sink deliveries"] += len(deliveries)
        self.counts["duplicates suppressed by the idempotency key"] += sum(a.outcome == "duplicate" for a in attempts)
        for workflow_id, kind in self.plan.items():
            rule = self.rules[kind]
            result, final = self.results.get(workflow_id, "never started"), rule.turn_text(rule.turns[-1])
            if result != final:
                found.append(Violation(trial, workflow_id, "workflow lost",
                                       f"{type(result).__name__}: {str(result)[:160]}",
                                       f"AnalystAgentWorkflow COMPLETED with the {kind} script's final answer"))
                continue
            mine = Counter(d.channel for d in deliveries if belongs(d.key, workflow_id))
            expected = Counter(channel for _, channel in self._sends(kind))
            if mine != expected:
                found.append(Violation(trial, workflow_id, "not exactly one delivery per send at the sink",
                                       f"deliveries per channel {dict(mine)}", f"{dict(expected)}"))
            completed = Counter(run.name for run in await self._completed(self.handles[workflow_id]))
            calls = Counter(call.tool for turn in rule.turns for call in turn.tool_calls())
            want = {MODEL_ACTIVITY: len(rule.turns), **calls}
            if dict(completed) != want:
                found.append(Violation(trial, workflow_id, "model turns and tool calls not each completed once in history",
                                       f"completed: {dict(completed)}", f"completed: {want}"))
        strangers = [d for d in deliveries if not any(belongs(d.key, w) for w in self.plan)]
        if strangers:
            found.append(Violation(trial, "sink", "deliveries from no send of the trial's workflows",
                                   f"{len(strangers)}, e.g. key {strangers[0].key!r} to {strangers[0].channel}",
                                   "every delivery carries the Idempotency-Key <workflow id>/<activity id>"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls outside any workflow",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].prompt[:80]!r}",
                                   "every request carries the prompt of one of the trial's workflows"))
        return found

    async def end_trial(self) -> None:
        if self.feed is not None and not self.feed.done():
            self.feed.cancel()
        for handle in self.handles.values():  # a run the sweep gave up on must not run on
            try:
                await handle.terminate("crash sweep trial over")
            except Exception:
                pass  # already closed: the usual case
        self.harness.close()
