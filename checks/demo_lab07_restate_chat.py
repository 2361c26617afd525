"""`lab demo 07`: the Lab 07 crash scenario on the reference solution, and what each server recorded.

It runs the autograder's own scenario (Lab07Harness and run_scenario from
checks/test_lab07_restate_chat.py) on its own servers (restate-server, the course LLM, the team
chat sink, on free ports, stopped at the end or kept until Enter with --keep): session A's ask is
SIGKILLed in its second model call, after its first call and its post; a new service finishes it;
then the single-writer and shared-history steps. The story is told from the evidence: Restate's
journal (admin SQL), the LLM's ledger (which pid made each call) and the sink's record.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import time
import uuid

from rich.console import Console

from labkit import course, restate
from labkit.feedback import CheckFailed
from labkit.pytest_plugin import graded_copy
from labkit.services import CourseLLM, ServiceError
from labkit.sink import NotificationSink

LAB = "07"
DEMO_DIR = course.REPO / ".lab" / "demo"


def load_check(lab: course.Lab):
    name = f"_lab_check_{lab.slug}"
    spec = importlib.util.spec_from_file_location(name, lab.check_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run(console: Console, *, ui: bool = True, keep: bool = False) -> int:
    """Run the scenario on the reference solution; 0 when it went as the lab says."""
    started = time.monotonic()
    lab = course.load().lab(LAB)
    reason = restate.unavailable()
    if reason:
        console.print(f"[yellow]lab demo 07 needs the Restate server: {reason}[/yellow]")
        return 2
    check = load_check(lab)
    workdir = DEMO_DIR / "lab07-last-run"  # logs stay here after the demo
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    console.rule(f"lab demo {lab.id}: {lab.title}")
    console.print(f"[dim]{lab.summary}\nReference solution: solutions/{lab.slug}/ · logs: "
                  f"{workdir.relative_to(course.REPO)}/[/dim]")
    llm = CourseLLM(workdir / "llm", rules_files=[course.COURSE_TOML]).launch()
    sink = NotificationSink(workdir / "sink").launch()
    server = None
    harness = None
    try:
        server = restate.RestateServer(workdir / "restate").start()
        llm.wait_ready()
        sink.wait_ready()
        console.print(f"[dim]{time.monotonic() - started:5.1f}s[/dim]  restate-server {restate.version()}: ingress "
                      f"{server.ingress_url}, admin API and Web UI [bold]{server.admin_url}[/bold]")
        target = graded_copy(lab, lab.solution_dir, workdir / "graded")
        token = f"lab-demo07-{uuid.uuid4().hex[:6]}"
        scenario = check.Scenario(asks=check.make_asks(), token=token, server=server)
        harness = check.Lab07Harness(target, llm, sink, server, workdir, token)
        try:
            check.run_scenario(harness, scenario)
        except CheckFailed as failure:
            console.print(f"[red]the scenario stopped: {failure.render()}[/red]")
            return 1
        console.print(f"[dim]{time.monotonic() - started:5.1f}s[/dim]  scenario done")
        report(console, check, scenario, harness, server)
        if keep:
            input("servers are up (Web UI above); press Enter to stop them ")
        return 0
    except ServiceError as err:
        console.print(f"[red]{err}[/red]")
        return 1
    finally:
        for service in (harness.processes if harness else []):
            service.stop()
        with contextlib.suppress(Exception):
            sink.release()
        for stop in (server.stop if server else None, sink.stop, llm.stop):
            if stop:
                stop()


def report(console: Console, check, scenario, harness, server) -> None:
    a1 = scenario.asks["A1"]
    ledger = harness.ledger()
    console.print(f"\n[bold]A1[/bold] (session {a1.session}): {a1.question!r}")
    console.print(f"  killed service pid {scenario.killed_pid} while its second model call was in flight")
    console.print("  journal at the kill: " + ", ".join(
        ("(its result)" if e["entry_type"].startswith("Notification") else
         e["entry_type"].split(": ")[1] + (f" {e['name']!r}" if e.get("name") else "")) for e in scenario.journal_at_kill))
    calls = [e for e in ledger if a1.marker in e.prompt]
    console.print("  model calls (turn: pid): " + ", ".join(f"{e.turn}: {(e.origin or {}).get('pid')}" for e in calls)
                  + "  ← turn 0 once (replayed from the journal), turn 1 once per process")
    posts = [a for a in harness.sink.attempts(caller=harness.token) if a.channel == a1.post["channel"]]
    console.print(f"  posts to {a1.post['channel']}: {len(posts)} attempt(s), "
                  f"{sum(a.outcome == 'delivered' for a in posts)} delivered")
    console.print(f"  answer after the restart: {a1.answer!r}")
    console.print(f"\n[bold]single writer[/bold]: while C1 was held, {scenario.statuses_while_held}")
    console.print(f"[bold]stored conversation[/bold] of {a1.session}: "
                  f"{len(next(iter(server.state('ChatSession', a1.session).get(a1.session, {}).values()), []))} messages "
                  "(SELECT ... FROM state)")
