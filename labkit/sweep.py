"""Crash sweep: kill a lab's processes at seeded random moments, restart, and audit the invariants.

A check kills one process at one chosen moment; a sweep kills at K moments drawn from a seed,
trial after trial, and proves the same invariants every time: nothing lost, one row per run, and
each logical LLM call made exactly once, except the calls a kill caught in flight (the
at-least-once window), which are counted and reported apart, never hidden.

This module is the lab-independent engine. A lab supplies a `Scenario` (how to start its
workflows or threads, what to kill, where a kill landed, what is durably recorded, how to verify
the end state); the engine owns the schedule, the kill/restart loop, the proof that each kill
fired, the audit of the LLM ledger, and the report.

Where a lab's scenario lives, by convention (as `lab demo` finds checks/demo_<slug>.py):
checks/scenario_<slug>.py, beside the lab's check, which imports from it what both need. The
module defines `Sweep(workdir, path=None, **options)`, a `Scenario`; `load_scenario` builds it.

The LLM-call rule, precisely (see docs/design.md, "Crash sweep"):
  a logical call L is *in flight at kill j* when
    (a) the course LLM's ledger has an entry for L that arrived during epoch j (after the
        previous restart and before restart j),
    (b) L's result is not durably recorded in the snapshot taken after kill j, before restart
        (Temporal: ActivityTaskCompleted; LangGraph: the checkpoint of L's step), and
    (c) L's successor in program order had not been called before restart j (once the next
        call went out, the program had L's result: a repeat of L is the program's fault);
  L may then be repeated at most (#kills with L in flight) + (#injected faults among L's
  entries) times. Repeats within that allowance are reported as at-least-once; any other
  repeat, or a logical call never made, is a violation.

The same rule audits any other durable ledger a lab has beside the LLM's (the notification sink's
receipts, the course web's fetches): a scenario may return them from `ledgers()`, one list of
logical calls per ledger name, and the report keeps a tally per ledger.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from . import course

SETTLE_S = 0.2  # after a kill: lets requests the dead process had already written reach the servers


# --- the schedule --------------------------------------------------------------------------------

def kill_delays(seed: int, trial: int, kills: int, window: tuple[float, float]) -> list[float]:
    """Seconds from each (re)start's readiness to its kill: the same seed, the same moments."""
    rng = random.Random(f"{seed}/{trial}")  # a string seed is stable across Python versions
    low, high = window
    return [round(rng.uniform(low, high), 3) for _ in range(kills)]


# --- evidence ------------------------------------------------------------------------------------

@dataclass
class Kill:
    trial: int
    index: int
    planned_after_s: float
    epoch_start: float = 0.0  # wall clock: this epoch's processes were started
    at: float = 0.0  # wall clock of the SIGKILL
    restart_at: float = 0.0  # wall clock: the next processes were started
    victims: list[int] = field(default_factory=list)  # pids alive before and dead of SIGKILL after
    exited_first: list[int] = field(default_factory=list)  # alive at the check, exited on their own before the signal
    fired: bool = False  # at least one process was alive before and died of SIGKILL
    landed: list[str] = field(default_factory=list)  # where the kill found each workflow / thread
    recorded: set[str] = field(default_factory=set)  # logical calls durably recorded at the kill
    in_flight: set[str] = field(default_factory=set)  # filled by the audit


@dataclass
class LogicalCall:
    """One LLM call the program is meant to make once, and every ledger entry it caused."""

    key: str
    subject: str  # the workflow / thread it belongs to
    successor: str | None  # the next logical call of the same subject, in program order
    entries: list[tuple[float, int]]  # (arrival time, HTTP status) per ledger entry


@dataclass
class Violation:
    trial: int
    subject: str
    invariant: str
    observed: str
    expected: str

    def line(self) -> str:
        return (f"trial {self.trial + 1} {self.subject}: {self.invariant}\n"
                f"    observed: {self.observed}\n    expected: {self.expected}")


@dataclass
class CallAudit:
    logical_calls: int = 0
    in_flight: int = 0  # (kill, logical call) pairs: calls caught in flight
    at_least_once: int = 0  # repeats explained by a kill
    scripted: int = 0  # repeats explained by an injected fault
    violations: list[Violation] = field(default_factory=list)


def mark_in_flight(kills: Sequence[Kill], calls: Sequence[LogicalCall]) -> None:
    """Rule (a)-(c) of the module docstring, for every fired kill."""
    by_key = {call.key: call for call in calls}
    for kill in kills:
        if not kill.fired:
            continue
        for call in calls:
            arrived = any(kill.epoch_start <= at < kill.restart_at for at, _ in call.entries)
            successor = by_key.get(call.successor) if call.successor else None
            moved_on = successor is not None and any(at < kill.restart_at for at, _ in successor.entries)
            if arrived and call.key not in kill.recorded and not moved_on:
                kill.in_flight.add(call.key)


def audit_calls(trial: int, kills: Sequence[Kill], calls: Sequence[LogicalCall], origin: float = 0.0,
                what: str = "LLM call") -> CallAudit:
    """Apply the rule; `origin` (the trial's start, wall clock) only makes the times in messages readable;
    `what` names one logical call of this ledger in messages ("LLM call", "send", "page fetch")."""
    mark_in_flight(kills, calls)
    keys = {call.key for call in calls}  # kills may also hold other ledgers' in-flight keys
    audit = CallAudit(logical_calls=len(calls), in_flight=sum(len(k.in_flight & keys) for k in kills))
    for call in calls:
        windows = [k.index + 1 for k in kills if call.key in k.in_flight]
        faults = sum(1 for _, status in call.entries if status != 200)
        if not call.entries:
            audit.violations.append(Violation(trial, call.subject, f"{what} {call.key} never made",
                                              "0 ledger entries", "exactly 1"))
            continue
        repeats = len(call.entries) - 1
        if repeats > len(windows) + faults:
            audit.violations.append(Violation(
                trial, call.subject, f"{what} {call.key} repeated without a kill to explain it",
                f"{len(call.entries)} ledger entries at "
                + ", ".join(f"+{at - origin:.2f}s" for at, _ in call.entries)
                + " (kills at " + ", ".join(f"+{k.at - origin:.2f}s" for k in kills if k.fired) + ")"
                + f"; in flight at kill(s) {windows or 'none'}; injected faults {faults}",
                f"at most {1 + len(windows) + faults}: 1, plus 1 per kill that caught it in flight, "
                "plus 1 per injected fault"))
            continue
        audit.scripted += min(repeats, faults)
        audit.at_least_once += repeats - min(repeats, faults)
    return audit


# --- the lab's part ------------------------------------------------------------------------------

class Process(Protocol):  # proc.ManagedProcess and prefork.Child both fit
    pid: int

    @property
    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...


class Scenario(Protocol):
    """What a lab tells the engine. Every method is called from the sweep's event loop (main thread)."""

    lab: str
    kill_window: tuple[float, float]  # seconds after readiness

    async def start(self) -> None: ...  # the servers, once per sweep
    async def stop(self) -> None: ...
    async def begin_trial(self, trial: int, gate: asyncio.Event) -> None: ...  # feed work while gate is set
    async def wait_ready(self) -> None: ...
    def processes(self) -> list[Process]: ...  # what a kill kills
    async def landings(self) -> list[str]: ...  # after a kill: where it found each subject
    async def after_kill(self) -> None: ...  # tell the servers what a graceful stop would have
    async def recorded(self) -> set[str]: ...  # logical calls whose result is durable
    async def restart(self) -> None: ...
    async def finish(self) -> None: ...  # after the last restart: run to completion
    async def logical_calls(self) -> list[LogicalCall]: ...
    # optional: other ledgers audited by the same rule, {name: (what one call is, its logical calls)};
    # their keys must differ from the LLM's (and be listed in recorded() when durable)
    # async def ledgers(self) -> dict[str, tuple[str, list[LogicalCall]]]: ...
    # optional: outcomes the lab counts but does not fail, across the sweep ({"pages given up": 2})
    # def tallies(self) -> dict[str, int]: ...
    async def verify(self, trial: int) -> list[Violation]: ...  # nothing lost, one row per run, ...
    async def end_trial(self) -> None: ...


# --- where a lab's scenario lives -----------------------------------------------------------------

CHECKS_DIR = course.REPO / "checks"


class NoScenario(LookupError):
    """The lab has no crash sweep; the message says so plainly."""


def scenario_path(lab: course.Lab) -> Path:
    """checks/scenario_<slug>.py: the lab's scenario, beside its check (the same naming as its demo)."""
    return CHECKS_DIR / f"scenario_{lab.slug}.py"


def scenario_module(lab: course.Lab):
    """The lab's scenario module, imported by its own name with checks/ on sys.path, exactly as a
    check imports it (`import scenario_<slug>`), so the check and the sweep share one module object."""
    path = scenario_path(lab)
    if not path.exists():
        raise NoScenario(f"lab {lab.id} has no crash sweep yet: no {path.relative_to(course.REPO)} "
                         "(the scenario a sweep runs lives beside the lab's check)")
    if str(CHECKS_DIR) not in sys.path:
        sys.path.insert(0, str(CHECKS_DIR))
    return importlib.import_module(path.stem)


def load_scenario(lab: course.Lab, **options) -> "Scenario":
    """The lab's scenario, ready to run: `Sweep(workdir=..., path=..., subjects=..., ...)`."""
    module = scenario_module(lab)
    if not hasattr(module, "Sweep"):
        raise NoScenario(f"{scenario_path(lab).relative_to(course.REPO)} defines no `Sweep` class")
    return module.Sweep(**options)


# --- one trial, in a line and in a picture ------------------------------------------------------

@dataclass
class TrialSummary:
    trial: int  # index; people see trial + 1
    kills: int
    kills_fired: int
    in_flight: int  # calls caught in flight by a kill, every ledger
    at_least_once: int  # repeats those explain, every ledger
    violations: int
    kill_offsets: list[float] = field(default_factory=list)  # seconds after each (re)start

    def line(self, trials: int | str = "") -> str:
        verdict = f"{self.violations} violation(s)" if self.violations else "0 violations"
        return (f"trial {self.trial + 1}{'/' + str(trials) if trials else ''}: {self.kills_fired}/{self.kills} kills "
                f"fired at +{', +'.join(f'{d:.2f}' for d in self.kill_offsets)} s; {self.at_least_once} at-least-once "
                f"repeat(s) ({self.in_flight} caught in flight); {verdict}")


PICTURE_LEGEND = [("complete", "answered"), ("disconnected", "in flight when a kill landed"),
                  ("failed", "injected fault (not 200)")]


def picture(calls: Sequence[LogicalCall], kills: Sequence[Kill], *, reply_s: float = 0.3, title: str = "") -> str:
    """Where the kills landed: one bar per ledger entry of every logical call (a call's second entry is
    its own row, "key (2)"), from its arrival for `reply_s` (the course LLM's reply delay), red when the
    kill that ended its epoch caught it in flight (the audit's rule); a dashed line per kill. Drawn with
    labkit.gantt."""
    from .gantt import svg
    from .web import WebEntry

    keys = [call.key for call in calls]
    prefix = _common_prefix(keys)
    fired = [k for k in kills if k.fired]
    entries = []
    for call in calls:
        for n, (at, status) in enumerate(call.entries):
            cut = any(k.epoch_start <= at < k.restart_at and call.key in k.in_flight for k in fired)
            entries.append(WebEntry(id=len(entries), at=at, caller="", kind="fetch", slug=call.key[len(prefix):],
                                    query=None, status=status, fault=None, bytes=0, finished_at=at + reply_s,
                                    outcome="failed" if status != 200 else "disconnected" if cut else "complete"))
    marks = [(k.at, f"kill {k.index + 1}") for k in fired]
    return svg(entries, marks=marks, title=title, legend=PICTURE_LEGEND, words=True)


def _common_prefix(keys: Sequence[str]) -> str:
    """The keys' shared start, cut back to a separator, so rows read "w0/call_llm", not the run's ids."""
    if len(keys) < 2:
        return ""
    shared = keys[0]
    for key in keys[1:]:
        while not key.startswith(shared):
            shared = shared[:-1]
    cut = max(shared.rfind("-"), shared.rfind("/"), shared.rfind("_"))
    return shared[:cut + 1] if cut >= 0 else ""


# --- the report ----------------------------------------------------------------------------------

@dataclass
class Report:
    lab: str
    seed: int
    trials: int
    kills_per_trial: int
    command: str
    kills: list[Kill] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    logical_calls: int = 0
    in_flight: int = 0
    at_least_once: int = 0
    scripted: int = 0
    ledgers: dict[str, CallAudit] = field(default_factory=dict)  # the other ledgers' tallies (violations in `violations`)
    tallies: dict[str, int] = field(default_factory=dict)  # the scenario's counted, not failed, outcomes
    wall_s: float = 0.0
    only_trial: int | None = None  # the one trial (index) a re-run ran, else None: trials 0..trials-1
    per_trial: list[TrialSummary] = field(default_factory=list)
    picture_trial: int | None = None  # the first trial with a violation, drawn in `picture` (SVG)
    picture: str = ""

    def add_ledger(self, name: str, audit: CallAudit) -> None:
        tally = self.ledgers.setdefault(name, CallAudit())
        tally.logical_calls += audit.logical_calls
        tally.in_flight += audit.in_flight
        tally.at_least_once += audit.at_least_once
        tally.scripted += audit.scripted

    @property
    def kills_fired(self) -> int:
        return sum(k.fired for k in self.kills)

    @property
    def landings(self) -> Counter:
        return Counter(label for kill in self.kills if kill.fired for label in kill.landed)

    def summary(self) -> str:
        which = f"trial {self.only_trial + 1} only" if self.only_trial is not None else f"{self.trials} trial(s)"
        return (f"crash sweep lab {self.lab}: seed {self.seed}, {which}, "
                f"{self.kills_fired}/{len(self.kills)} kills fired, {len(self.violations)} violation(s), "
                f"{self.at_least_once} at-least-once repeat(s) ({self.in_flight} call(s) caught in flight), "
                f"{self.logical_calls} logical LLM calls"
                + "".join(f"; {name}: {t.logical_calls} logical, {t.at_least_once} at-least-once repeat(s) "
                          f"({t.in_flight} caught in flight)" for name, t in self.ledgers.items())
                + f", {self.wall_s:.1f} s")

    def render(self) -> str:
        lines = [self.summary(), f"re-run: {self.command}", "kills landed:"]
        lines += [f"  {count:3d} x {label}" for label, count in self.landings.most_common()]
        if self.tallies:
            lines.append("counted, not failed: " + ", ".join(f"{name} {n}" for name, n in self.tallies.items()))
        missed = [k for k in self.kills if not k.fired]
        if missed:
            lines.append(f"kills that found no live process: {len(missed)}")
        lines += [v.line() for v in self.violations]
        return "\n".join(lines)

    def to_json(self) -> str:
        data = asdict(self)
        for tally in data["ledgers"].values():
            tally.pop("violations")
        for kill in data["kills"]:
            kill["recorded"], kill["in_flight"] = sorted(kill["recorded"]), sorted(kill["in_flight"])
        data.pop("picture")
        data.update(kills_fired=self.kills_fired, landings=dict(self.landings), summary=self.summary())
        return json.dumps(data, indent=2)


# --- the loop ------------------------------------------------------------------------------------

def kill_all(processes: Sequence[Process]) -> tuple[list[int], list[int]]:
    """SIGKILL every live process (whole groups): (pids that died of it, pids that exited on their own
    between the liveness check and the signal, a race the report shows rather than hides)."""
    alive = [p for p in processes if p.alive]
    for process in alive:
        process.kill()
    killed = [p.pid for p in alive if p.returncode == -signal.SIGKILL]
    return killed, [p.pid for p in alive if p.pid not in killed]


@dataclass
class Trial:
    kills: list[Kill]
    violations: list[Violation]
    audit: CallAudit
    others: dict[str, CallAudit]
    calls: list[LogicalCall]  # every ledger's logical calls (for the picture)
    started: float  # wall clock


async def run_trial(scenario: Scenario, trial: int, delays: list[float], log=print) -> Trial:
    gate = asyncio.Event()
    gate.set()
    epoch_start = trial_start = time.time()
    await scenario.begin_trial(trial, gate)
    kills = []
    try:
        await scenario.wait_ready()
        for index, delay in enumerate(delays):
            kill = Kill(trial=trial, index=index, planned_after_s=delay, epoch_start=epoch_start)
            await asyncio.sleep(delay)
            gate.clear()  # no new work starts between the kill and the restart
            kill.at = time.time()
            kill.victims, kill.exited_first = kill_all(scenario.processes())
            kill.fired = bool(kill.victims)
            kill.landed = await scenario.landings()
            await scenario.after_kill()
            await asyncio.sleep(SETTLE_S)
            kill.recorded = await scenario.recorded()
            kill.restart_at = epoch_start = time.time()
            await scenario.restart()
            gate.set()
            kills.append(kill)
            log(f"  trial {trial + 1} kill {index + 1}/{len(delays)} at +{delay:.2f}s: "
                + (f"SIGKILLed pid {', '.join(map(str, kill.victims))}" if kill.fired else "no live process")
                + (f" (pid {', '.join(map(str, kill.exited_first))} exited on its own first)" if kill.exited_first else "")
                + f"; landed: {', '.join(kill.landed) or '-'}")
            await scenario.wait_ready()
        await scenario.finish()
        calls = await scenario.logical_calls()
        audit = audit_calls(trial, kills, calls, origin=trial_start)
        others = {}
        every_call = list(calls)
        if hasattr(scenario, "ledgers"):
            for name, (what, entries) in (await scenario.ledgers()).items():
                others[name] = audit_calls(trial, kills, entries, origin=trial_start, what=what)
                every_call += entries
        # the end state first (a run lost, a row doubled): it says more than the ledgers' counts that follow
        violations = [*await scenario.verify(trial), *audit.violations,
                      *(v for other in others.values() for v in other.violations)]
    finally:
        gate.set()
        await scenario.end_trial()
    for kill in kills:
        if kill.in_flight:
            log(f"  trial {trial + 1} kill {kill.index + 1} caught in flight: {', '.join(sorted(kill.in_flight))}")
    return Trial(kills, violations, audit, others, every_call, trial_start)


async def run_sweep(scenario: Scenario, *, seed: int, trials: int, kills: int, command: str,
                    log=print, only_trial: int | None = None,
                    on_trial: Callable[[TrialSummary], None] | None = None) -> Report:
    """`trials` trials (indexes 0..trials-1), or only the trial `only_trial` (an index): its kill moments
    come from (seed, index) alone, so one trial of a sweep re-runs by itself."""
    report = Report(lab=scenario.lab, seed=seed, trials=trials if only_trial is None else 1,
                    kills_per_trial=kills, command=command, only_trial=only_trial)
    started = time.monotonic()
    which = f"trial {only_trial + 1} only" if only_trial is not None else f"{trials} trial(s)"
    log(f"crash sweep lab {scenario.lab}: seed {seed}, {which} x {kills} kill(s); re-run: {command}")
    await scenario.start()
    try:
        for trial in (range(trials) if only_trial is None else [only_trial]):
            delays = kill_delays(seed, trial, kills, scenario.kill_window)
            result = await run_trial(scenario, trial, delays, log)
            audit, others = result.audit, result.others
            report.kills += result.kills
            report.violations += result.violations
            report.logical_calls += audit.logical_calls
            report.in_flight += audit.in_flight
            report.at_least_once += audit.at_least_once
            report.scripted += audit.scripted
            for name, other in others.items():
                report.add_ledger(name, other)
            summary = TrialSummary(
                trial=trial, kills=len(delays), kills_fired=sum(k.fired for k in result.kills),
                in_flight=audit.in_flight + sum(o.in_flight for o in others.values()),
                at_least_once=audit.at_least_once + sum(o.at_least_once for o in others.values()),
                violations=len(result.violations), kill_offsets=delays)
            report.per_trial.append(summary)
            if result.violations and report.picture_trial is None:
                report.picture_trial = trial
                report.picture = picture(result.calls, result.kills, reply_s=getattr(scenario, "latency_ms", 300) / 1000,
                                         title=f"lab {scenario.lab}, seed {seed}, trial {trial + 1}: where the kills "
                                               f"landed (first violation: {result.violations[0].subject})")
            if on_trial is not None:
                on_trial(summary)
        report.tallies = dict(scenario.tallies()) if hasattr(scenario, "tallies") else {}
    finally:
        await scenario.stop()
    report.wall_s = time.monotonic() - started
    return report
