"""Lab 05 crash sweep: ResearchWorkflow runs survive a worker SIGKILLed mid-fan-out, and each page is
fetched once except the fetches a kill caught in flight.

Per trial: a fresh task queue, LLM key and course-web caller; one worker (forked from a warm
interpreter, as the Lab 05 check's); `subjects` ResearchWorkflow runs (at most 4), one per corpus
topic, so their pages are disjoint and every fetch in the web's ledger belongs to exactly one run.
The runs start `start_gap_s` apart; every page answers over `page_ms` (its chunks spread out, the
activity heartbeating as they arrive) and the course LLM answers `latency_ms` late, so the kills
find runs searching, with several pages downloading at once, summarizing, between tasks.

Two ledgers, one rule (labkit.sweep):
- LLM: llm_summarize of run W = the course LLM's entries under the trial's key whose prompt
  carries W's marker; recorded = llm_summarize completed in history.
- web: W's search and each of W's pages = the course web's ledger entries (search by W's topic,
  fetch by the page's slug); recorded = search_web / that page's extract_content completed in
  history; successor = W's summarize call (once it went out, every page's text was in hand).
Invariants verified at the end: every run COMPLETED, its result summarizes every planned page
(sources, not partial) but those given up as below, its cost within its budget; search_web and llm_summarize completed once,
extract_content once per page, in history; no LLM call outside a run; no fetch of a page no run
planned.

One outcome is counted, not failed: a page whose both attempts (the lab's maximum_attempts=2)
were killed in flight is given up, and the run ends partial ("1 of 4 pages could not be read"),
as the lab's retry policy says it should: a timeout after a crash counts as an attempt (a run
whose every page was given up returns an empty partial result and rightly calls no LLM). The
report tallies these; a page given up for any other reason is a violation.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import TimeoutType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.converter import DataConverter

from labkit import course, prefork
from labkit import history as hist
from labkit.pytest_plugin import Services
from labkit.services import CourseLLM, TemporalServer
from labkit.sweep import LogicalCall, Violation
from labkit.web import DEFAULT_CORPUS, CourseWeb, load_corpus, rank
from labkit.sweep_kit import graded_copy, with_latency
from labkit.sweep_temporal import (STARTED, WORKFLOW_TASK_TIMEOUT, ForkedWorkers, WorkerScenario, release_dead_worker,
                                   results_of)

# --- what the check and the sweep share ------------------------------------------------------------

# Third-party modules the fork server imports once for the workers (never student code); see labkit.prefork.
PRELOAD = ["temporalio.client", "temporalio.worker", "temporalio.workflow", "temporalio.activity",
           "temporalio.common", "temporalio.exceptions", "openai", "httpx"]
# What the lab asks for (README, course.toml hints): the check holds the submission to it, the sweep
# counts a page given up after this many killed attempts as the policy working, not as a violation.
EXPECTED_POLICY = {
    "search_web": {"maximum_attempts": 3},
    "extract_content": {"maximum_attempts": 2},
    "llm_summarize": {"maximum_attempts": 5, "initial_interval_s": 2.0, "backoff_coefficient": 2.0},
}


def slug_of(url: str) -> str:
    """The corpus page a course-web URL names (its last path segment, without a query)."""
    return str(url).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


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
    previous_heartbeat: bool = False  # that attempt had heartbeat before it timed out (its last details)
    non_retryable: bool = False  # the last failure was raised as non-retryable

    @property
    def pages(self) -> list[str]:
        """The URL(s) it was asked to download: one, unless its input was a list."""
        if not self.args:
            return []
        first = self.args[0]
        return [str(u) for u in first] if isinstance(first, list) else [str(first)]

    @property
    def url(self) -> str:
        return self.pages[0] if self.pages else ""

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
                if attrs.last_failure.HasField("timeout_failure_info"):
                    details = attrs.last_failure.timeout_failure_info.last_heartbeat_details
                    act.previous_heartbeat = bool(details.payloads)
        elif kind in ("ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
                      "ACTIVITY_TASK_CANCELED"):
            attrs = getattr(event, kind.lower() + "_event_attributes")
            act = found[attrs.scheduled_event_id]
            act.closed_at, act.outcome = at, kind.removeprefix("ACTIVITY_TASK_").lower()
            if kind != "ACTIVITY_TASK_COMPLETED" and attrs.HasField("failure"):
                act.failure, act.failure_kind = attrs.failure.message, failure_kind(attrs.failure)
                if attrs.failure.HasField("application_failure_info"):
                    act.non_retryable = attrs.failure.application_failure_info.non_retryable
                if attrs.failure.HasField("cause") and not act.failure_kind.endswith("timeout"):
                    act.failure_kind = failure_kind(attrs.failure.cause) or act.failure_kind
                    if attrs.failure.cause.HasField("application_failure_info"):
                        act.non_retryable = attrs.failure.cause.application_failure_info.non_retryable
    return list(found.values())


# --- the sweep -----------------------------------------------------------------------------------

TOPICS = ["quantum error correction", "durable execution", "urban heat islands", "sourdough bread"]
MAX_SOURCES, MAX_PARALLEL = 4, 3
EXTRACT_ATTEMPTS = EXPECTED_POLICY["extract_content"]["maximum_attempts"]  # the lab's EXTRACT_RETRY
# extract_content's heartbeat timeout, which the request chooses (ResearchRequest.heartbeat_timeout_s). Not the
# check's 3 s: a sweep's invariant (each page fetched once unless a kill caught it) must not meet a page timed out
# by load alone, and the sweep fails a dead worker's attempts itself (release_dead_worker), so it costs no time.
HEARTBEAT_S = 5.0


class Sweep(WorkerScenario):
    lab = "05"

    def __init__(self, workdir: Path, subjects: int = 4, path: Path | None = None, latency_ms: int = 300,
                 page_ms: int = 700, start_gap_s: float = 0.6, kill_window: tuple[float, float] = (0.3, 2.5),
                 finish_timeout_s: float = 60.0):
        if not 1 <= subjects <= len(TOPICS):
            raise SystemExit(f"lab 05's sweep runs 1 to {len(TOPICS)} workflows (one per corpus topic), not {subjects}")
        self.workdir, self.subjects, self.path = Path(workdir), subjects, path
        self.latency_ms, self.page_ms, self.start_gap_s = latency_ms, page_ms, start_gap_s
        self.kill_window, self.finish_timeout_s = kill_window, finish_timeout_s
        self.run_id = uuid.uuid4().hex[:6]
        self.corpus, _ = load_corpus([DEFAULT_CORPUS])
        self.counts: Counter = Counter()  # across trials, for the report

    # --- the sweep's servers ---------------------------------------------------------------------

    async def start(self) -> None:
        self.target = graded_copy(self.lab, self.workdir, self.path)
        state = self.workdir / "services"
        self.temporal = TemporalServer(state, ui_port=None)
        self.llm = CourseLLM(state, rules_files=[course.COURSE_TOML])
        self.web = CourseWeb(state / "web-server")
        self.forks = prefork.ForkServer(self.workdir, PRELOAD, env=self.target.python_env()) \
            if prefork.enabled() else None
        for server in filter(None, (self.forks, self.temporal, self.llm, self.web)):
            server.launch()
        await asyncio.to_thread(self.temporal.wait_ready)
        await asyncio.to_thread(self.llm.wait_ready)
        await asyncio.to_thread(self.web.wait_ready)
        self.llm.push_rules(with_latency(["lab05-summarize-qec", "lab05-summarize"], self.latency_ms))
        if self.forks is not None:
            await asyncio.to_thread(self.forks.wait_ready)
        self.services = Services(temporal_address=self.temporal.address, course_llm=self.llm,
                                 temporal=self.temporal)
        self.client = await Client.connect(self.temporal.address)

    async def stop(self) -> None:
        for server in filter(None, (getattr(self, name, None) for name in ("forks", "web", "llm", "temporal"))):
            server.stop()

    def tallies(self) -> dict[str, int]:
        return dict(self.counts)

    # --- one trial ----------------------------------------------------------------------------------

    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None:
        key = f"sweep-{self.run_id}-t{trial}"
        self.caller = f"sweep05-{key}"
        workdir = self.workdir / f"trial{trial}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.harness = ForkedWorkers(self.target, self.services, workdir, lab=self.lab, key=key, forks=self.forks,
                                     COURSE_WEB_URL=self.web.url_for(self.caller))
        self.plan = {}  # workflow id: (topic with its marker, planned page slugs)
        for i, base in enumerate(TOPICS[:self.subjects]):
            topic = f"{base} #w{i}{key.replace('-', '')}"  # the marker: a word no page contains
            self.plan[f"research-{key}-w{i}"] = (topic, [d.slug for d in rank(self.corpus, topic, MAX_SOURCES)])
        for _, pages in self.plan.values():
            for slug in pages:
                self.web.set_behaviour(slug, caller=self.caller, slow_ms=self.page_ms)
        self.handles: dict[str, WorkflowHandle] = {}
        self.results: dict[str, object] = {}
        self.identities: set[str] = set()
        self.killed_attempts: Counter = Counter()  # (workflow id, slug): extract attempts a kill interrupted
        self.gate, self.feed = gate, None
        self.harness.start_worker()

    async def _start_runs(self) -> None:
        for n, (workflow_id, (topic, _)) in enumerate(self.plan.items()):
            if n:
                await asyncio.sleep(self.start_gap_s)
            await self.gate.wait()
            request = {"topic": topic, "max_sources": MAX_SOURCES, "budget_usd": 2.0, "max_parallel": MAX_PARALLEL,
                       "heartbeat_timeout_s": HEARTBEAT_S}
            self.handles[workflow_id] = await self.client.start_workflow(
                "ResearchWorkflow", request, id=workflow_id, task_queue=self.harness.task_queue,
                task_timeout=WORKFLOW_TASK_TIMEOUT)

    async def after_kill(self) -> None:
        for workflow_id, handle in list(self.handles.items()):
            # the extract_content attempts this kill interrupted: the attempts it costs each page
            running = {p.activity_id for p in (await handle.describe()).raw_description.pending_activities
                       if p.state == STARTED and p.activity_type.name == "extract_content"}
            if running:
                for activity_id, argument in (await self._extracts(handle)).items():
                    if activity_id in running:
                        self.killed_attempts[(workflow_id, slug_of(argument))] += 1
            await release_dead_worker(self.client, handle)

    async def _extracts(self, handle: WorkflowHandle) -> dict[str, str]:
        """activity id: url, of every extract_content the history schedules."""
        return {act.activity_id: act.url for act in activities(await handle.fetch_history())
                if act.name == "extract_content" and act.args}

    async def _activities(self, handle: WorkflowHandle) -> list[tuple[str, str, str]]:
        """(activity name, its first argument, outcome) per scheduled activity, from the history."""
        return [(act.name, act.args[0] if act.args and isinstance(act.args[0], str) else "", act.outcome)
                for act in activities(await handle.fetch_history())]

    async def recorded(self) -> set[str]:
        found = set()
        for workflow_id, handle in list(self.handles.items()):
            for name, argument, outcome in await self._activities(handle):
                if outcome != "completed":
                    continue
                if name == "search_web":
                    found.add(f"web:{workflow_id}/search")
                elif name == "extract_content":
                    found.add(f"web:{workflow_id}/{slug_of(argument)}")
                elif name == "llm_summarize":
                    found.add(f"{workflow_id}/summarize")
        return found

    async def finish(self) -> None:
        self.results = await results_of(self.handles, self.feed, self.finish_timeout_s)
        self.outcomes = {}  # workflow id: (activities, pages given up, those given up because both attempts were killed)
        for workflow_id, handle in self.handles.items():
            activities = await self._activities(handle)
            given_up = [slug_of(argument) for name, argument, outcome in activities
                        if name == "extract_content" and outcome != "completed"]
            explained = [slug for slug in given_up if self.killed_attempts[(workflow_id, slug)] >= EXTRACT_ATTEMPTS]
            self.outcomes[workflow_id] = (activities, given_up, explained)
            self.counts["pages given up after both attempts were killed"] += len(explained)
            self.counts["runs partial for it"] += bool(explained)
            self.counts["runs left with no page (no summary, no LLM call)"] += \
                bool(explained) and len(explained) == len(self.plan[workflow_id][1])

    # --- the ledgers ----------------------------------------------------------------------------------

    async def logical_calls(self) -> list[LogicalCall]:
        entries = self.llm.ledger().entries(caller=self.harness.api_key)
        markers = {workflow_id: topic.rsplit(" ", 1)[1] for workflow_id, (topic, _) in self.plan.items()}
        self.strays = [e for e in entries if not any(marker in e.prompt for marker in markers.values())]
        # a run whose every page was given up (both attempts killed) rightly calls no LLM
        nothing_read = {workflow_id for workflow_id, (_, _, explained) in self.outcomes.items()
                        if len(explained) == len(self.plan[workflow_id][1])}
        return [LogicalCall(key=f"{workflow_id}/summarize", subject=workflow_id, successor=None,
                            entries=[(e.at, e.status) for e in entries if marker in e.prompt])
                for workflow_id, marker in markers.items() if workflow_id not in nothing_read]

    async def ledgers(self) -> dict[str, tuple[str, list[LogicalCall]]]:
        entries = self.web.ledger().entries(caller=self.caller)
        planned = {slug for _, pages in self.plan.values() for slug in pages}
        self.unplanned = [e for e in entries if e.kind == "fetch" and e.slug not in planned]
        calls = []
        for workflow_id, (topic, pages) in self.plan.items():
            then = f"{workflow_id}/summarize"
            calls.append(LogicalCall(key=f"web:{workflow_id}/search", subject=workflow_id, successor=then,
                                     entries=[(e.at, e.status) for e in entries
                                              if e.kind == "search" and e.query == topic]))
            explained = self.outcomes.get(workflow_id, ((), (), ()))[2]
            for slug in pages:
                fetched = [(e.at, e.status) for e in entries if e.kind == "fetch" and e.slug == slug]
                if not fetched and slug in explained:
                    # both attempts were killed before the GET left a slow worker: given up (counted
                    # with the kills above) with no fetch at all; whether a killed attempt reached the web
                    # first is the machine's speed, not the program's fault
                    self.counts["pages given up before any fetch reached the web"] += 1
                    continue
                calls.append(LogicalCall(key=f"web:{workflow_id}/{slug}", subject=workflow_id, successor=then,
                                         entries=fetched))
        return {"web": ("page fetch", calls)}

    # --- the end state --------------------------------------------------------------------------------

    async def verify(self, trial: int) -> list[Violation]:
        found = []
        for workflow_id, (topic, pages) in self.plan.items():
            result = self.results.get(workflow_id, "never started")
            read_none = workflow_id in self.outcomes and len(self.outcomes[workflow_id][2]) == len(pages)
            if not isinstance(result, dict) or not (result.get("summary") or read_none):
                found.append(Violation(trial, workflow_id, "workflow lost", f"{type(result).__name__}: {str(result)[:160]}",
                                       "ResearchWorkflow COMPLETED with a summary"))
                continue
            activities, given_up, explained = self.outcomes[workflow_id]
            expected_sources = [slug for slug in pages if slug not in explained]
            sources = [slug_of(url) for url in result.get("sources", [])]
            if sources != expected_sources or bool(result.get("partial")) != bool(explained):
                found.append(Violation(trial, workflow_id, "the result is not the summary of every page read",
                                       f"sources {sources}, partial={result.get('partial')} "
                                       f"({result.get('reason')!r}); given up: {given_up}",
                                       f"sources {expected_sources}, partial={bool(explained)}"))
            cost = result.get("total_cost", 0)
            if not (cost == 0 if read_none else 0 < cost <= 2.0):
                found.append(Violation(trial, workflow_id, "cost outside the budget", f"total_cost {cost}",
                                       "0 (no page left to summarize)" if read_none else "0 < cost <= $2.00"))
            completed = Counter(name for name, _, outcome in activities if outcome == "completed")
            want = {"search_web": 1, "extract_content": len(pages) - len(explained), "llm_summarize": int(not read_none)}
            if {name: completed[name] for name in want} != want:
                found.append(Violation(trial, workflow_id, "activities not each completed once in history",
                                       f"completed: {dict(completed)}", f"completed: {want}"))
        if self.strays:
            found.append(Violation(trial, "course LLM", "LLM calls outside any run",
                                   f"{len(self.strays)} request(s), e.g. {self.strays[0].prompt[:80]!r}",
                                   "every request carries the topic of one of the trial's runs"))
        if self.unplanned:
            found.append(Violation(trial, "course web", "fetches of pages no run planned",
                                   f"{sorted({e.slug for e in self.unplanned})}", "only the runs' search results"))
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
        self.web.reset_behaviours()

