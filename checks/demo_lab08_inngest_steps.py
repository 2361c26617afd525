"""`lab demo 08`: the Lab 08 scenario on the reference solution, told from what was recorded.

It runs the autograder's own scenario (run_scenario in checks/test_lab08_inngest_steps.py) on its own
course LLM and course web (free ports, stopped at the end, or kept until Enter with --keep): every
page held until all the page steps are downloading, the first page failing once, one page failing
every time, the LLM failing once. Then it shows the executor's trace (each call of the function body),
the web's ledger (the fan-out and the retries) and the event. It runs on the in-process executor, not
on an Inngest server.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time

from rich.console import Console

from labkit import course, gantt
from labkit.pytest_plugin import graded_copy
from labkit.services import CourseLLM
from labkit.web import CourseWeb

LAB = "08"
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
    check = load_check(lab)
    workdir = DEMO_DIR / "lab08-last-run"  # logs stay here after the demo
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    console.rule(f"lab demo {lab.id}: {lab.title}")
    console.print(f"[dim]{lab.summary}\nReference solution: solutions/{lab.slug}/ · logs: "
                  f"{workdir.relative_to(course.REPO)}/[/dim]")
    console.print(f"[yellow]{check.NOTICE}[/yellow]")
    llm = CourseLLM(workdir / "llm", rules_files=[course.COURSE_TOML]).launch()
    web = CourseWeb(workdir / "web").launch()
    try:
        target = graded_copy(lab, lab.solution_dir, workdir / "graded")
        (workdir / "run").mkdir()
        found = check.run_scenario(llm.wait_ready(), web.wait_ready(), target, workdir / "run")
        console.print(f"\nevent: [bold]{found.topic!r}[/bold], {found.max_pages} pages, run id {found.run_id}; "
                      f"page {found.failing_slug} fails once, page {found.dead_slug} fails every time, "
                      "the LLM fails once")
        console.print(f"\n[bold]The function body was called {found.body_calls} times[/bold] "
                      "(the executor's trace):")
        for record in found.trace:
            if record["event"] == "body":
                what = f"runs step {record['target']!r} (attempt {record['attempt']})" if record["target"] \
                    else "plans the next step(s), or returns"
                console.print(f"  call {record['n']:>2}: {what}", markup=False)
            elif record["event"] == "step-done" and record["outcome"] == "failed":
                console.print(f"           step {record['step']!r} gave up: {record['error'][:80]}", markup=False)
        console.print("\n[bold]Every download, as the course web recorded it[/bold] (held until all page steps "
                      f"were downloading: {found.overlap} at once):")
        console.print(gantt.table(found.fetches), markup=False)
        sent = [e for r in found.sent for e in r["events"]]
        console.print(f"\n[bold]Events sent: {len(sent)}[/bold] "
                      + "; ".join(f"{e['name']} sources={len(e['data'].get('sources', []))}" for e in sent))
        ok = found.completed and len(sent) == 1 and found.overlap >= 2
        console.print(f"\n[{'green' if ok else 'red'}]{'as the lab says' if ok else 'NOT as the lab says'}"
                      f"[/{'green' if ok else 'red'}] in {time.monotonic() - started:.1f} s")
        if keep:
            input(f"course LLM {llm.base_url}, course web {web.base_url}: press Enter to stop them ")
        return 0 if ok else 1
    finally:
        web.stop()
        llm.stop()
