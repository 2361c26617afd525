"""Lab 05 autograder: a research agent that fans out for real, notices a stalled page, survives a
crash mid-fan-out, gives up on a page that never answers, and stays within its budget.

Scenario, run once for the module against fresh real servers: the Temporal dev server, the course
LLM and the course web (labkit.web, with each page's behaviour scripted and every fetch in its
ledger). Seven ResearchWorkflow runs at once, on two of the student's workers (real processes):
  fanout  worker A, max_parallel=2. 5 pages; the first is *held*: it trickles a byte at a time until the
          server has recorded a heartbeat later than the attempt's start plus the heartbeat timeout.
  hang    worker A, max_parallel=3. 4 pages: the first fetch of one sends a chunk and then stalls until the
          client lets go; another answers 503 to every fetch (it runs out of attempts).
  budget  worker A. 3 pages, one answers 503 once; a budget that fits a summary of 2 of them, not 3.
  cancel  worker A. 1 held page; the workflow is cancelled once the download is heartbeating.
  retry   worker A. 1 page; the LLM answers its first summarize request with HTTP 500.
  crash   worker K, max_parallel=4. 5 pages: two quick, three held. Once two are extracted and the held
          ones are downloading, worker K is SIGKILLed, the held pages are released, a new worker starts.
  tiny    worker K (the one started after the kill). 3 pages; a budget too small for any summarize call.
The heartbeat timeout is the check's to choose (ResearchRequest.heartbeat_timeout_s): a multiple of how
long this machine took to start the workers, so that a healthy activity's heartbeats (every 0.5 s) stay
far inside it on a slow machine too. No verdict compares a duration with a threshold that a slower
machine could cross: faults last until the state they must produce is seen (a held page until the
heartbeats passed the timeout, a stalled page until the client lets go), and waits are for states in
the history, the web's ledger and the attempts the workers record; deadlines only end a wait that a
wrong program never ends.
Each check below reads its evidence from outside the student's processes: the Temporal history
(activities, attempts, failures, retry policies), every attempt the workers ran (labkit.attribution),
the course web's fetch ledger, the course LLM's ledger (prompts, replies, token usage), and a replay of
every recorded history in a separate process.
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
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowHistory

from labkit import course, prefork, proc, temporal
from labkit import history as hist
from labkit.feedback import CheckFailed, NotChecked, tail, unfinished
from labkit.harness import WorkerHarness
from labkit.llm import LedgerEntry
from labkit.replays import ReplaySet, ReplaySetVerdict
from labkit.web import DEFAULT_CORPUS, WebEntry, load_corpus, rank
from scenario_lab05_research_fanout import EXPECTED_POLICY, PRELOAD, Act, activities, slug_of

LAB = "05"
PRICES_PER_MILLION = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}  # as in the lab's models.py
SUMMARY_MAX_TOKENS = 300  # as in the lab's models.py: the worst-case reply a budget allows for
TINY_BUDGET = 0.00005  # US dollars: less than any summarize call over these pages costs
BUDGET_FITS = 2  # the budget run's budget fits a summary of this many of its 3 sources, not one more
FANOUT_CAP, HANG_CAP, CRASH_CAP = 2, 3, 4  # max_parallel of the runs: a constant cannot fit them all
START_TO_CLOSE_S = 60.0  # the text's extract_content timeout: what a hang would cost without heartbeats

# The heartbeat timeout the check asks for: HEARTBEAT_PER_STARTUP x the slower worker's start (from its
# launch to its first poll: imports, connecting, CPU), within [HEARTBEAT_MIN_S, HEARTBEAT_MAX_S]. The SDK
# sends heartbeats every 0.5 s (the course's worker.py), so a timeout of 3 s or more leaves a healthy
# download 2.5 s of lateness; on a machine that started the workers slowly it is longer (the runs' deadlines
# grow with it). Measured: /work/team/notes/lab05.md (startup under 0.75 s idle, 1.9 s at load 6, 3.8-5.6 s
# at a quarter core).
HEARTBEAT_MIN_S, HEARTBEAT_MAX_S, HEARTBEAT_PER_STARTUP = 3.0, 30.0, 4.0

# The scripted web (ms per page, in the search's rank order). "hold": trickles until released.
HOLD_CHUNK_MS = 500  # a held page sends a byte every 0.5 s: progress, for as long as it is held
QUICK_MS = 300
CRASH_QUICK_MS = 150

# Deadlines: they end waits that a wrong program never ends; a right one ends them long before.


def finish_s(heartbeat_s: float) -> float:
    """Each run's deadline, from its start: a hang guard, far above what the slowest run needs (the crash run:
    reaching the kill, one heartbeat timeout, the backoff, the downloads and the summary). No verdict of a
    variant depends on it: a missing heartbeat_timeout is read from the history."""
    return 45.0 + 4 * heartbeat_s


def release_limit_s(heartbeat_s: float) -> float:
    """How long the worker may keep a stalled connection open after opening it: a read timeout as long as the
    heartbeat timeout closes it then; without one, the SDK cancels the silent attempt about 5 s after its
    heartbeat timeout (measured: 7 s after the last heartbeat with a 2 s timeout) and an activity that lets
    CancelledError through closes it then. Twice that, for a slow machine."""
    return 2 * (heartbeat_s + 6.0)


def cancel_limit_s(heartbeat_s: float) -> float:
    """How long after the cancel request the download's connection may stay open: the cancellation reaches the
    activity with the answer to its next heartbeat (sent every 0.5 s), far inside the heartbeat timeout."""
    return 2 * heartbeat_s + 5.0


CORPUS, _ = load_corpus([DEFAULT_CORPUS])

REVISIT_FANOUT = ("§64.2.1's Step 2 says \"(parallel)\" but awaits each page inside the loop, so the pages "
                  "download one after another. Start every page's activity first (a coroutine or task per "
                  "URL), then wait for all of them: `await asyncio.gather(*(extract(u) for u in urls))`; "
                  "an asyncio.Semaphore(request.max_parallel) inside `extract` caps how many run at once.")
REVISIT_HEARTBEAT = ("A heartbeat says \"still making progress\". Call activity.heartbeat(...) inside the loop "
                     "that receives the page (each chunk from `response.aiter_bytes()`), not once before the "
                     "download: Temporal gives up on an attempt whose heartbeats stop for heartbeat_timeout.")
REVISIT_CAP = ("Wrap each page's execute_activity in `async with slots:` where `slots = "
               "asyncio.Semaphore(request.max_parallel)` is created in run(): the cap belongs to the workflow, "
               "and its value to the request (asyncio primitives are deterministic inside a workflow).")


async def workflow_task_running(handle: WorkflowHandle) -> bool:
    """True while a worker holds a workflow task of this run (started, not completed)."""
    from temporalio.api.enums.v1 import PendingWorkflowTaskState

    description = (await handle.describe()).raw_description
    return (description.HasField("pending_workflow_task") and description.pending_workflow_task.state
            == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED)


def peak_in_flight(history: WorkflowHistory, name: str = "extract_content") -> int:
    """The most `name` activities the workflow had scheduled and not yet closed, at any point of its history.
    Event order, not timestamps: the same on any machine."""
    open_ids: set[int] = set()
    most = 0
    for event in history.events:
        kind = hist.kind(event)
        if kind == "ACTIVITY_TASK_SCHEDULED":
            if event.activity_task_scheduled_event_attributes.activity_type.name == name:
                open_ids.add(event.event_id)
                most = max(most, len(open_ids))
        elif kind in ("ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
                      "ACTIVITY_TASK_CANCELED"):
            open_ids.discard(getattr(event, kind.lower() + "_event_attributes").scheduled_event_id)
    return most


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
    """What one answered request cost: the usage the course LLM billed for it (its ledger), at the lab's prices."""
    if entry.status != 200 or not entry.usage:
        return 0.0
    per_prompt, per_completion = PRICES_PER_MILLION.get(entry.model or "gpt-4o-mini", (math.nan, math.nan))
    return (entry.usage["prompt_tokens"] * per_prompt + entry.usage["completion_tokens"] * per_completion) / 1_000_000


def estimate_tokens(text: str) -> int:
    """models.estimate_tokens: the lab's cautious estimate (the check prices the budget run with it)."""
    return math.ceil(len(text) / 4) + 4


def worst_case(topic: str, texts: list[str]) -> float:
    """models.estimate_summary_cost over these texts: what the workflow must compare with its budget."""
    system = "Summarize the following sources in one paragraph."
    user = f"[lab05 summarize] Topic: {topic}\n\nSources:\n" + "\n---\n".join(texts)
    per_prompt, per_completion = PRICES_PER_MILLION["gpt-4o-mini"]
    return ((estimate_tokens(system) + estimate_tokens(user)) * per_prompt
            + SUMMARY_MAX_TOKENS * per_completion) / 1_000_000


def page_text(slug: str) -> str:
    """A page's text as a download gives it (decoded, stripped)."""
    return CORPUS[slug].text.strip()


def prompt_sources(entry: LedgerEntry) -> list[str]:
    """The source texts a summarize request carried, in order (models.summary_messages' layout)."""
    messages = entry.request.get("messages") or []
    user = next((str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user"), "")
    _, _, body = user.partition("\n\nSources:\n")
    return [part.strip() for part in body.split("\n---\n")] if body else []


def ts(at: float | datetime | None) -> str:
    if at is None:
        return "-"
    if isinstance(at, datetime):
        at = at.timestamp()
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]


# --- the scenario ----------------------------------------------------------------------------------

@dataclass
class Run:
    key: str  # fanout | hang | budget | cancel | retry | crash | tiny
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
    attempts: list[Any] = field(default_factory=list)  # every extract_content attempt its workers ran

    @property
    def cap(self) -> int:
        return int(self.request.get("max_parallel", 3))

    def extracts(self) -> list[Act]:
        return [a for a in self.acts if a.name == "extract_content"]

    def act_of(self, slug: str) -> Act | None:
        return next((a for a in self.extracts() if slug in map(slug_of, a.pages)), None)

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
    at: float | None  # time.time() of the cancel request; None: not sent, the download never heartbeat
    opened_at: float = 0.0  # the download's fetch, as the ledger saw it before the cancel
    fetch: WebEntry | None = None  # the same fetch, as the ledger saw it afterwards
    seen: str = ""  # what the check saw of the activity before the cancel


@dataclass
class Held:
    """The fanout run's held page: what the server showed of its first attempt while it trickled."""

    slug: str
    released_because: str = ""
    beat_past_timeout: bool = False  # a heartbeat recorded later than the attempt's start + the timeout
    first_started: datetime | None = None
    last_heartbeat: datetime | None = None


@dataclass
class Scenario:
    runs: dict[str, Run]
    heartbeat_s: float = 0.0
    startup_s: float = 0.0
    kill: Kill | None = None
    new_identities: set[str] = field(default_factory=set)
    old_identities: set[str] = field(default_factory=set)
    cancel: Cancel | None = None
    held: Held | None = None
    stall_closed_at: float | None = None  # when the hang page's stalled connection closed
    stall_heartbeat: bool = False  # the server recorded a heartbeat of the stalled page's first attempt
    replay: ReplaySetVerdict | None = None
    failure: CheckFailed | None = None

    fanout = property(lambda self: self.runs["fanout"])
    hang = property(lambda self: self.runs["hang"])
    budget = property(lambda self: self.runs["budget"])
    cancelled = property(lambda self: self.runs["cancel"])
    crash = property(lambda self: self.runs["crash"])
    retry = property(lambda self: self.runs["retry"])
    tiny = property(lambda self: self.runs["tiny"])

    def require(self) -> Scenario:
        if self.failure is not None:
            raise NotChecked(f"not checked: the scenario did not run ({self.failure.summary})")
        return self


def budget_for(topic: str, pages: list[str], fits: int) -> float:
    """A budget between the worst case of a summary of the first `fits` pages and that of one page more."""
    low = worst_case(topic, [page_text(s) for s in pages[:fits]])
    high = worst_case(topic, [page_text(s) for s in pages[:fits + 1]])
    return round((low + high) / 2, 9)


def make_runs(key: str) -> dict[str, Run]:
    def run(name: str, base: str, **request: Any) -> Run:
        marker = f"#{name[:2]}{key}"  # fa.., ha.., bu.., ca.., re.., cr.., ti..: a word no page contains
        topic = f"{base} {marker}"
        pages = [d.slug for d in rank(CORPUS, topic, request.get("max_sources", 5))]
        return Run(name, f"research-{name}-{key}", topic, marker, {"topic": topic, **request}, pages)

    runs = {
        "fanout": run("fanout", "quantum error correction", max_sources=5, max_parallel=FANOUT_CAP),
        "hang": run("hang", "durable execution", max_sources=4, max_parallel=HANG_CAP),
        "budget": run("budget", "urban heat islands", max_sources=3, max_parallel=3),
        "cancel": run("cancel", "sourdough bread", max_sources=1, max_parallel=3),
        "retry": run("retry", "fermentation", max_sources=1, max_parallel=3),
        "crash": run("crash", "quantum error correction", max_sources=5, max_parallel=CRASH_CAP),
        "tiny": run("tiny", "urban heat islands", max_sources=3, budget_usd=TINY_BUDGET, max_parallel=3),
    }
    budget = runs["budget"]
    budget.request["budget_usd"] = budget_for(budget.topic, budget.pages, BUDGET_FITS)
    return runs


def pages_read(run: Run) -> list[str]:
    """The run's pages whose extract_content completed, in rank order."""
    return [p for p in run.pages if (a := run.act_of(p)) is not None and a.outcome == "completed"]


def fits(run: Run, read: list[str]) -> int:
    """How many of the pages read (from the first) a summary's worst case fits in the run's budget."""
    budget = float(run.request.get("budget_usd", 2.0))
    n = len(read)
    while n and worst_case(run.topic, [page_text(p) for p in read[:n]]) > budget:
        n -= 1
    return n


def expected_sources(run: Run) -> list[str]:
    """The slugs whose text must go into the run's summary, in rank order: the pages read, as many as fit."""
    read = pages_read(run)
    return read[:fits(run, read)]


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
        cwd, env = self.next_host()  # as on a host of its own: a fresh working directory, TMPDIR, HOME
        worker = self.forks.start(self.target.module("worker"), [], name=f"worker{n}",
                                  log_path=self.workdir / f"worker{n}.log", env=env, cwd=cwd)
        self.workers.append(worker)
        return worker


@dataclass
class PendingAttempt:
    """A pending activity as describe() shows it (the server's view of its current attempt)."""

    activity_id: str
    name: str
    state: str
    attempt: int
    started: datetime | None
    last_heartbeat: datetime | None
    last_failure: str


async def pending(handle: WorkflowHandle) -> list[PendingAttempt]:
    from temporalio.api.enums.v1 import PendingActivityState

    found = []
    for p in (await handle.describe()).raw_description.pending_activities:
        found.append(PendingAttempt(
            activity_id=p.activity_id, name=p.activity_type.name,
            state=PendingActivityState.Name(p.state).removeprefix("PENDING_ACTIVITY_STATE_"), attempt=p.attempt,
            started=p.last_started_time.ToDatetime(tzinfo=timezone.utc) if p.HasField("last_started_time") else None,
            last_heartbeat=(p.last_heartbeat_time.ToDatetime(tzinfo=timezone.utc)
                            if p.HasField("last_heartbeat_time") else None),
            last_failure=p.last_failure.message if p.HasField("last_failure") else ""))
    return found


POLL_S = 0.5  # how often the check looks at the server and the ledgers while it waits for a state


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
        for i, slug in enumerate(s.fanout.pages):
            if i == 0:
                self.web.set_behaviour(slug, caller=a, hold=True, chunk_ms=HOLD_CHUNK_MS)
            else:
                self.web.set_behaviour(slug, caller=a, slow_ms=QUICK_MS)
        hang = s.hang.pages
        self.web.set_behaviour(hang[0], caller=a, hang_first=1)
        self.web.set_behaviour(hang[1], caller=a, slow_ms=QUICK_MS)
        self.web.set_behaviour(hang[2], caller=a, fail_first=1000, fail_status=503)  # never answers
        self.web.set_behaviour(hang[3], caller=a, slow_ms=QUICK_MS)
        self.web.set_behaviour(s.budget.pages[1], caller=a, fail_first=1, fail_status=503)
        self.web.set_behaviour(s.cancelled.pages[0], caller=a, hold=True, chunk_ms=HOLD_CHUNK_MS)
        for i, slug in enumerate(s.crash.pages):
            if i < 2:
                self.web.set_behaviour(slug, caller=k, slow_ms=CRASH_QUICK_MS)
            else:
                self.web.set_behaviour(slug, caller=k, hold=True, chunk_ms=HOLD_CHUNK_MS)
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
        for p in await temporal.pending_activities(run.handle):
            if p.last_failure and (todo := unfinished(p.last_failure, LAB)):
                return todo
        return None

    async def finish(self, run: Run, timeout: float | None = None) -> None:
        """Wait for the run to close; record its result or why it has none. Never raises."""
        waiter = asyncio.ensure_future(run.handle.result())
        timeout = timeout or finish_s(run.request["heartbeat_timeout_s"])
        deadline = run.started_at + timeout
        try:
            while not waiter.done():
                if time.time() > deadline:
                    raise asyncio.TimeoutError
                found = await self.problem(run)
                if found:
                    raise found
                await asyncio.wait({waiter}, timeout=2.0)  # a TODO or a broken task shows within 2 s
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
            waiting = await temporal.pending_activities(run.handle)
            run.failure = CheckFailed(
                f"The {run.key} run did not finish within {timeout:.0f} s",
                observed="still waiting on: " + ("; ".join(
                    f"{p.name} attempt {p.attempt} ({p.state.lower()})"
                    + (f", last failure: {p.last_failure[:80]}" if p.last_failure else "") for p in waiting)
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

    # --- the held page of the fanout run ---

    async def hold_until_heartbeats_pass_timeout(self, s: Scenario) -> None:
        """Keep the fanout run's first page trickling until the server shows its first attempt alive with a
        heartbeat recorded more than the heartbeat timeout after the attempt started (heartbeats kept it
        alive), or shows the attempt given up; then release it."""
        run, slug = s.fanout, s.fanout.pages[0]
        held = s.held = Held(slug)
        limit = timedelta_s(s.heartbeat_s)
        try:
            while not held.released_because:
                if time.time() > run.started_at + finish_s(s.heartbeat_s):
                    held.released_because = "deadline"
                    break
                history = await run.handle.fetch_history()
                if hist.closure(history) is not None:
                    held.released_because = "the run closed"
                    break
                act = next((a for a in activities(history) if a.name == "extract_content"
                            and slug in map(slug_of, a.pages)), None)
                if act is not None and act.outcome != "pending":
                    held.released_because = f"its activity {act.outcome}"
                    break
                if act is not None:
                    for p in await pending(run.handle):
                        if p.activity_id != act.activity_id:
                            continue
                        if p.attempt > 1:
                            held.released_because = f"attempt {p.attempt - 1} was given up ({p.last_failure[:60]})"
                        elif p.started and held.first_started is None:
                            held.first_started = p.started
                        if p.attempt == 1 and p.started and p.last_heartbeat:
                            held.last_heartbeat = p.last_heartbeat
                            if p.last_heartbeat - p.started > limit:
                                held.beat_past_timeout = True
                                held.released_because = "heartbeats kept it alive past the timeout"
                await asyncio.sleep(POLL_S)
        finally:
            self.web.set_behaviour(slug, caller=self.caller(self.a), slow_ms=0)

    # --- the stalled page of the hang run ---

    async def watch_stall(self, s: Scenario) -> None:
        """Record whether the server recorded a heartbeat of the stalled page's first attempt before it was given
        up (the history keeps the heartbeat's details only when the heartbeat timeout ended it, and details are
        optional)."""
        run, slug = s.hang, s.hang.pages[0]
        while time.time() < run.started_at + finish_s(s.heartbeat_s) and not s.stall_heartbeat:
            history = await run.handle.fetch_history()
            act = next((a for a in activities(history) if a.name == "extract_content"
                        and slug in map(slug_of, a.pages)), None)
            if hist.closure(history) is not None or (act is not None and act.outcome != "pending"):
                break
            if act is not None:
                mine = [p for p in await pending(run.handle) if p.activity_id == act.activity_id]
                if mine and mine[0].attempt > 1 and not mine[0].last_heartbeat:
                    break
                if mine and mine[0].last_heartbeat and (mine[0].attempt == 1 or mine[0].state == "SCHEDULED"):
                    s.stall_heartbeat = True
            await asyncio.sleep(POLL_S)

    # --- the crash ---

    async def crash(self, s: Scenario) -> None:
        run, harness = s.crash, self.k
        try:
            worker = harness.workers[0]
            reach = finish_s(s.heartbeat_s)  # a hang guard: until the crash run is mid-fan-out
            deadline = run.started_at + reach
            seen = "nothing yet"
            while True:
                if time.time() > deadline:
                    raise CheckFailed(
                        f"The crash run never had pages extracted and others downloading within {reach:.0f} s",
                        observed=seen, expected="2 quick pages extracted while the held ones download",
                        revisit=REVISIT_FANOUT, details=tail(worker.output()))
                history = await run.handle.fetch_history()
                if hist.closure(history) is not None:
                    raise CheckFailed(
                        "The crash run finished before the worker could be killed in the middle of its fan-out",
                        observed=f"it ended {hist.closure(history).status} "
                                 f"{', '.join(f'{a.name}({a.slug})' for a in activities(history))}",
                        expected="5 pages to extract, three of them held downloading until the kill")
                found = await self.problem(run, history)
                if found:
                    raise found
                done = [a for a in activities(history) if a.name == "extract_content" and a.outcome == "completed"]
                running = [p for p in await temporal.pending_activities(run.handle)
                           if p.name == "extract_content" and p.state == "STARTED"]
                downloading = [f for f in self.fetches(harness) if f.outcome == "started" and f.slug in run.pages]
                seen = f"{len(done)} extracted, {len(running)} extract_content running, {len(downloading)} downloading"
                # Not while the worker runs a workflow task: a task that dies with its worker is handed out
                # again only after its 10 s timeout, which has nothing to do with this lab.
                if len(done) >= 2 and running and downloading and not await workflow_task_running(run.handle):
                    break
                await asyncio.sleep(POLL_S)
            worker.kill()  # the fault: SIGKILL, mid-fan-out
            s.kill = Kill(pid=worker.pid, returncode=worker.returncode, at=time.time(),
                          extracted=[a.slug for a in done],
                          running=[f"extract_content attempt {p.attempt}" for p in running])
            for slug in run.pages[2:]:  # the next attempts download them at once
                self.web.set_behaviour(slug, caller=self.caller(harness), slow_ms=CRASH_QUICK_MS)
            await temporal.forget_sticky_queue(self.client, run.workflow_id)  # see docs/design.md
            fresh = harness.start_worker()
            s.new_identities = await harness.wait_polling(self.client, fresh, s.old_identities)
            silent = [a for a in activities(await run.handle.fetch_history())
                      if a.name == "extract_content" and a.outcome == "pending" and not a.heartbeat_s]
            if silent:  # nothing will notice the dead worker before start_to_close: say so now
                await self.start_and_finish(s.tiny)
                raise CheckFailed(
                    "The crash run cannot finish before start_to_close: its cut-off pages have no heartbeat_timeout",
                    observed=f"{len(silent)} extract_content cut off by the kill, scheduled with start_to_close "
                             f"{silent[0].start_to_close_s or 0:g} s and no heartbeat_timeout",
                    expected="a heartbeat_timeout, so the server notices the dead worker's attempts within seconds "
                             "and the new worker retries them",
                    revisit="Heartbeats are how the server learns that a worker died mid-activity. Set "
                            "heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_s) on extract_content.")
            # The tiny run starts on the new worker: no kill lands in its activities.
            await asyncio.gather(self.finish(run), self.start_and_finish(s.tiny))
        except CheckFailed as failure:
            run.failure = failure
        finally:
            if s.tiny.handle is None:
                await self.start_and_finish(s.tiny)

    async def start_and_finish(self, run: Run) -> None:
        run.started_at = time.time()
        run.handle = await self.client.start_workflow("ResearchWorkflow", run.request, id=run.workflow_id,
                                                      task_queue=run.harness.task_queue)
        await self.finish(run)

    # --- the cancellation ---

    async def cancel(self, s: Scenario) -> None:
        """Once the held page's download is open and its activity heartbeating (the server recorded two
        different heartbeat times for the attempt), cancel the workflow; then wait for the connection to close.
        An activity that never heartbeats while it downloads cannot hear of a cancellation: when its first
        attempt is given up first, the check records that and cancels the run all the same."""
        run, slug = s.cancelled, s.cancelled.pages[0]
        try:
            reach = finish_s(s.heartbeat_s)  # a hang guard: until the cancel run's download is heartbeating
            deadline = run.started_at + reach
            beats: set[datetime] = set()
            opened = None
            silent = ""
            while True:
                if time.time() > deadline:
                    raise CheckFailed(f"The cancel run never started downloading its page within {reach:.0f} s",
                                      observed=f"fetches of {slug}: {len(self.fetches(self.a, slug))}",
                                      expected="search, then extract_content downloads the page")
                history = await run.handle.fetch_history()
                if hist.closure(history) is not None:
                    raise CheckFailed("The cancel run finished before it could be cancelled",
                                      observed=f"it ended {hist.closure(history).status}",
                                      expected="a download that lasts until the workflow is cancelled")
                found = await self.problem(run, history)
                if found:
                    raise found
                fetches = self.fetches(self.a, slug)
                opened = fetches[-1] if fetches and fetches[-1].outcome == "started" else None
                extract = [p for p in await pending(run.handle) if p.name == "extract_content"]
                if extract and (extract[0].attempt > 1 or extract[0].last_failure):
                    silent = (f"attempt {extract[0].attempt - 1} was given up while the page downloaded: "
                              f"{extract[0].last_failure[:80]}")
                    break
                if opened and extract and extract[0].last_heartbeat:
                    beats.add(extract[0].last_heartbeat)
                    if len(beats) >= 2:
                        break
                await asyncio.sleep(POLL_S)
            s.cancel = Cancel(at=None if silent else time.time(), opened_at=opened.at if opened else 0.0,
                              seen=silent or f"{len(beats)} heartbeat times recorded while downloading")
            await run.handle.cancel()
            if not silent:
                deadline = time.time() + cancel_limit_s(s.heartbeat_s)
                while time.time() < deadline:
                    fetch = next((f for f in self.fetches(self.a, slug) if opened and f.id == opened.id), None)
                    if fetch is None or fetch.outcome != "started":
                        break
                    await asyncio.sleep(POLL_S)
                s.cancel.fetch = next((f for f in self.fetches(self.a, slug) if opened and f.id == opened.id), None)
            await self.finish(run)
        except CheckFailed as failure:
            run.failure = failure

    def fetches(self, harness: WorkerHarness, slug: str | None = None) -> list[WebEntry]:
        return self.web.ledger().fetches(caller=self.caller(harness), slug=slug)

    # --- evidence ---

    async def collect(self, s: Scenario) -> None:
        # The stalled download: give the worker until release_limit_s to let go of it (it never ends by itself).
        stalled = self.fetches(self.a, s.hang.pages[0])
        if stalled:
            limit = stalled[0].at + release_limit_s(s.heartbeat_s)
            while self.fetches(self.a, s.hang.pages[0])[0].outcome in ("hung", "started") and time.time() < limit:
                await asyncio.sleep(POLL_S)
            s.stall_closed_at = self.fetches(self.a, s.hang.pages[0])[0].finished_at
        llm = self.services.llm.ledger()
        for run in s.runs.values():
            run.history = await run.handle.fetch_history()
            run.acts = activities(run.history)
            run.fetches = [f for f in self.fetches(run.harness) if f.slug in run.pages]
            run.llm_calls = [e for e in llm.entries(caller=run.harness.api_key) if run.marker in e.prompt]
            run.attempts = [a for a in run.harness.attempts("extract_content") if a.workflow_id == run.workflow_id]


def timedelta_s(seconds: float):
    from datetime import timedelta

    return timedelta(seconds=seconds)


def heartbeat_timeout_for(startup_s: float) -> float:
    """The heartbeat timeout the runs ask for on this machine (see HEARTBEAT_PER_STARTUP)."""
    return round(min(HEARTBEAT_MAX_S, max(HEARTBEAT_MIN_S, HEARTBEAT_PER_STARTUP * startup_s)), 1)


async def run_scenario(lab: Lab05, s: Scenario) -> None:
    client = lab.client = await Client.connect(lab.services.temporal_address)
    launched = time.monotonic()
    worker_a, worker_k = lab.a.start_worker(), lab.k.start_worker()
    lab.script(s)  # the course LLM and the web answer by now; the workers are still starting
    for run in s.runs.values():
        run.harness = lab.k if run.key in ("crash", "tiny") else lab.a
    await lab.a.wait_polling(client, worker_a)
    s.old_identities = await lab.k.wait_polling(client, worker_k)
    s.startup_s = time.monotonic() - launched  # the calibration: both workers started and polling
    s.heartbeat_s = heartbeat_timeout_for(s.startup_s)
    # The replay process imports the workflow module while the runs run (not while the workers start).
    lab.replay = lab.a.replay = ReplaySet(root=lab.a.target.root, module=lab.a.target.module("workflows"))
    for run in s.runs.values():
        run.request["heartbeat_timeout_s"] = s.heartbeat_s
    for run in s.runs.values():
        if run.key == "tiny":  # started by lab.crash() once the crash run's worker was killed and replaced
            continue
        run.started_at = time.time()
        run.handle = await client.start_workflow("ResearchWorkflow", run.request, id=run.workflow_id,
                                                 task_queue=run.harness.task_queue)
    await asyncio.gather(lab.crash(s), lab.cancel(s), lab.hold_until_heartbeats_pass_timeout(s), lab.watch_stall(s),
                         *(lab.finish(s.runs[k]) for k in ("fanout", "hang", "budget", "retry")))
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

def one_activity_for_all(run: Run) -> Act | None:
    """An extract_content asked to download more than one page (its input a list of URLs), if any."""
    return next((a for a in run.extracts() if len(a.pages) > 1), None)


@pytest.mark.check("parallel-fan-out")
def test_extractions_run_in_parallel(scenario, evidence):
    """Given the fanout run (5 pages, max_parallel=2) and the crash run (5 pages, max_parallel=4),
    When each extracts its pages,
    Then each page is its own extract_content activity, and the workflow had max_parallel of them scheduled
    at once before waiting for any (the history's order of events, on any machine)."""
    s = scenario.require()
    peaks = []
    for run in (s.fanout, s.crash):
        if run.history is None or not run.extracts():
            run.completed()
            raise CheckFailed(f"The {run.key} run scheduled no extract_content", observed="none",
                              expected="one extract_content per page", revisit=REVISIT_FANOUT)
        bundled = one_activity_for_all(run)
        if bundled is not None:
            raise CheckFailed(
                f"One extract_content activity downloaded {len(bundled.pages)} pages of the {run.key} run",
                observed=f"{len(run.extracts())} extract_content activit(ies) for {len(run.pages)} pages; one was "
                         f"given the list {[slug_of(u) for u in bundled.pages]}",
                expected="one extract_content per page (execute_activity once per URL)",
                revisit="Each page must be its own activity: then each result is recorded in the history the moment "
                        "it completes, a crash re-downloads only the pages in flight, a stalled page is retried "
                        "alone and max_parallel counts pages. One activity for every page is all-or-nothing: "
                        "parallel inside, but one step to Temporal.")
        peak = peak_in_flight(run.history)
        want = min(run.cap, len(run.pages))
        peaks.append(f"{run.key}={peak}/{run.cap}")
        if peak == 1 and want > 1:
            raise CheckFailed(
                "The pages were extracted one after another, not in parallel",
                observed=f"the {run.key} run: at most 1 extract_content ran at once (scheduled and not yet closed, "
                         f"in the history), with {len(run.pages)} pages and max_parallel={run.cap}",
                expected=f"{want} scheduled before the workflow waited for any",
                revisit=REVISIT_FANOUT)
        if peak < want:
            raise CheckFailed(
                f"Only {peak} extract_content activities ran at once in the {run.key} run; its max_parallel "
                f"is {run.cap}",
                observed=f"{len(run.pages)} pages waiting, at most {peak} scheduled and not yet closed at any point "
                         "of the history",
                expected=f"{want} at once: request.max_parallel, whatever its value",
                revisit="Size the semaphore (or the batches) from request.max_parallel, not from a constant: the "
                        "caller chooses it. " + REVISIT_CAP)
    evidence["at_once"] = " ".join(peaks)


@pytest.mark.check("concurrency-cap")
def test_at_most_max_parallel_at_once(scenario, evidence):
    """Then the fanout run (max_parallel=2) and the crash run (max_parallel=4) never had more than their
    max_parallel extract_content activities scheduled and not yet closed (the history's order of events),
    nor more downloads open at once (the web's ledger)."""
    s = scenario.require()
    seen = []
    s.fanout.needed("concurrency-cap")  # the crash run's history is read even if it did not complete
    for run in (s.fanout, s.crash):
        if run.history is None:
            run.needed("concurrency-cap")
        peak = peak_in_flight(run.history)
        spans = [(f.at, f.finished_at or math.inf) for f in run.fetches]
        downloads = max_overlap(spans) if spans else 0
        seen.append(f"{run.key}={peak}/{run.cap}")
        if peak > run.cap:
            timed_out = [a for a in run.attempts if a.outcome in ("cancelled", "failed") and a.attempt == 1]
            in_worker = downloads < peak
            raise CheckFailed(
                f"{peak} extract_content activities ran at once; the request's max_parallel is {run.cap}",
                observed=f"the {run.key} run: {len(run.pages)} pages, {peak} activities scheduled and not closed "
                         f"at the same moment; at most {downloads} downloads open at once"
                         + (f"; {len(timed_out)} first attempt(s) ended early: "
                            + ", ".join(f"{a.activity_id}: {(a.error or a.outcome)[:60]}" for a in timed_out[:3])
                            if timed_out else ""),
                expected=f"at most {run.cap} at a time (request.max_parallel), the others not yet scheduled",
                revisit=("The downloads were capped, but inside the worker: an activity waiting for a slot (a "
                         "semaphore in activities.py) is already running for Temporal, its start_to_close and "
                         "heartbeat timeouts ticking, and it times out while it waits. " if in_worker else "")
                        + REVISIT_CAP)
    evidence["max_at_once"] = " ".join(seen)


@pytest.mark.check("heartbeat-loop")
def test_slow_page_keeps_heartbeating(scenario, evidence):
    """Given a page that trickles a byte every 0.2 s for as long as the check holds it,
    When the check holds it until the server has recorded a heartbeat more than the heartbeat timeout after
    the attempt started (or the attempt was given up),
    Then its extract_content completed on the first attempt, and no attempt of the fanout run's pages ended
    early (every attempt the worker ran, not only the last one the history keeps)."""
    s = scenario.require()
    run = s.fanout
    run.needed("heartbeat-loop")
    held = s.held
    slow = run.pages[0]
    act = run.act_of(slow)
    if act is None:
        raise CheckFailed(f"No extract_content for the slow page {slow}",
                          observed=", ".join(a.slug for a in run.extracts()) or "none",
                          expected=f"one for each page the search returned: {', '.join(run.pages)}",
                          revisit=REVISIT_FANOUT)
    evidence.update(slow_page=f"{act.outcome}@{act.attempt}", heartbeat_timeout=f"{s.heartbeat_s:g}s",
                    workers_started_in=f"{s.startup_s:.1f}s")
    timed_out = "heartbeat" in (act.failure_kind + act.previous_kind)
    if act.outcome != "completed" or act.attempt != 1 or not (held and held.beat_past_timeout):
        raise CheckFailed(
            f"The slow page {slow} " + ("timed out on its heartbeat although it was downloading all along"
                                        if timed_out else "did not complete on its first attempt"
                                        if act.outcome != "completed" or act.attempt != 1 else
                                        "never showed a heartbeat past its heartbeat timeout"),
            observed=f"extract_content({slow}) {act.outcome} on attempt {act.attempt}"
                     + (f"; attempt {act.attempt - 1}: {act.previous_kind or act.previous_failure[:80]}"
                        if act.previous_failure else "")
                     + (f"; last: {act.failure_kind or act.failure[:80]}" if act.failure else "")
                     + (f"; the page was held until {held.released_because}" if held else ""),
            expected=f"completed on attempt 1: a byte arrived every {HOLD_CHUNK_MS / 1000:g} s, and each one is "
                     f"progress worth a heartbeat (heartbeat_timeout {s.heartbeat_s:g} s)",
            revisit=REVISIT_HEARTBEAT)
    evidence["attempts"] = len(run.attempts)
    cut = [a for a in run.attempts if a.outcome not in ("completed", None)]
    if cut:
        raise CheckFailed(
            "An attempt of the fanout run's pages ended early although every page answered",
            observed="; ".join(f"extract_content({slug_of_attempt(run, a)}) attempt {a.attempt}: {a.outcome} "
                               f"({(a.error or '')[:80]})" for a in cut[:4]),
            expected="every attempt completes: the pages of this run answer on their first try",
            revisit="An attempt that waits (for a slot, a lock, a queue) without heartbeating is silent to the "
                    "server and times out. " + REVISIT_HEARTBEAT)


def slug_of_attempt(run: Run, attempt: Any) -> str:
    act = next((a for a in run.extracts() if a.activity_id == attempt.activity_id), None)
    return act.slug if act else ""


@pytest.mark.check("hang-detected")
def test_hung_page_abandoned_and_retried(scenario, evidence):
    """Given a page whose first fetch sends a chunk and then stalls until the client lets go,
    Then the stalled attempt is given up by the heartbeat timeout (after it had heartbeat for the chunk it
    received) or by the activity itself, not by start_to_close; the page is fetched again and extracted on
    attempt 2; and the worker closes the stalled connection."""
    s = scenario.require()
    run = s.hang
    slug = run.pages[0]
    fetches = run.fetches_of(slug)
    act = run.act_of(slug)
    if run.failure is not None and run.status == "RUNNING":
        first = fetches[0] if fetches else None
        no_timeout = act is not None and not act.heartbeat_s
        raise CheckFailed(
            "The stalled page was never given up: the hang run was still waiting when the check stopped",
            observed=(f"{slug}: fetched {len(fetches)} time(s); the first stalled at {ts(first.at)}"
                      if first else f"{slug} was never fetched")
                     + ("; extract_content has no heartbeat_timeout" if no_timeout else "")
                     + f"; {run.failure.observed}",
            expected=f"a new attempt once the heartbeats stop for the heartbeat timeout ({s.heartbeat_s:g} s), "
                     f"not after start_to_close ({START_TO_CLOSE_S:.0f} s)",
            revisit="Give extract_content heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_s) and "
                    "heartbeat per chunk: when the chunks stop, the heartbeats stop, and Temporal retries the page "
                    "instead of waiting for start_to_close. " + REVISIT_HEARTBEAT)
    run.needed("hang-detected")
    if act is not None and not act.heartbeat_s:
        raise CheckFailed(
            "The stalled page was not given up by a heartbeat timeout: extract_content has no heartbeat_timeout",
            observed=f"{slug}: fetched {len(fetches)} time(s); attempt {max(1, act.attempt - 1)} ended: "
                     f"{act.previous_kind or act.failure_kind or act.outcome} "
                     + (f"{fetches[1].at - fetches[0].at:.0f} s after the stall" if len(fetches) > 1 else ""),
            expected=f"given up when its heartbeats stop for the heartbeat timeout the request asked for "
                     f"({s.heartbeat_s:g} s)",
            revisit="Only an activity scheduled with a heartbeat_timeout is given up when its heartbeats stop; "
                    "without one, a stall lasts until a read timeout or start_to_close, and a dead worker's pages "
                    "wait for start_to_close. Set heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_s).")
    if len(fetches) < 2 or act is None:
        raise CheckFailed(
            f"The stalled page {slug} was not fetched again",
            observed=f"{len(fetches)} fetch(es) of {slug}; extract_content: "
                     + (f"{act.outcome} on attempt {act.attempt}" if act else "never scheduled"),
            expected="the stalled attempt given up, and a second attempt that downloads the page",
            revisit="A stalled download must fail the attempt (heartbeat timeout) so that Temporal retries it. "
                    + REVISIT_HEARTBEAT)
    evidence.update(attempt=act.attempt, given_up_by=act.previous_kind or "?",
                    retry_after=f"{fetches[1].at - fetches[0].at:.1f}s")
    if act.previous_kind == "start-to-close timeout":
        raise CheckFailed(
            "The stalled page was given up only by its start_to_close timeout",
            observed=f"attempt {act.attempt - 1} of extract_content({slug}) ended: {act.previous_failure[:100]}",
            expected="given up when its heartbeats stopped (heartbeat timeout)",
            revisit="Set heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_s) on extract_content and "
                    "heartbeat per chunk. " + REVISIT_HEARTBEAT)
    if not (s.stall_heartbeat or act.previous_heartbeat):
        raise CheckFailed(
            "The stalled attempt was given up, but it had never heartbeat",
            observed=f"attempt {act.attempt - 1} of extract_content({slug}) received a chunk and then stalled; the "
                     f"server recorded no heartbeat from it before it ended ({act.previous_kind or '?'})",
            expected="a heartbeat for the chunk that arrived, then silence when the page stalled: the timeout "
                     "must catch the progress stopping, not an activity that was silent from the start "
                     "(that one also times out on every page slower than the timeout)",
            revisit=REVISIT_HEARTBEAT)
    if act.outcome != "completed" or act.attempt < 2:
        raise CheckFailed(
            f"The stalled page's extract_content {act.outcome} on attempt {act.attempt}",
            observed=f"{act.failure_kind} {act.failure[:120]}", expected="completed on attempt 2",
            revisit=REVISIT_HEARTBEAT)
    first = fetches[0]
    limit = release_limit_s(s.heartbeat_s)
    evidence["released_after"] = f"{first.finished_at - first.at:.1f}s" if first.finished_at else "never"
    if first.finished_at is None or first.finished_at - first.at > limit:
        raise CheckFailed(
            "Your worker kept the stalled download open after Temporal had given up on it",
            observed=f"the stalled connection to {slug} "
                     + (f"closed {first.finished_at - first.at:.1f} s after it opened" if first.finished_at else
                        f"was still open {limit:.0f} s after it opened"),
            expected=f"closed when the attempt is given up (heartbeat timeout {s.heartbeat_s:g} s)",
            revisit="The server gave up on the attempt, but your worker still ran it. The SDK cancels a silent "
                    "attempt itself a few seconds after its heartbeat timeout: let asyncio.CancelledError propagate "
                    "(no bare `except:`, no asyncio.shield) so `async with` closes the connection. Better, give up "
                    "at the same moment: read with a timeout as long as the heartbeat timeout (`httpx.Timeout(10, "
                    "read=activity.info().heartbeat_timeout.total_seconds())`).")


@pytest.mark.check("page-given-up")
def test_page_out_of_attempts_left_out(scenario, evidence):
    """Given a page of the hang run that answers 503 to every fetch,
    Then its extract_content fails on each of its attempts, the run still completes with a summary of the
    other pages, leaves the lost page out of `sources`, and says in its result that it is partial and why."""
    s = scenario.require()
    run = s.hang
    lost = run.pages[2]
    result = run.completed()
    act = run.act_of(lost)
    sources = [slug_of(u) for u in (field_of(result, "sources", None) or [])]
    partial, reason = field_of(result, "partial", None), str(field_of(result, "reason", "") or "")
    evidence.update(lost=lost, fetches=len(run.fetches_of(lost)), partial=partial)
    if act is None or act.outcome == "completed":
        raise CheckFailed(f"The page that never answers ({lost}) was not given up",
                          observed=f"extract_content({lost}): " + (f"{act.outcome} on attempt {act.attempt}"
                                                                  if act else "never scheduled"),
                          expected=f"failed on attempt {EXPECTED_POLICY['extract_content']['maximum_attempts']}",
                          revisit="Every fetch of this page answers 503: the activity must fail each attempt.")
    if lost in sources or partial is not True or not reason.strip() or (
            "budget" in reason.lower() and not re.search(r"page|source|read|fetch|extract|lost", reason, re.I)):
        raise CheckFailed(
            "The run left the lost page in, or did not say that it is partial",
            observed=f"sources={sources}, partial={partial!r}, reason={reason!r}",
            expected=f"{lost} not in sources, partial=True, and a reason that says a page could not be read",
            revisit="Catch the ActivityError of a page that ran out of attempts, carry on without it, and say so: "
                    "ResearchResult(..., partial=True, reason=\"1 of 4 pages could not be read\"). The caller "
                    "must be able to tell a full answer from a partial one.")


@pytest.mark.check("sources-read")
def test_sources_are_the_pages_summarized(scenario, evidence):
    """Then for every run that summarized: `sources` lists exactly the pages whose text went into the
    summary, in rank order; the summarize request in the LLM's ledger carried those pages' texts (as the web
    sent them) in the same order; and `summary` is the reply the LLM gave."""
    s = scenario.require()
    checked = []
    for run in (s.fanout, s.hang, s.budget, s.retry, s.crash):
        result = run.needed("sources-read")
        sources = [slug_of(u) for u in (field_of(result, "sources", None) or [])]
        answered = [e for e in run.llm_calls if e.status == 200]
        carried = prompt_sources(answered[-1]) if answered else []
        # How many sources the budget allows is budget-enforced's to judge; here, which ones and in what order.
        want = pages_read(run)[:len(carried)] if run.key == "budget" else expected_sources(run)
        checked.append(f"{run.key}={len(sources)}")
        if sources != want:
            raise CheckFailed(
                f"The {run.key} run's sources are not the pages its summary was made from",
                observed=f"sources={sources}",
                expected=f"{want}: the pages read" + (" and kept within the budget" if run.key == "budget" else "")
                         + ", in the order the search ranked them",
                revisit="`sources` is the list of URLs whose text went into the summary, paired with their "
                        "texts: §64.2.1 returns urls[:max_sources] even when a page could not be read. Keep each "
                        "URL with its text (zip) and build both lists from the same pairs.")
        if carried != [page_text(p) for p in want]:
            got = [next((p for p in run.pages if page_text(p) == text), "an unknown text") for text in carried]
            raise CheckFailed(
                f"The {run.key} run's summarize request did not carry its sources' texts, in order",
                observed=f"the LLM was given the texts of {got}" if answered else "no answered summarize request",
                expected=f"the texts of {want}, each as the web sent it, in that order",
                revisit="Call llm_summarize with the downloaded texts in the same order as `sources` "
                        "(models.summary_messages joins them); a text must come from its own URL.")
        if field_of(result, "summary", None) != answered[-1].reply:
            raise CheckFailed(
                f"The {run.key} run's summary is not the LLM's reply",
                observed=f"summary={str(field_of(result, 'summary', None))[:80]!r}",
                expected=f"{(answered[-1].reply or '')[:80]!r}...",
                revisit="Return the reply's text (response.choices[0].message.content) as the summary.")
    evidence["sources"] = " ".join(checked)


@pytest.mark.check("cancellation-honoured")
def test_cancelled_download_stops(scenario, evidence):
    """Given the cancel run downloading a page that trickles until the client lets go,
    When the workflow is cancelled once the download is heartbeating,
    Then that download's connection closes after the cancel (and not before it), within a few heartbeats,
    the page is not fetched again, and the run ends cancelled."""
    s = scenario.require()
    run = s.cancelled
    slug = run.pages[0]
    if s.cancel is None:
        raise run.failure or NotChecked("not checked: the cancel run never reached its download")
    if s.cancel.at is None:
        raise CheckFailed(
            "The download never heard of the cancellation: it sent no heartbeat while the page downloaded",
            observed=f"{slug}: {s.cancel.seen}",
            expected="heartbeats while the bytes arrive; the cancellation comes back as the answer to one",
            revisit="An activity learns of a cancellation only when it heartbeats. " + REVISIT_HEARTBEAT)
    fetch = s.cancel.fetch
    limit = cancel_limit_s(s.heartbeat_s)
    closed = (fetch.finished_at - s.cancel.at) if fetch and fetch.finished_at else math.inf
    evidence["closed_after"] = f"{closed:.1f}s" if closed != math.inf else "never"
    after = [f for f in run.fetches_of(slug) if f.at > s.cancel.at]
    if fetch is None or fetch.outcome == "complete" or closed > limit or closed < 0 or after:
        raise CheckFailed(
            "The download went on after the workflow was cancelled" if closed >= 0 else
            "The download's connection closed before the cancel: it was not the cancellation that stopped it",
            observed=f"cancel requested at {ts(s.cancel.at)}; the page's connection "
                     + ("downloaded to the end" if fetch and fetch.outcome == "complete" else
                        f"closed at {ts(fetch.finished_at)} ({closed:+.1f} s)" if fetch and fetch.finished_at else
                        f"was still open {limit:.0f} s later")
                     + (f"; {len(after)} new fetch(es) after the cancel" if after else ""),
            expected="closed after the cancel, within a few heartbeats: the cancellation reaches the activity with "
                     "its next heartbeat, as CancelledError",
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
    evidence.update(killed_pid=s.kill.pid, restarts=1, extracted_before=len(s.kill.extracted),
                    run_took=f"{(run.finished_at or 0) - run.started_at:.1f}s" if run.finished_at else "-")
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
def test_budget_limits_the_summary(scenario, evidence):
    """Given the tiny run's budget ($0.00005), less than any summarize call over its pages costs,
    and the budget run's budget, between the worst case of a summary of its first 2 pages and of all 3,
    Then the tiny run makes no LLM call and the budget run one call over exactly the pages read that fit (its
    first 2); each result is partial and says the budget is why, and no run spent more than its budget (the
    LLM ledger's usage at the lab's prices)."""
    s = scenario.require()
    seen = []
    for run in (s.tiny, s.budget):
        result = run.completed()
        read = pages_read(run)
        fit = fits(run, read)
        budget = float(run.request["budget_usd"])
        answered = [e for e in run.llm_calls if e.status == 200]
        spent = sum(price_of(e) for e in run.llm_calls)
        partial, reason = field_of(result, "partial", None), str(field_of(result, "reason", "") or "")
        sent = prompt_sources(answered[-1]) if answered else []
        seen.append(f"{run.key}:${spent:.6f}/${budget:.6f},{len(sent)}src")
        if spent > budget or (fit == 0 and run.llm_calls):
            raise CheckFailed(
                f"The {run.key} run spent ${spent:.6f} on the LLM with a budget of ${budget:.5f}",
                observed=f"{len(run.llm_calls)} summarize request(s) in the LLM's ledger, over {len(sent)} source(s); "
                         f"result total_cost={field_of(result, 'total_cost', None)}",
                expected="no call whose worst case costs more than what is left of the budget"
                         + (" (here: none at all)" if fit == 0 else ""),
                revisit="Before calling llm_summarize, price its worst case in the workflow "
                        "(models.estimate_summary_cost: the prompt plus SUMMARY_MAX_TOKENS of reply) and compare it "
                        "with budget_usd minus what was spent. If it does not fit, drop sources or skip the call.")
        if fit and len(sent) != fit:
            raise CheckFailed(
                f"The {run.key} run summarized {len(sent)} of its {len(read)} sources; its budget fits {fit}",
                observed=f"budget ${budget:.6f}; the worst case is ${worst_case(run.topic, sent):.6f} for the "
                         f"{len(sent)} sent" if sent else f"budget ${budget:.6f}; no summarize request",
                expected=f"the first {fit} sources: worst case ${worst_case(run.topic, [page_text(p) for p in read[:fit]]):.6f}"
                         f" fits, with one more ${worst_case(run.topic, [page_text(p) for p in read[:fit + 1]]):.6f} "
                         "does not",
                revisit="Drop sources one at a time (the last first) while the worst case is above what is left "
                        "of the budget, and call with the ones that fit: dropping everything, or nothing, is "
                        "right only for one budget.")
        if fit < len(read) and (partial is not True or "budget" not in reason.lower()):
            raise CheckFailed(
                f"The {run.key} run's result does not say it is partial because of the budget",
                observed=f"partial={partial!r}, reason={reason!r}",
                expected="partial=True and a reason that names the budget",
                revisit="Return ResearchResult(..., partial=True, reason=\"budget: ...\"): stopping is a result, "
                        "not an error, and the caller must be able to tell.")
    evidence["spent"] = " ".join(seen)


@pytest.mark.check("cost-from-usage")
def test_total_cost_matches_llm_usage(scenario, evidence):
    """Then each run's total_cost equals what the usage billed in the LLM's ledger costs at the lab's prices
    (prompt and completion tokens, hidden reasoning tokens included; a request that failed costs nothing)."""
    s = scenario.require()
    checked = []
    for run in (s.fanout, s.hang, s.budget, s.crash, s.retry, s.tiny):
        result = run.needed("cost-from-usage")
        spent = sum(price_of(e) for e in run.llm_calls)
        total = field_of(result, "total_cost", None)
        checked.append(f"{run.key}=${spent:.6f}")
        if not isinstance(total, (int, float)) or not math.isclose(total, spent, rel_tol=1e-9, abs_tol=1e-15):
            ok = [e for e in run.llm_calls if e.status == 200]
            usage = ok[-1].usage if ok else None
            raise CheckFailed(
                f"The {run.key} run's total_cost is {total!r}, but its LLM usage costs ${spent:.8f}",
                observed=(f"{len(run.llm_calls)} request(s), {len(ok)} answered; the last billed "
                          f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens "
                          f"({usage.get('reasoning_tokens', 0)} of them hidden reasoning)"
                          if usage else "no answered LLM request"),
                expected="total_cost = sum over the answered calls of (usage.prompt_tokens x prompt price + "
                         "usage.completion_tokens x completion price) / 1,000,000",
                revisit="Compute the cost in llm_summarize from response.usage (prompt_tokens, completion_tokens) "
                        "and models.PRICES_PER_MILLION, return it with the text, and add it up in the workflow. "
                        "Counting characters (or words) does not give the tokens a model bills, and misses the "
                        "reasoning tokens it bills too. §64.2.1's `total_cost=0.0  # Tracked via gateway` is exactly "
                        "what the budget cannot use.")
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
        final = act is not None and act.outcome == "failed" and act.attempt == 1 and act.non_retryable
        raise CheckFailed(
            ("The 503 was retried inside extract_content, so Temporal never saw it" if hidden else
             "The 503 was raised as non-retryable, so Temporal gave the page up at once" if final else
             f"The page that failed once ({slug}) did not complete on attempt 2"),
            observed=f"{len(fetches)} fetch(es) ({', '.join(str(f.status) for f in fetches)}); extract_content "
                     + (f"{act.outcome} on attempt {act.attempt}" if act else "never scheduled")
                     + (f": {act.failure[:80]} (non_retryable)" if final else ""),
            expected="attempt 1 fails with the 503 (response.raise_for_status()), attempt 2 completes",
            revisit=("A 503 (or a 500, a 429) says \"not now\": the next attempt may succeed. Raise it as a "
                     "retryable failure and let the retry policy decide; mark non_retryable only what cannot get "
                     "better by asking again (a 404, a 400)." if final else
                     "Let the activity fail and Temporal retry it: no retry loop or retrying transport in the "
                     "activity, so every failure is in the history, with its backoff, where you can see it."))
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
    summarize 5 with 2 s x2.0 backoff), start_to_close timeouts, and extract_content with the
    heartbeat_timeout the request asked for (request.heartbeat_timeout_s)."""
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
    if extract.heartbeat_s is None or not math.isclose(extract.heartbeat_s, s.heartbeat_s, abs_tol=1e-3):
        raise CheckFailed(
            "extract_content was scheduled " + (f"with a {extract.heartbeat_s:g} s heartbeat_timeout"
                                                if extract.heartbeat_s else "without a heartbeat_timeout"),
            observed=f"heartbeat_timeout={extract.heartbeat_s or 0:g} s, start_to_close={extract.start_to_close_s:g} s",
            expected=f"heartbeat_timeout=timedelta(seconds=request.heartbeat_timeout_s): {s.heartbeat_s:g} s, "
                     "the value this run asked for",
            revisit="Heartbeats are only checked when the activity has a heartbeat_timeout: without one, a "
                    f"stalled download or a dead worker holds the page for start_to_close ({START_TO_CLOSE_S:g} s). "
                    "The caller chooses it (ResearchRequest.heartbeat_timeout_s): the text's 15 s suits production, "
                    "the check picks one for the machine it runs on.")


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
