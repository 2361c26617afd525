"""Lab 05 autograder: a research agent that fans out for real, notices a stalled page, survives a
crash mid-fan-out, and stays within its budget.

Scenario, run once for the module against fresh real servers: the Temporal dev server, the course
LLM and the course web (labkit.web, with each page's behaviour scripted and every fetch in its
ledger). Five ResearchWorkflow runs at once, on two of the student's workers (real processes):
  fanout  worker A. 5 pages: one takes 4 s (twice the heartbeat timeout), four take 1 s; at most 3 at a
          time.
  hang    worker A. 4 pages; the first fetch of one page sends half the page and then stalls.
  budget  worker A. 3 pages, one answers 503 once; a budget too small for any summarize call.
  cancel  worker A. 1 page that takes 20 s; the workflow is cancelled while it downloads.
  retry   worker A. 1 page; the LLM answers its first summarize request with HTTP 500.
  crash   worker K. 5 pages: two quick, three take 1.5 s. Once two are extracted and others are
          downloading, worker K is SIGKILLed and a new worker starts.
Each check below reads its evidence from outside the student's processes: the Temporal history
(activity timestamps, attempts, failures, retry policies), the course web's fetch ledger, the
course LLM's ledger (token usage), and a replay of every recorded history in a separate process.
"""

from __future__ import annotations

import asyncio
import math
import re
import signal
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import TimeoutType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.converter import DataConverter

from labkit import course, prefork, proc, temporal
from labkit import history as hist
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import WorkerHarness
from labkit.llm import LedgerEntry
from labkit.llm.server import count_tokens
from labkit.replays import ReplaySet, ReplaySetVerdict
from labkit.web import DEFAULT_CORPUS, WebEntry, load_corpus, rank

LAB = "05"
# Third-party modules the fork server imports once for the workers (never student code); see labkit.prefork.
PRELOAD = ["temporalio.client", "temporalio.worker", "temporalio.workflow", "temporalio.activity",
           "temporalio.common", "temporalio.exceptions", "openai", "httpx"]

# What the lab asks for (README, course.toml hints).
HEARTBEAT_S = 2.0
EXPECTED_POLICY = {
    "search_web": {"maximum_attempts": 3},
    "extract_content": {"maximum_attempts": 2},
    "llm_summarize": {"maximum_attempts": 5, "initial_interval_s": 2.0, "backoff_coefficient": 2.0},
}
PRICES_PER_MILLION = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}  # as in the lab's models.py
TINY_BUDGET = 0.00005  # US dollars: less than any summarize call over these pages costs
MAX_PARALLEL = 3
START_TO_CLOSE_S = 60.0  # the text's extract_content timeout: what a hang would cost without heartbeats

# The scripted web (ms per page, in the search's rank order).
# The slow page takes twice the heartbeat timeout: the server notices a missed heartbeat up to ~1 s late, so a
# page only a little longer than 2 s can finish before a lone heartbeat's attempt is timed out.
FANOUT_SLOW_MS = [4000, 1000, 1000, 1000, 1000]
CRASH_SLOW_MS = [150, 150, 1500, 1500, 1500]
HANG_OTHERS_MS = 300
CANCEL_SLOW_MS = 20000

# Deadlines: every wait ends in a verdict.
FINISH_S = 20.0  # fanout, hang, budget: from their start
REACH_KILL_S = 15.0
FINISH_AFTER_KILL_S = 20.0
REACH_CANCEL_S = 15.0
# Verdict thresholds.
PARALLEL_RATIO = 0.75  # the fan-out's wall time must be below this share of the pages' summed time
# From the stalled fetch to the next fetch of that page: the 2 s heartbeat timeout + the 1 s backoff, plus the
# server's timer (about 1 s) and slack for a busy machine. Without a heartbeat_timeout it is start_to_close (60 s).
HANG_RETRY_LIMIT_S = 9.0
# The worker must close the stalled connection within this of opening it: a read timeout as long as the heartbeat
# timeout closes it after 2 s; without one, the SDK cancels the silent attempt itself about 5 s after its heartbeat
# timeout (measured: 7 s), and an activity that lets CancelledError through closes it then.
HANG_RELEASE_LIMIT_S = 12.0
CANCEL_CLOSE_LIMIT_S = 4.0  # from the cancel request to the download's connection closing
COST_REL_TOLERANCE = 1e-6

CORPUS, _ = load_corpus([DEFAULT_CORPUS])

REVISIT_FANOUT = ("§64.2.1's Step 2 says \"(parallel)\" but awaits each page inside the loop, so the pages "
                  "download one after another. Start every page's activity first (a coroutine or task per "
                  "URL), then wait for all of them: `await asyncio.gather(*(extract(u) for u in urls))`; "
                  "an asyncio.Semaphore(request.max_parallel) inside `extract` caps how many run at once.")
REVISIT_HEARTBEAT = ("A heartbeat says \"still making progress\". Call activity.heartbeat(...) inside the loop "
                     "that receives the page (each chunk from `response.aiter_bytes()`), not once before the "
                     "download: Temporal gives up on an attempt whose heartbeats stop for heartbeat_timeout.")


# --- reading the history ---------------------------------------------------------------------------

def _decode(payloads) -> list[Any]:
    converter = DataConverter.default.payload_converter
    try:
        return list(converter.from_payloads(list(payloads)))
    except Exception:
        return []


def failure_kind(failure) -> str:
    """"heartbeat timeout", "start-to-close timeout", an application error's type, or "error"."""
    if failure is None:
        return ""
    if failure.HasField("timeout_failure_info"):
        name = TimeoutType.Name(failure.timeout_failure_info.timeout_type).removeprefix("TIMEOUT_TYPE_")
        return name.lower().replace("_", "-") + " timeout"
    if failure.HasField("application_failure_info"):
        return failure.application_failure_info.type or "error"
    if failure.HasField("canceled_failure_info"):
        return "canceled"
    return "error"


@dataclass
class Act:
    """One scheduled activity: its input, its last attempt, and how the attempt before it ended."""

    activity_id: str
    name: str
    args: list[Any]
    scheduled_at: datetime
    retry_policy: dict[str, float]
    start_to_close_s: float | None
    heartbeat_s: float | None
    attempt: int = 0
    identity: str = ""
    started_at: datetime | None = None
    closed_at: datetime | None = None
    outcome: str = "pending"  # completed | failed | timed_out | canceled | pending
    failure: str = ""
    failure_kind: str = ""
    previous_failure: str = ""  # the attempt before the last one (history keeps only the last)
    previous_kind: str = ""

    @property
    def url(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def slug(self) -> str:
        return self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def seconds(self) -> float:
        return (self.closed_at - self.started_at).total_seconds() if self.started_at and self.closed_at else 0.0


def _seconds(duration) -> float | None:
    return duration.ToTimedelta().total_seconds() or None


def activities(history: WorkflowHistory) -> list[Act]:
    found: dict[int, Act] = {}
    for event in history.events:
        kind = hist.kind(event)
        at = event.event_time.ToDatetime(tzinfo=timezone.utc)
        if kind == "ACTIVITY_TASK_SCHEDULED":
            attrs = event.activity_task_scheduled_event_attributes
            policy = attrs.retry_policy
            found[event.event_id] = Act(
                activity_id=attrs.activity_id, name=attrs.activity_type.name, args=_decode(attrs.input.payloads),
                scheduled_at=at,
                retry_policy={"maximum_attempts": policy.maximum_attempts,
                              "initial_interval_s": policy.initial_interval.ToTimedelta().total_seconds(),
                              "backoff_coefficient": policy.backoff_coefficient},
                start_to_close_s=_seconds(attrs.start_to_close_timeout), heartbeat_s=_seconds(attrs.heartbeat_timeout))
        elif kind == "ACTIVITY_TASK_STARTED":
            attrs = event.activity_task_started_event_attributes
            act = found[attrs.scheduled_event_id]
            act.attempt, act.identity, act.started_at = attrs.attempt, attrs.identity, at
            if attrs.HasField("last_failure"):
                act.previous_failure = attrs.last_failure.message
                act.previous_kind = failure_kind(attrs.last_failure)
        elif kind in ("ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
                      "ACTIVITY_TASK_CANCELED"):
            attrs = getattr(event, kind.lower() + "_event_attributes")
            act = found[attrs.scheduled_event_id]
            act.closed_at, act.outcome = at, kind.removeprefix("ACTIVITY_TASK_").lower()
            if kind != "ACTIVITY_TASK_COMPLETED" and attrs.HasField("failure"):
                act.failure, act.failure_kind = attrs.failure.message, failure_kind(attrs.failure)
                if attrs.failure.HasField("cause") and not act.failure_kind.endswith("timeout"):
                    act.failure_kind = failure_kind(attrs.failure.cause) or act.failure_kind
    return list(found.values())


async def workflow_task_running(handle: WorkflowHandle) -> bool:
    """True while a worker holds a workflow task of this run (started, not completed)."""
    from temporalio.api.enums.v1 import PendingWorkflowTaskState

    description = (await handle.describe()).raw_description
    return (description.HasField("pending_workflow_task") and description.pending_workflow_task.state
            == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED)


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one moment (an end before a start at the same instant)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    most = now = 0
    for _, step in points:
        now += step
        most = max(most, now)
    return most


def field_of(result: Any, name: str, default: Any = None) -> Any:
    if isinstance(result, dict):
        return result.get(name, default)
    return getattr(result, name, default)


def price_of(entry: LedgerEntry) -> float:
    """What one answered request cost, from the usage the course LLM reported for it."""
    if entry.status != 200 or entry.reply is None:
        return 0.0
    messages = entry.request.get("messages") or []
    prompt = sum(count_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
    completion = count_tokens(entry.reply)
    per_prompt, per_completion = PRICES_PER_MILLION.get(entry.model or "gpt-4o-mini", (math.nan, math.nan))
    return (prompt * per_prompt + completion * per_completion) / 1_000_000


def ts(at: float | datetime | None) -> str:
    if at is None:
        return "-"
    if isinstance(at, datetime):
        at = at.timestamp()
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


# --- the scenario ----------------------------------------------------------------------------------

@dataclass
class Run:
    key: str  # fanout | hang | budget | cancel | crash
    workflow_id: str
    topic: str
    marker: str
    request: dict[str, Any]
    pages: list[str]  # the slugs its search returns, in rank order
    harness: WorkerHarness | None = None
    handle: WorkflowHandle | None = None
    started_at: float = 0.0  # time.time() when the check started it
    result: Any = None
    finished_at: float | None = None
    status: str = ""  # COMPLETED, FAILED, CANCELED, ... or RUNNING when it missed its deadline
    failure: CheckFailed | None = None  # why it did not complete (or why the scenario around it broke)
    history: WorkflowHistory | None = None
    acts: list[Act] = field(default_factory=list)
    fetches: list[WebEntry] = field(default_factory=list)  # this run's pages, every fetch
    llm_calls: list[LedgerEntry] = field(default_factory=list)

    def extracts(self) -> list[Act]:
        return [a for a in self.acts if a.name == "extract_content"]

    def fetches_of(self, slug: str) -> list[WebEntry]:
        return [f for f in self.fetches if f.slug == slug]

    def completed(self) -> Any:
        """The run's result; the run's own failure if it has none."""
        if self.failure is not None:
            raise self.failure
        return self.result

    def needed(self, check: str) -> Any:
        """For checks that only read this run: a failed run makes them 'not checked'."""
        if self.failure is not None:
            raise NotChecked(f"not checked: the {self.key} run did not complete ({self.failure.summary})")
        return self.result


@dataclass
class Kill:
    pid: int
    returncode: int | None
    at: float  # time.time()
    extracted: list[str]  # slugs whose extract_content had completed (seen just before the kill)
    running: list[str]  # pending extract_content attempts, as describe() showed them


@dataclass
class Cancel:
    at: float  # time.time() of the cancel request
    fetch: WebEntry | None = None  # the page's download, as the ledger saw it afterwards


@dataclass
class Scenario:
    runs: dict[str, Run]
    kill: Kill | None = None
    new_identities: set[str] = field(default_factory=set)
    old_identities: set[str] = field(default_factory=set)
    cancel: Cancel | None = None
    replay: ReplaySetVerdict | None = None
    failure: CheckFailed | None = None

    fanout = property(lambda self: self.runs["fanout"])
    hang = property(lambda self: self.runs["hang"])
    budget = property(lambda self: self.runs["budget"])
    cancelled = property(lambda self: self.runs["cancel"])
    crash = property(lambda self: self.runs["crash"])
    retry = property(lambda self: self.runs["retry"])

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the scenario did not run ({self.failure.summary})")
        return self


def make_runs(key: str) -> dict[str, Run]:
    def run(name: str, base: str, **request: Any) -> Run:
        marker = f"#{name[:2]}{key}"  # fa.., ha.., bu.., ca.., cr..: a word no page contains
        topic = f"{base} {marker}"
        pages = [d.slug for d in rank(CORPUS, topic, request.get("max_sources", 5))]
        return Run(name, f"research-{name}-{key}", topic, marker, {"topic": topic, **request}, pages)

    return {
        "fanout": run("fanout", "quantum error correction", max_sources=5, max_parallel=MAX_PARALLEL),
        "hang": run("hang", "durable execution", max_sources=4, max_parallel=MAX_PARALLEL),
        "budget": run("budget", "urban heat islands", max_sources=3, budget_usd=TINY_BUDGET,
                      max_parallel=MAX_PARALLEL),
        "cancel": run("cancel", "sourdough bread", max_sources=1, max_parallel=MAX_PARALLEL),
        "retry": run("retry", "fermentation", max_sources=1, max_parallel=MAX_PARALLEL),
        "crash": run("crash", "quantum error correction", max_sources=5, max_parallel=MAX_PARALLEL),
    }


def summarize_reply() -> str:
    rules = tomllib.loads(course.COURSE_TOML.read_text())["llm"]["rules"]
    return next(r["reply"] for r in rules if r["name"] == "lab05-summarize")


class Workers(WorkerHarness):
    """WorkerHarness whose workers are forked from a warm interpreter when a fork server runs."""

    def __init__(self, *args, forks: prefork.ForkServer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.forks = forks

    def start_worker(self) -> proc.ManagedProcess | prefork.Child:
        if self.forks is None:
            return super().start_worker()
        n = len(self.workers) + 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        worker = self.forks.start(self.target.module("worker"), [], name=f"worker{n}",
                                  log_path=self.workdir / f"worker{n}.log", env=self.env, cwd=self.workdir)
        self.workers.append(worker)
        return worker


class Lab05:
    def __init__(self, target, services, web, workdir: Path, key: str, forks: prefork.ForkServer | None):
        self.services, self.web, self.key = services, web, key
        self.a = Workers(target, services, workdir / "a", lab=LAB, key=f"a-{key}", wait_for_llm=False,
                         forks=forks, COURSE_WEB_URL=web.url_for(f"lab-a-{key}"))
        self.k = Workers(target, services, workdir / "k", lab=LAB, key=f"k-{key}", wait_for_llm=False,
                         forks=forks, COURSE_WEB_URL=web.url_for(f"lab-k-{key}"))
        self.replay: ReplaySet | None = None
        self.client: Client | None = None

    def caller(self, harness: WorkerHarness) -> str:
        return harness.api_key  # the course web's caller and the LLM's key are the same string

    def script(self, s: Scenario) -> None:
        """Every page's behaviour for this scenario's callers, and the LLM's one failure."""
        a, k = self.caller(self.a), self.caller(self.k)
        for slug, ms in zip(s.fanout.pages, FANOUT_SLOW_MS):
            self.web.set_behaviour(slug, caller=a, slow_ms=ms)
        for i, slug in enumerate(s.hang.pages):
            if i == 0:
                self.web.set_behaviour(slug, caller=a, hang_first=1)
            else:
                self.web.set_behaviour(slug, caller=a, slow_ms=HANG_OTHERS_MS)
        self.web.set_behaviour(s.budget.pages[1], caller=a, fail_first=1, fail_status=503)
        self.web.set_behaviour(s.cancelled.pages[0], caller=a, slow_ms=CANCEL_SLOW_MS)
        for slug, ms in zip(s.crash.pages, CRASH_SLOW_MS):
            self.web.set_behaviour(slug, caller=k, slow_ms=ms)
        self.services.llm.push_rules([{
            "name": f"lab05-fail-once-{self.key}",
            "match": r"\[lab05 summarize\][^\n]*" + re.escape(s.retry.marker),
            "fail_first": 1, "fail_status": 500, "reply": summarize_reply(),
        }])

    # --- watching one run ---

    async def problem(self, run: Run, history: WorkflowHistory | None = None) -> CheckFailed | None:
        """A failure that will not go away by waiting: a workflow task failure, a TODO reached."""
        history = history or await run.handle.fetch_history()
        found = await run.harness.workflow_task_failure(
            run.handle, "ResearchWorkflow.run searches, extracts the pages and summarizes", history)
        if found:
            return found
        for pending in await temporal.pending_activities(run.handle):
            if pending.last_failure and (todo := unfinished(pending.last_failure, LAB)):
                return todo
        return None

    async def finish(self, run: Run, timeout: float) -> None:
        """Wait for the run to close; record its result or why it has none. Never raises."""
        waiter = asyncio.ensure_future(run.handle.result())
        deadline = time.monotonic() + timeout
        try:
            while not waiter.done():
                if time.monotonic() > deadline:
                    raise asyncio.TimeoutError
                found = await self.problem(run)
                if found:
                    raise found
                await asyncio.wait({waiter}, timeout=1.0)  # a TODO or a broken task shows within 1 s
            run.result, run.status, run.finished_at = waiter.result(), "COMPLETED", time.time()
            for act in activities(await run.handle.fetch_history()):  # a TODO the workflow swallowed
                for message in (act.failure, act.previous_failure):
                    if todo := unfinished(message, LAB):
                        raise todo
        except WorkflowFailureError as err:
            run.finished_at = time.time()
            run.status = (await run.handle.describe()).status.name
            if run.key != "cancel" or run.status != "CANCELED":
                run.failure = await self.closed_badly(run, err)
        except asyncio.TimeoutError:
            run.status = "RUNNING"
            pending = await temporal.pending_activities(run.handle)
            run.failure = CheckFailed(
                f"The {run.key} run did not finish within {timeout:.0f} s",
                observed="still waiting on: " + ("; ".join(
                    f"{p.name} attempt {p.attempt} ({p.state.lower()})"
                    + (f", last failure: {p.last_failure[:80]}" if p.last_failure else "") for p in pending)
                    or "a workflow task"),
                expected="the run completes in a few seconds",
                revisit="Is an activity blocked? Without heartbeats and a heartbeat_timeout, a stalled download "
                        f"or a dead worker holds a page until its start_to_close_timeout ({START_TO_CLOSE_S:.0f} s).",
                details=tail(run.harness.workers[-1].output()))
        except CheckFailed as failure:
            run.status, run.failure = "STUCK", failure
        finally:
            waiter.cancel()

    async def closed_badly(self, run: Run, err: WorkflowFailureError) -> CheckFailed:
        cause = err.cause
        while getattr(cause, "cause", None) is not None:
            cause = cause.cause
        history = await run.handle.fetch_history()
        failed = [a for a in activities(history) if a.outcome != "completed"]
        return CheckFailed(
            f"The {run.key} run ended {run.status}: {str(cause or err).splitlines()[0][:200]}",
            observed="; ".join(f"{a.name}({a.slug or ''}) {a.outcome} on attempt {a.attempt}: {a.failure[:100]}"
                               for a in failed) or f"the workflow failed: {err}",
            expected="a ResearchResult; a page that cannot be read is left out, not a failed run",
            revisit="Catch the ActivityError of a page that ran out of attempts and carry on without it "
                    "(say so in the result's reason).",
            details=tail(run.harness.workers[-1].output()))

    # --- the crash ---

    async def crash(self, s: Scenario) -> None:
        run, harness = s.crash, self.k
        try:
            worker = harness.workers[0]
            deadline = time.monotonic() + REACH_KILL_S
            seen = "nothing yet"
            while True:
                if time.monotonic() > deadline:
                    raise CheckFailed(
                        f"The crash run never had pages extracted and others downloading within {REACH_KILL_S:.0f} s",
                        observed=seen, expected="2 quick pages extracted while the slow ones download",
                        revisit=REVISIT_FANOUT, details=tail(worker.output()))
                history = await run.handle.fetch_history()
                if hist.closure(history) is not None:
                    raise CheckFailed(
                        "The crash run finished before the worker could be killed in the middle of its fan-out",
                        observed=f"it ended {hist.closure(history).status} "
                                 f"{', '.join(f'{a.name}({a.slug})' for a in activities(history))}",
                        expected="5 pages to extract, three of them taking 1.5 s each")
                found = await self.problem(run, history)
                if found:
                    raise found
                done = [a for a in activities(history) if a.name == "extract_content" and a.outcome == "completed"]
                pending = [p for p in await temporal.pending_activities(run.handle)
                           if p.name == "extract_content" and p.state == "STARTED"]
                downloading = [f for f in self.fetches(harness) if f.outcome == "started"]
                seen = f"{len(done)} extracted, {len(pending)} extract_content running, {len(downloading)} downloading"
                # Not while the worker runs a workflow task: a task that dies with its worker is handed out
                # again only after its 10 s timeout, which has nothing to do with this lab.
                if len(done) >= 2 and pending and downloading and not await workflow_task_running(run.handle):
                    break
                await asyncio.sleep(0.05)
            worker.kill()  # the fault: SIGKILL, mid-fan-out
            s.kill = Kill(pid=worker.pid, returncode=worker.returncode, at=time.time(),
                          extracted=[a.slug for a in done],
                          running=[f"extract_content attempt {p.attempt}" for p in pending])
            await temporal.forget_sticky_queue(self.client, run.workflow_id)  # see docs/design.md
            fresh = harness.start_worker()
            s.new_identities = await harness.wait_polling(self.client, fresh, s.old_identities)
            await self.finish(run, FINISH_AFTER_KILL_S)
        except CheckFailed as failure:
            run.failure = failure

    # --- the cancellation ---

    async def cancel(self, s: Scenario) -> None:
        run, slug = s.cancelled, s.cancelled.pages[0]
        try:
            deadline = time.monotonic() + REACH_CANCEL_S
            while True:
                if time.monotonic() > deadline:
                    raise CheckFailed(f"The cancel run never started downloading its page within {REACH_CANCEL_S:.0f} s",
                                      observed=f"fetches of {slug}: {len(self.fetches(self.a, slug))}",
                                      expected="search, then extract_content downloads the page")
                history = await run.handle.fetch_history()
                if hist.closure(history) is not None:
                    raise CheckFailed("The cancel run finished before it could be cancelled",
                                      observed=f"it ended {hist.closure(history).status} at once",
                                      expected="a 20 s download to cancel")
                found = await self.problem(run, history)
                if found:
                    raise found
                fetches = self.fetches(self.a, slug)
                if fetches and fetches[-1].outcome == "started":
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a few chunks into the download
            s.cancel = Cancel(at=time.time())
            await run.handle.cancel()
            deadline = time.monotonic() + CANCEL_CLOSE_LIMIT_S + 2
            while time.monotonic() < deadline:
                fetch = self.fetches(self.a, slug)[-1]
                if fetch.outcome != "started":
                    break
                await asyncio.sleep(0.05)
            s.cancel.fetch = self.fetches(self.a, slug)[-1]
            await self.finish(run, 10)
        except CheckFailed as failure:
            run.failure = failure

    def fetches(self, harness: WorkerHarness, slug: str | None = None) -> list[WebEntry]:
        return self.web.ledger().fetches(caller=self.caller(harness), slug=slug)

    # --- evidence ---

    async def collect(self, s: Scenario) -> None:
        # The stalled download: give the worker until HANG_RELEASE_LIMIT_S to let go of it.
        stalled = self.fetches(self.a, s.hang.pages[0])
        if stalled:
            while (self.fetches(self.a, s.hang.pages[0])[0].outcome in ("hung", "started")
                   and time.time() < stalled[0].at + HANG_RELEASE_LIMIT_S):
                await asyncio.sleep(0.1)
        llm = self.services.llm.ledger()
        for run in s.runs.values():
            run.history = await run.handle.fetch_history()
            run.acts = activities(run.history)
            run.fetches = [f for f in self.fetches(run.harness) if f.slug in run.pages]
            run.llm_calls = [e for e in llm.entries(caller=run.harness.api_key) if run.marker in e.prompt]


async def run_scenario(lab: Lab05, s: Scenario) -> None:
    client = lab.client = await Client.connect(lab.services.temporal_address)
    worker_a, worker_k = lab.a.start_worker(), lab.k.start_worker()
    lab.script(s)  # the course LLM and the web answer by now; the workers are still starting
    for run in s.runs.values():
        run.harness = lab.k if run.key == "crash" else lab.a
    await lab.a.wait_polling(client, worker_a)
    s.old_identities = await lab.k.wait_polling(client, worker_k)
    # The replay process imports the workflow module while the runs run (not while the workers start).
    lab.replay = lab.a.replay = ReplaySet(root=lab.a.target.root, module=lab.a.target.module("workflows"))
    for run in s.runs.values():
        run.started_at = time.time()
        run.handle = await client.start_workflow("ResearchWorkflow", run.request, id=run.workflow_id,
                                                 task_queue=run.harness.task_queue)
    await asyncio.gather(lab.crash(s), lab.cancel(s),
                         *(lab.finish(s.runs[k], FINISH_S) for k in ("fanout", "hang", "budget", "retry")))
    await lab.collect(s)
    for worker in lab.a.workers + lab.k.workers:
        if worker.alive:
            worker.signal_tree(signal.SIGINT)  # they shut down gracefully while the replay runs
    s.replay = await asyncio.to_thread(lab.replay.verdict, {r.workflow_id: r.history for r in s.runs.values()})


@pytest.fixture(scope="module")
def forks(lab_target, tmp_path_factory):
    """A fork server for the workers, launched before the services so that both start at once."""
    server = None
    if prefork.enabled():
        server = prefork.ForkServer(tmp_path_factory.mktemp("lab05-forks"), PRELOAD, env=lab_target.python_env())
        server.launch()
    try:
        yield server
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def scenario(lab_target, web_launched, forks, services, web, tmp_path_factory) -> Scenario:
    if forks is not None:
        try:
            forks.wait_ready()
        except RuntimeError:  # only speed is lost: start each worker with a plain exec
            forks.stop()
            forks = None
    key = uuid.uuid4().hex[:6]
    workdir = tmp_path_factory.mktemp("lab05-run")
    lab = Lab05(lab_target, services, web, workdir, key, forks)
    found = Scenario(runs=make_runs(key))
    try:
        asyncio.run(run_scenario(lab, found))
    except CheckFailed as failure:
        found.failure = failure
    finally:
        lab.a.close()
        lab.k.close()
    return found


# --- the checks ------------------------------------------------------------------------------------

@pytest.mark.check("parallel-fan-out")
def test_extractions_run_in_parallel(scenario, evidence):
    """Given 5 pages (one 4 s, four 1 s) and max_parallel=3,
    When the fanout run extracts them,
    Then their extract_content activities overlap in time (history timestamps), and the fan-out takes
    about as long as the slowest page, not the sum of all of them."""
    s = scenario.require()
    run = s.fanout
    run.completed()
    extracts = run.extracts()
    clean = [a for a in extracts if a.outcome == "completed" and a.attempt == 1 and a.started_at]
    if len(clean) < 3:
        raise CheckFailed(
            f"Only {len(clean)} of the fanout run's pages were extracted on their first attempt",
            observed=", ".join(f"{a.slug} {a.outcome} (attempt {a.attempt})" for a in extracts) or "no extract_content",
            expected="one extract_content per page, each completing on attempt 1",
            revisit=REVISIT_FANOUT)
    wall = (max(a.closed_at for a in clean) - min(a.started_at for a in clean)).total_seconds()
    total = sum(a.seconds for a in clean)
    slowest = max(a.seconds for a in clean)
    overlap = max_overlap([(a.started_at, a.closed_at) for a in clean])
    evidence.update(fan_out=f"{wall:.1f}s", pages_sum=f"{total:.1f}s", slowest=f"{slowest:.1f}s", at_once=overlap)
    if overlap < 2 or wall > PARALLEL_RATIO * total:
        raise CheckFailed(
            "The pages were extracted one after another, not in parallel",
            observed=f"the fan-out took {wall:.1f} s for pages that took {total:.1f} s in all "
                     f"(the slowest {slowest:.1f} s); at most {overlap} extract_content ran at once",
            expected=f"about the slowest page's time (well under {PARALLEL_RATIO:.0%} of the sum), "
                     "with several extract_content activities running at once",
            revisit=REVISIT_FANOUT)


@pytest.mark.check("concurrency-cap")
def test_at_most_max_parallel_at_once(scenario, evidence):
    """Then no more than request.max_parallel (3) extract_content activities of the fanout run were
    running at any moment (history timestamps)."""
    s = scenario.require()
    s.fanout.needed("concurrency-cap")
    spans = [(a.started_at, a.closed_at) for a in s.fanout.extracts() if a.started_at and a.closed_at]
    most = max_overlap(spans)
    evidence["max_at_once"] = most
    if most > MAX_PARALLEL:
        raise CheckFailed(
            f"{most} extract_content activities ran at once; the request's max_parallel is {MAX_PARALLEL}",
            observed=f"{len(spans)} pages, {most} downloading at the same moment",
            expected=f"at most {MAX_PARALLEL} at a time (request.max_parallel), the others waiting their turn",
            revisit="Wrap each page's execute_activity in `async with slots:` where `slots = "
                    "asyncio.Semaphore(request.max_parallel)` is created in run(): the cap protects the sites "
                    "you read and your budget. (asyncio primitives are deterministic inside a workflow.)")


@pytest.mark.check("heartbeat-loop")
def test_slow_page_keeps_heartbeating(scenario, evidence):
    """Given a page that trickles in over 4 s, twice the 2 s heartbeat timeout,
    Then its extract_content completed on the first attempt: it heartbeat while bytes arrived."""
    s = scenario.require()
    run = s.fanout
    run.needed("heartbeat-loop")
    slow = run.pages[0]
    act = next((a for a in run.extracts() if a.slug == slow), None)
    if act is None:
        raise CheckFailed(f"No extract_content for the slow page {slow}",
                          observed=", ".join(a.slug for a in run.extracts()) or "none",
                          expected=f"one for each page the search returned: {', '.join(run.pages)}",
                          revisit=REVISIT_FANOUT)
    evidence["slow_page"] = f"{act.outcome}@{act.attempt}"
    timed_out = "heartbeat" in (act.failure_kind + act.previous_kind)
    if act.outcome != "completed" or act.attempt != 1:
        raise CheckFailed(
            f"The slow page {slow} " + ("timed out on its heartbeat although it was downloading all along"
                                        if timed_out else "did not complete on its first attempt"),
            observed=f"extract_content({slow}) {act.outcome} on attempt {act.attempt}"
                     + (f"; attempt {act.attempt - 1}: {act.previous_kind or act.previous_failure[:80]}"
                        if act.previous_failure else "")
                     + (f"; last: {act.failure_kind or act.failure[:80]}" if act.failure else ""),
            expected="completed on attempt 1: bytes arrived every 0.1 s for 4 s, and each chunk is progress",
            revisit=REVISIT_HEARTBEAT)


@pytest.mark.check("hang-detected")
def test_hung_page_abandoned_and_retried(scenario, evidence):
    """Given a page whose first fetch sends half the page and then stalls,
    Then the stalled attempt is given up after about the heartbeat timeout, the page is fetched again
    and extracted on attempt 2, the worker closes the stalled connection, and the run completes far
    sooner than the 60 s start_to_close_timeout would allow."""
    s = scenario.require()
    run = s.hang
    slug = run.pages[0]
    fetches = run.fetches_of(slug)
    if run.failure is not None and run.status == "RUNNING":
        first = fetches[0] if fetches else None
        raise CheckFailed(
            "The stalled page was never given up: the hang run was still waiting when the check stopped",
            observed=(f"{slug}: fetched {len(fetches)} time(s); the first stalled at {ts(first.at)}"
                      if first else f"{slug} was never fetched") + f"; {run.failure.observed}",
            expected=f"a new attempt about {HEARTBEAT_S:.0f} s (the heartbeat timeout) + 1 s (the retry backoff) "
                     "after the stall",
            revisit="Give extract_content a heartbeat_timeout (2 s) and heartbeat per chunk: when the chunks stop, "
                    "the heartbeats stop, and Temporal retries the page instead of waiting for start_to_close. "
                    + REVISIT_HEARTBEAT)
    run.completed()
    act = next((a for a in run.extracts() if a.slug == slug), None)
    if len(fetches) < 2 or act is None:
        raise CheckFailed(
            f"The stalled page {slug} was not fetched again",
            observed=f"{len(fetches)} fetch(es) of {slug}; extract_content: "
                     + (f"{act.outcome} on attempt {act.attempt}" if act else "never scheduled"),
            expected="the stalled attempt given up, and a second attempt that downloads the page",
            revisit="A stalled download must fail the attempt (heartbeat timeout) so that Temporal retries it. "
                    + REVISIT_HEARTBEAT)
    first, second = fetches[0], fetches[1]
    retry_after = second.at - first.at
    evidence.update(retry_after=f"{retry_after:.1f}s", attempt=act.attempt,
                    run_took=f"{(run.finished_at or 0) - run.started_at:.1f}s")
    if retry_after > HANG_RETRY_LIMIT_S:
        raise CheckFailed(
            f"The stalled page was retried only {retry_after:.1f} s after it stalled",
            observed=f"first fetch of {slug} at {ts(first.at)}, the next at {ts(second.at)}; attempt "
                     f"{act.attempt - 1} ended: {act.previous_kind or '?'} ({act.previous_failure[:80]})",
            expected=f"within {HANG_RETRY_LIMIT_S:.0f} s: heartbeat_timeout {HEARTBEAT_S:.0f} s + the 1 s backoff",
            revisit="Set heartbeat_timeout=timedelta(seconds=2) on extract_content and heartbeat per chunk; then the "
                    "server gives up on a silent attempt after 2 s. A read timeout alone (httpx's default is 5 s) "
                    "notices a stall later, and never notices a dead worker.")
    if act.outcome != "completed" or act.attempt < 2:
        raise CheckFailed(
            f"The stalled page's extract_content {act.outcome} on attempt {act.attempt}",
            observed=f"{act.failure_kind} {act.failure[:120]}", expected="completed on attempt 2",
            revisit=REVISIT_HEARTBEAT)
    released = (first.finished_at or math.inf) - first.at
    evidence["released_after"] = f"{released:.1f}s" if released != math.inf else "never"
    if released > HANG_RELEASE_LIMIT_S:
        raise CheckFailed(
            "Your worker kept the stalled download open after Temporal had given up on it",
            observed=f"the stalled connection to {slug} "
                     + (f"closed {released:.1f} s after it opened" if first.finished_at else
                        "was still open when the run ended (it closed only when the worker stopped)"),
            expected=f"closed within {HANG_RELEASE_LIMIT_S:.0f} s, when the attempt is given up",
            revisit="The server gave up on the attempt, but your worker still ran it. The SDK cancels a silent "
                    "attempt itself about 5 s after its heartbeat timeout: let asyncio.CancelledError propagate "
                    "(no bare `except:`, no asyncio.shield) so `async with` closes the connection. Better, give up "
                    "sooner: read with a timeout as long as the heartbeat timeout (`httpx.Timeout(10, "
                    "read=activity.info().heartbeat_timeout.total_seconds())`).")


@pytest.mark.check("cancellation-honoured")
def test_cancelled_download_stops(scenario, evidence):
    """Given the cancel run downloading a 20 s page,
    When the workflow is cancelled,
    Then the activity stops: the page's connection closes within a few seconds, and the run ends."""
    s = scenario.require()
    run = s.cancelled
    if s.cancel is None:
        raise run.failure or NotChecked("not checked: the cancel run never reached its download")
    fetch = s.cancel.fetch
    waited = (fetch.finished_at - s.cancel.at) if fetch and fetch.finished_at else math.inf
    evidence["closed_after"] = f"{waited:.1f}s" if waited != math.inf else "never"
    if fetch is None or fetch.outcome == "complete" or waited > CANCEL_CLOSE_LIMIT_S:
        raise CheckFailed(
            "The download went on after the workflow was cancelled",
            observed=f"cancel requested at {ts(s.cancel.at)}; the page's connection "
                     + ("downloaded to the end" if fetch and fetch.outcome == "complete" else
                        f"closed at {ts(fetch.finished_at)}" if fetch and fetch.finished_at else "was still open"),
            expected=f"closed within {CANCEL_CLOSE_LIMIT_S:.0f} s: the cancellation reaches the activity with its "
                     "next heartbeat, as CancelledError",
            revisit="Let asyncio.CancelledError propagate out of extract_content (no bare `except:`, no `except "
                    "BaseException`, no asyncio.shield around the download); `async with` closes the connection "
                    "on the way out. An activity only learns of a cancellation when it heartbeats.")
    if run.failure is not None:
        raise run.failure
    evidence["status"] = run.status


@pytest.mark.check("crash-mid-fan-out")
def test_crash_mid_fan_out_resumes(scenario, evidence):
    """Given worker K SIGKILLed after 2 pages were extracted while others downloaded,
    When a new worker starts,
    Then the crash run completes there: the kill really happened in the middle of the fan-out."""
    s = scenario.require()
    run = s.crash
    if s.kill is None:
        raise run.failure or NotChecked("not checked: the worker was never killed")
    evidence.update(killed_pid=s.kill.pid, restarts=1, extracted_before=len(s.kill.extracted))
    if s.kill.returncode != -9:
        raise CheckFailed("The worker was not killed by SIGKILL", observed=f"exit status {s.kill.returncode}",
                          expected="-9 (SIGKILL)")
    run.completed()
    done_before = [a for a in run.extracts() if a.outcome == "completed" and a.closed_at
                   and a.closed_at.timestamp() < s.kill.at]
    open_at_kill = [f for f in run.fetches if f.at < s.kill.at and f.outcome != "complete"]
    if not done_before or not open_at_kill:
        raise CheckFailed(
            "The kill did not land in the middle of the fan-out",
            observed=f"{len(done_before)} page(s) extracted before the kill, {len(open_at_kill)} download(s) cut off",
            expected="some pages extracted and others still downloading when the worker died")
    summarize = [a for a in run.acts if a.name == "llm_summarize"]
    if not summarize or summarize[-1].identity not in s.new_identities:
        raise CheckFailed(
            "The crash run was not finished by the new worker",
            observed=f"llm_summarize ran on {summarize[-1].identity if summarize else 'nobody'}",
            expected=f"the worker started after the kill: {sorted(s.new_identities)}")
    evidence["cut_off"] = len(open_at_kill)


@pytest.mark.check("no-refetch-after-crash")
def test_extracted_pages_not_fetched_again(scenario, evidence):
    """Then, in the web's fetch ledger, every page whose extract_content had completed before the kill
    was fetched exactly once, and every other page was fetched again after the restart."""
    s = scenario.require()
    run = s.crash
    if s.kill is None or run.failure is not None:
        raise NotChecked("not checked: the crash run did not complete after the kill"
                         + (f" ({run.failure.summary})" if run.failure else ""))
    recorded = {a.slug for a in run.extracts() if a.outcome == "completed" and a.closed_at
                and a.closed_at.timestamp() < s.kill.at}
    counts = {slug: len(run.fetches_of(slug)) for slug in run.pages}
    evidence["fetches"] = ",".join(str(counts[p]) for p in run.pages)
    again = {slug: n for slug, n in counts.items() if slug in recorded and n != 1}
    if again:
        raise CheckFailed(
            "Pages extracted before the crash were downloaded again after it",
            observed="; ".join(f"{slug}: {n} fetches" for slug, n in again.items()),
            expected="1 fetch each: their results are in the history, and the new worker replays them",
            revisit="Each page must be its own activity (execute_activity per URL), so its result is recorded "
                    "as soon as it completes. §64.2.1: a crash costs only the steps still in flight.")
    missing = [slug for slug in run.pages if slug not in recorded
               and not any(f.at >= s.kill.at and f.outcome == "complete" for f in run.fetches_of(slug))]
    if missing:
        raise CheckFailed(
            "Pages that were not extracted before the crash were not downloaded after it",
            observed=", ".join(f"{slug} ({counts[slug]} fetch(es), none complete after the kill)" for slug in missing),
            expected="every page not yet recorded downloaded by the new worker",
            revisit="After the restart the new worker retries the interrupted activities (once their heartbeat "
                    "timeout shows the old worker is gone) and schedules the ones not started yet.")


@pytest.mark.check("llm-called-once")
def test_llm_called_once_despite_crash(scenario, evidence):
    """Then the course LLM's ledger holds exactly one summarize request for the crash run."""
    s = scenario.require()
    run = s.crash
    run.needed("llm-called-once")
    calls = run.llm_calls
    evidence["llm_calls"] = len(calls)
    if len(calls) != 1:
        raise CheckFailed(
            f"The crash run called the LLM {len(calls)} times",
            observed="; ".join(f"{ts(c.at)} status {c.status}" for c in calls) or "no request with its topic",
            expected="exactly 1: the summary, after every page is in",
            revisit="llm_summarize runs once, after the fan-in; its prompt carries the topic "
                    "(models.summary_messages). Use the openai client with max_retries=0.")


@pytest.mark.check("budget-enforced")
def test_tiny_budget_gives_partial_result(scenario, evidence):
    """Given budget_usd = $0.00005, less than any summarize call over these pages costs,
    Then the result is partial and says the budget is why, total_cost is within the budget, and the LLM
    ledger shows no more spending than that."""
    s = scenario.require()
    run = s.budget
    result = run.completed()
    spent = sum(price_of(e) for e in run.llm_calls)
    total = field_of(result, "total_cost", None)
    partial, reason = field_of(result, "partial", None), str(field_of(result, "reason", "") or "")
    evidence.update(spent=f"${spent:.6f}", budget=f"${TINY_BUDGET:.5f}", llm_calls=len(run.llm_calls))
    if spent > TINY_BUDGET:
        raise CheckFailed(
            f"The run spent ${spent:.6f} on the LLM with a budget of ${TINY_BUDGET:.5f}",
            observed=f"{len(run.llm_calls)} summarize request(s) in the LLM's ledger; result total_cost={total}",
            expected="no call that could cost more than what is left of the budget",
            revisit="Before calling llm_summarize, price its worst case in the workflow "
                    "(models.estimate_summary_cost: the prompt plus SUMMARY_MAX_TOKENS of reply) and compare it "
                    "with budget_usd minus what was spent. If it does not fit, drop sources or skip the call.")
    if partial is not True or "budget" not in reason.lower():
        raise CheckFailed(
            "The result does not say it is partial because of the budget",
            observed=f"partial={partial!r}, reason={reason!r}",
            expected="partial=True and a reason that names the budget",
            revisit="Return ResearchResult(..., partial=True, reason=\"budget: ...\"): stopping is a result, not "
                    "an error, and the caller must be able to tell.")
    if not isinstance(total, (int, float)) or total > TINY_BUDGET + 1e-12 or not math.isclose(
            total, spent, rel_tol=COST_REL_TOLERANCE, abs_tol=1e-12):
        raise CheckFailed(
            "total_cost does not match what was spent",
            observed=f"total_cost={total!r}; the LLM ledger implies ${spent:.8f}",
            expected=f"the cost of the calls made (within the ${TINY_BUDGET:.5f} budget)",
            revisit="Add up each llm_summarize call's cost (from its token usage) in the workflow.")


@pytest.mark.check("cost-from-usage")
def test_total_cost_matches_llm_usage(scenario, evidence):
    """Given the normal budget ($2.00),
    Then each run's total_cost equals what the LLM ledger's token usage implies at the lab's prices
    (a request that failed costs nothing)."""
    s = scenario.require()
    checked = []
    for run in (s.fanout, s.hang, s.crash, s.retry):
        result = run.needed("cost-from-usage")
        spent = sum(price_of(e) for e in run.llm_calls)
        total = field_of(result, "total_cost", None)
        checked.append(f"{run.key}=${spent:.6f}")
        if not isinstance(total, (int, float)) or not math.isclose(total, spent, rel_tol=COST_REL_TOLERANCE,
                                                                      abs_tol=1e-12):
            ok = [e for e in run.llm_calls if e.status == 200]
            raise CheckFailed(
                f"The {run.key} run's total_cost is {total!r}, but its LLM usage costs ${spent:.8f}",
                observed=f"{len(run.llm_calls)} request(s), {len(ok)} answered; usage priced at "
                         f"{PRICES_PER_MILLION.get(ok[0].model if ok else 'gpt-4o-mini')} $ per million tokens "
                         "(prompt, completion)" if ok else "no answered LLM request",
                expected="total_cost = sum over the answered calls of (prompt_tokens x prompt price + "
                         "completion_tokens x completion price) / 1,000,000",
                revisit="Compute the cost in llm_summarize from response.usage (prompt_tokens, completion_tokens) "
                        "and models.PRICES_PER_MILLION, return it with the text, and add it up in the workflow. "
                        "§64.2.1's `total_cost=0.0  # Tracked via gateway` is exactly what the budget cannot use.")
    evidence["cost"] = " ".join(checked)


@pytest.mark.check("temporal-owns-retries")
def test_failures_visible_to_temporal(scenario, evidence):
    """Given one page that answers 503 once (budget run) and an LLM that answers 500 once (retry run),
    Then each failure is a failed attempt in the history (the activity completed on attempt 2), not a
    retry hidden inside the activity."""
    s = scenario.require()
    budget = s.budget
    budget.needed("temporal-owns-retries")
    slug = budget.pages[1]
    act = next((a for a in budget.extracts() if a.slug == slug), None)
    fetches = budget.fetches_of(slug)
    if act is None or act.outcome != "completed" or act.attempt != 2:
        hidden = act is not None and act.attempt == 1 and len(fetches) >= 2
        raise CheckFailed(
            ("The 503 was retried inside extract_content, so Temporal never saw it" if hidden else
             f"The page that failed once ({slug}) did not complete on attempt 2"),
            observed=f"{len(fetches)} fetch(es) ({', '.join(str(f.status) for f in fetches)}); extract_content "
                     + (f"{act.outcome} on attempt {act.attempt}" if act else "never scheduled"),
            expected="attempt 1 fails with the 503 (response.raise_for_status()), attempt 2 completes",
            revisit="Let the activity fail and Temporal retry it: no retry loop or retrying transport in the "
                    "activity, so every failure is in the history, with its backoff, where you can see it.")
    retried = s.retry
    retried.needed("temporal-owns-retries")
    summarize = [a for a in retried.acts if a.name == "llm_summarize"]
    statuses = [c.status for c in retried.llm_calls]
    evidence.update(page_attempts=act.attempt, llm_attempts=summarize[-1].attempt if summarize else 0)
    if not summarize or summarize[-1].attempt != 2 or statuses != [500, 200]:
        hidden = summarize and summarize[-1].attempt == 1 and statuses[:1] == [500]
        raise CheckFailed(
            ("The LLM's 500 was retried inside llm_summarize (the openai client's own retries), so Temporal "
             "never saw it" if hidden else "llm_summarize did not fail once and complete on attempt 2"),
            observed=f"LLM answers: {statuses}; llm_summarize "
                     + (f"{summarize[-1].outcome} on attempt {summarize[-1].attempt}" if summarize else "never ran"),
            expected="[500, 200], and llm_summarize completed on attempt 2 after the 2 s backoff",
            revisit="Create the client as AsyncOpenAI(max_retries=0): it retries twice by default, which hides "
                    "failures from the history and multiplies attempts (5 x 3 requests in the worst case).")


@pytest.mark.check("retry-policy")
def test_retry_policies_and_timeouts(scenario, evidence):
    """Then the activities were scheduled with the text's retry policies (search 3 attempts, extract 2,
    summarize 5 with 2 s x2.0 backoff), start_to_close timeouts, and extract_content with a 2 s
    heartbeat_timeout."""
    s = scenario.require()
    run = s.fanout
    run.needed("retry-policy")
    seen = {}
    for act in run.acts:
        seen.setdefault(act.name, act)
    for name, expected in EXPECTED_POLICY.items():
        act = seen.get(name)
        if act is None:
            raise CheckFailed(f"No {name} activity in the fanout run's history",
                              observed=", ".join(seen) or "no activities", expected=", ".join(EXPECTED_POLICY))
        got = {k: act.retry_policy[k] for k in expected}
        if got != expected:
            raise CheckFailed(
                f"{name} was scheduled with a different retry policy",
                observed=", ".join(f"{k}={v:g}" for k, v in got.items()) + "  (0 means unlimited)",
                expected=", ".join(f"{k}={v:g}" for k, v in expected.items()),
                revisit="RetryPolicy lives in temporalio.common; §64.2.1 gives search_web maximum_attempts=3, "
                        "extract_content maximum_attempts=2, llm_summarize maximum_attempts=5 with "
                        "initial_interval=timedelta(seconds=2) and backoff_coefficient=2.0.")
        if not act.start_to_close_s:
            raise CheckFailed(f"{name} has no start_to_close_timeout", observed="none",
                              expected="a start_to_close_timeout on every activity",
                              revisit="Without it a stuck attempt is never retried.")
    extract = seen["extract_content"]
    evidence.update(heartbeat=f"{extract.heartbeat_s or 0:g}s", extract_timeout=f"{extract.start_to_close_s or 0:g}s")
    if extract.heartbeat_s != HEARTBEAT_S:
        raise CheckFailed(
            "extract_content was scheduled " + (f"with a {extract.heartbeat_s:g} s heartbeat_timeout"
                                                if extract.heartbeat_s else "without a heartbeat_timeout"),
            observed=f"heartbeat_timeout={extract.heartbeat_s or 0:g} s, start_to_close={extract.start_to_close_s:g} s",
            expected=f"heartbeat_timeout=timedelta(seconds={HEARTBEAT_S:g})",
            revisit="Heartbeats are only checked when the activity has a heartbeat_timeout: without one, a "
                    f"stalled download or a dead worker holds the page for start_to_close ({START_TO_CLOSE_S:g} s). "
                    "The text's 15 s works too in production; the lab uses 2 s so the check can watch it.")


@pytest.mark.check("history-replays")
def test_histories_replay(scenario, evidence):
    """Then every recorded history (the crashed run's included) replays against the workflow code."""
    s = scenario.require()
    s.fanout.needed("history-replays")
    verdict = s.replay
    if verdict is None:
        raise NotChecked("not checked: the replay did not run")
    evidence["replayed"] = len(verdict.results) if verdict.ok else "no"
    if not verdict.ok:
        failures = verdict.failures()
        raise CheckFailed(
            "A recorded history does not replay against your workflow code",
            observed="; ".join(f"{wid}: {err[:200]}" for wid, err in failures.items()) or verdict.error,
            expected="the same decisions on replay: search, the page activities in the same order, the summary",
            revisit="Workflow code is replayed after a crash: no wall-clock time, randomness, I/O or reading "
                    "files in it. Budget arithmetic and asyncio.gather/Semaphore are fine; the order the "
                    "activities complete in comes from the history.",
            details=verdict.detail)
