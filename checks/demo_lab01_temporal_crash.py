"""`lab demo 01`: the Lab 01 crash scenario on the reference solution, told as it happens.

It runs the autograder's own scenario (Harness and run_scenario from
checks/test_lab01_temporal_crash.py), so what you watch is exactly what `lab check 01`
does to your code: a worker process, two AnalyzeWorkflow runs (B first: its first LLM
request fails with a 500 and Temporal retries call_llm; then A), parse_json failing on
attempt 1, SIGKILL during A's 2 s retry backoff, a new worker, and the evidence.
Services are its own: a Temporal dev server (with the Web UI unless --no-ui) and the
course LLM, on free ports, stopped at the end (or kept until Enter with --keep).

The story is told by watching the scenario's objects from a second task on the same
event loop, so the check file needs no hooks. The timeline of workflow A is printed
and written as SVG to .lab/demo/lab01-timeline.svg.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from labkit import course, temporal, timeline
from labkit.feedback import CheckFailed
from labkit.services import CourseLLM, ServiceError, TemporalServer, free_port

LAB = "01"
DEMO_DIR = course.REPO / ".lab" / "demo"
SVG_PATH = DEMO_DIR / "lab01-timeline.svg"


def load_check(lab: course.Lab):
    """The check module, imported from its path (checks/ is not a package)."""
    name = f"_lab_check_{lab.slug}"
    spec = importlib.util.spec_from_file_location(name, lab.check_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def graded_copy(lab: course.Lab, root: Path):
    """The reference solution, copied and importable as the lab's package (as the checks do)."""
    from labkit.pytest_plugin import COPY_IGNORE, LabTarget

    shutil.copytree(lab.solution_dir, root / lab.slug, ignore=COPY_IGNORE)
    (root / lab.slug / "__init__.py").touch()
    return LabTarget(lab=lab, source=lab.solution_dir, root=root, name=lab.slug)


class DemoServices:
    """What the check's Harness reads from the pytest `services` fixture, for our own servers."""

    def __init__(self, temporal_server: TemporalServer, llm: CourseLLM):
        self.temporal, self.course_llm = temporal_server, llm
        self.temporal_address = temporal_server.address
        self._llm_ready = False

    @property
    def llm(self) -> CourseLLM:
        """The course LLM once it answers (it finishes starting while the first worker starts)."""
        if not self._llm_ready:
            self.course_llm.wait_ready()
            self._llm_ready = True
        return self.course_llm

    @property
    def llm_base_url(self) -> str:
        return self.course_llm.base_url


def identity_of(identities: set[str], pid: int) -> str | None:
    """Temporal's default worker identity is "pid@host"."""
    return next((i for i in sorted(identities) if i.startswith(f"{pid}@")), next(iter(sorted(identities)), None))


class Narrator:
    """Tells each step of run_scenario when it has happened, by watching the harness and scenario."""

    def __init__(self, console: Console, harness, scenario, *, ui_url: str | None, started: float):
        self.console, self.harness, self.scenario = console, harness, scenario
        self.ui_url, self.started = ui_url, started
        self.restarted_at = 0.0
        h, s = harness, scenario
        self.script = [
            (lambda: len(h.workers) >= 1, self.worker_started),
            (lambda: s.old_identities, lambda: self.polling(0, s.old_identities)),
            (lambda: s.b.handle is not None, lambda: self.workflow_started(s.b)),
            (lambda: s.b.result is not None or s.b.failed, lambda: self.completed(s.b)),
            (lambda: s.a.handle is not None, lambda: self.workflow_started(s.a)),
            (lambda: s.backoff_at_kill is not None, lambda: self.in_backoff(s.a, s.backoff_at_kill)),
            (lambda: s.killed_at is not None, self.killed),
            (lambda: len(h.workers) >= 2, self.restarted),
            (lambda: s.new_identities, lambda: self.polling(1, s.new_identities)),
            (lambda: s.a.result is not None, lambda: self.completed(s.a)),
        ]
        self.told = 0

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:5.1f}s[/dim]  {message}")

    def step(self) -> None:
        while self.told < len(self.script) and self.script[self.told][0]():
            self.script[self.told][1]()
            self.told += 1

    async def watch(self, scenario_coro) -> None:
        """Run the scenario, telling its steps as they happen."""
        task = asyncio.ensure_future(scenario_coro)
        try:
            while not task.done():
                self.step()
                await asyncio.wait({task}, timeout=0.02)
            self.step()
            task.result()
        finally:
            if not task.done():
                task.cancel()

    # the steps
    def worker_started(self) -> None:
        worker = self.harness.workers[0]
        self.say(f"worker1 started: pid [bold]{worker.pid}[/bold]  "
                 f"[dim](python -m {self.harness.target.module('worker')}, its own OS process)[/dim]")

    def polling(self, index: int, identities: set[str]) -> None:
        worker = self.harness.workers[index]
        self.say(f"worker{index + 1} is polling task queue {self.harness.task_queue!r} "
                 f"as {identity_of(identities, worker.pid)}")

    def workflow_started(self, run) -> None:
        link = f"  {self.ui_url}/namespaces/default/workflows/{run.workflow_id}" if self.ui_url else ""
        extra = ""
        if run is self.scenario.b:
            extra = ("\n        [dim]its row was already committed by an earlier save that died before "
                     "reporting: the idempotent save must return it, not insert again; and the course LLM "
                     "answers its first request with a 500, which Temporal retries[/dim]")
        self.say(f"workflow {run.label} started: {run.workflow_id}{link}{extra}")

    def in_backoff(self, run, pending) -> None:
        due = (pending.next_attempt_at - datetime.now(timezone.utc)).total_seconds()
        self.say(f"workflow {run.label}: parse_json attempt {pending.attempt - 1} [red]failed[/red] "
                 f"({pending.last_failure}); retry due in {max(due, 0):.1f} s "
                 f"[dim](the timer runs on the server)[/dim]")

    def killed(self) -> None:
        self.say(f"[bold red]SIGKILL worker1 pid {self.scenario.killed_pid}[/bold red] during the backoff "
                 "[dim](no graceful shutdown: like a crash or an OOM kill)[/dim]")

    def restarted(self) -> None:
        self.say("told the server the worker is gone (ResetStickyTaskQueue) [dim]- a Ctrl-C shutdown does "
                 "this itself; after kill -9 the next workflow task would otherwise wait ~10 s on the dead "
                 "worker's sticky queue[/dim]")
        self.restarted_at = time.monotonic()
        self.say(f"worker2 started: pid [bold]{self.harness.workers[1].pid}[/bold]")

    def completed(self, run) -> None:
        note = ""
        if run is self.scenario.b:
            note = "  [dim](the row saved before the crash: no second insert)[/dim]"
            if run.failed:
                self.say(f"workflow {run.label} [red]failed[/red]: {run.failed}")
                return
        after = f", {time.monotonic() - self.restarted_at:.1f} s after the restart" if self.restarted_at else ""
        self.say(f"workflow {run.label} [green]completed[/green]: row id [bold]{run.result}[/bold]{after}{note}")


def run_timeline(scenario, harness) -> timeline.Timeline:
    """Workflow A's history, plus what only the scenario saw: attempt 1, the kill, the two workers."""
    worker1, worker2 = harness.workers[0], harness.workers[-1]
    first = identity_of(scenario.old_identities, worker1.pid)
    second = identity_of(scenario.new_identities, worker2.pid)
    names = {first: "worker1", second: "worker2"}
    return timeline.build(
        scenario.a.history,
        attempts=[timeline.Attempt.from_pending(scenario.backoff_at_kill)],
        marks=[timeline.Mark.kill(scenario.killed_at, first, f"SIGKILL pid {worker1.pid}"),
               timeline.Mark.start(datetime.fromtimestamp(worker2.started_at, timezone.utc), second,
                                   f"new worker, pid {worker2.pid}")],
        workers={k: v for k, v in names.items() if k})


def report(console: Console, scenario, harness, found: timeline.Timeline) -> None:
    console.print()
    console.print(timeline.rich_table(found))
    SVG_PATH.parent.mkdir(parents=True, exist_ok=True)
    SVG_PATH.write_text(timeline.svg(found))
    console.print(f"\n[dim]timeline picture:[/dim] {SVG_PATH.relative_to(course.REPO)}")

    ledger = harness.services.llm.ledger().entries(caller=harness.api_key)
    a, b = scenario.a, scenario.b
    answered = {run.label: sum(1 for e in run.llm_requests if e.ok) for run in (a, b)}
    console.print(f"\n[bold]LLM calls for this run: {answered['A']}[/bold]  (workflow A; workflow B: "
                  f"{answered['B']}, after one 500 that Temporal retried; {len(ledger)} requests in the course "
                  "LLM's ledger for this demo, each made by " + ", ".join(sorted({
                      str(e.activity_type) for e in ledger})) + ")")
    runs = temporal.activity_runs(a.history)
    console.print("history of A: " + ", ".join(f"{r.name} {r.outcome} on attempt {r.attempt}" for r in runs))
    console.print(f"rows in SQLite: A → {a.rows}, B → {b.rows}")
    verdict = scenario.replay
    console.print("replay of A's history against the workflow code: "
                  + ("[green]no non-determinism[/green]" if verdict and verdict.ok
                     else f"[red]{verdict.error if verdict else 'not run'}[/red]"))


def run(console: Console, *, ui: bool = True, keep: bool = False) -> int:
    """Run the crash scenario on the reference solution; 0 when it went as the lab says."""
    started = time.monotonic()
    lab = course.load().lab(LAB)
    check = load_check(lab)
    workdir = DEMO_DIR / "last-run"  # logs stay here after the demo, for the curious
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    console.rule(f"lab demo {lab.id}: {lab.title}")
    console.print(f"[dim]{lab.summary}\nReference solution: solutions/{lab.slug}/ · "
                  f"logs: {workdir.relative_to(course.REPO)}/[/dim]")

    temporal_server = TemporalServer(workdir / "services", ui_port=free_port() if ui else None)
    llm = CourseLLM(workdir / "services", rules_files=[course.COURSE_TOML])
    harness = None
    try:
        for service in (llm, temporal_server):
            service.launch()
        temporal_server.wait_ready()  # the LLM finishes starting meanwhile; services.llm waits for it
        console.print(f"[dim]{time.monotonic() - started:5.1f}s[/dim]  Temporal dev server on "
                      f"{temporal_server.address}" + (f", Web UI at [bold]{temporal_server.ui_url}[/bold]"
                                                       if ui else " (no Web UI)")
                      + f"; course LLM at {llm.base_url}")
        services = DemoServices(temporal_server, llm)
        key = uuid.uuid4().hex[:8]
        harness = check.Harness(graded_copy(lab, workdir / "graded"), services, workdir, key)
        rng = check.random.Random(key)
        scenario = check.Scenario(a=check.new_run("A", key, rng), b=check.new_run("B", key, rng),
                                  seeded_row_id=rng.randrange(10_000, 2_000_000_000))
        narrator = Narrator(console, harness, scenario, ui_url=temporal_server.ui_url,
                            started=started)
        try:
            asyncio.run(narrator.watch(check.run_scenario(harness, scenario, key, rng)))
        except CheckFailed as failure:
            console.print(f"[red]the scenario did not go as planned:[/red]\n{failure.render()}")
            return 1
        finally:
            harness.close()

        report(console, scenario, harness, run_timeline(scenario, harness))
        console.print(f"[dim]demo finished in {time.monotonic() - started:.1f} s[/dim]")
        ok = (all(sum(1 for e in run.llm_requests if e.ok) == 1 for run in (scenario.a, scenario.b))
              and scenario.replay is not None and scenario.replay.ok)
        if keep:
            hold(console, temporal_server, scenario)
        return 0 if ok else 1
    except ServiceError as err:
        console.print(f"[red]a service did not start:[/red] {err}")
        return 2
    finally:
        llm.stop()
        temporal_server.stop()


def hold(console: Console, temporal_server: TemporalServer, scenario) -> None:
    where = (f"Web UI: {temporal_server.ui_url}/namespaces/default/workflows/{scenario.a.workflow_id}"
             if temporal_server.ui_url else f"Temporal at {temporal_server.address}")
    console.print(f"\nThe servers are still up. {where}\nPress Enter (or Ctrl-C) to stop them.")
    try:
        input()
    except (EOFError, KeyboardInterrupt):
        pass


if __name__ == "__main__":  # python checks/demo_lab01_temporal_crash.py [--no-ui] [--keep]
    sys.exit(run(Console(), ui="--no-ui" not in sys.argv, keep="--keep" in sys.argv))
