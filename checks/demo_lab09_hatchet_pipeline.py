"""`lab demo 09`: the Lab 09 scenario on the reference solution, told from what was recorded.

It runs the autograder's own scenario (run_scenario in checks/test_lab09_hatchet_pipeline.py) on its own
course LLM (a free port, stopped at the end, or kept until Enter with --keep): four documents through
extract -> embed -> classify -> store, one task attempt per process. The LLM answers classify 429 for one
document as many times as classify may retry, and every time for another; one document's store runs a
second time. Then it shows the retry of the failing task only (each attempt, and which attempt sent each
LLM request), and the idempotent store (one row per document id after two runs).

It runs on hatchet-sdk's in-process mock (Task.mock_run), not on a Hatchet engine: the check plays the
engine (parents' order, retries), without backoff waits or a scheduler.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time

from rich.console import Console

from labkit import course
from labkit.pytest_plugin import graded_copy
from labkit.services import CourseLLM

LAB = "09"
DEMO_DIR = course.REPO / ".lab" / "demo"
NOTICE = ("This demo runs on hatchet-sdk's in-process mock (Task.mock_run), not on a Hatchet engine: the "
          "course plays the engine (parents' order, retries), with no backoff waits and no scheduler.")


def load_check(lab: course.Lab):
    name = f"_lab_check_{lab.slug}"
    if str(lab.check_path.parent) not in sys.path:  # the check imports its scenario module, as pytest lets it
        sys.path.insert(0, str(lab.check_path.parent))
    spec = importlib.util.spec_from_file_location(name, lab.check_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def attempt_line(attempt) -> str:
    if attempt.ok:
        return f"retry_count {attempt.retry_count}: returned {str(attempt.output)[:70]}"
    return f"retry_count {attempt.retry_count}: raised {(attempt.error or '').splitlines()[0][:70]}"


def run(console: Console, *, ui: bool = True, keep: bool = False) -> int:
    """Run the scenario on the reference solution; 0 when it went as the lab says. (`ui` is unused: no Web UI.)"""
    started = time.monotonic()
    lab = course.load().lab(LAB)
    check = load_check(lab)
    workdir = DEMO_DIR / "lab09-last-run"  # logs stay here after the demo
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    console.rule(f"lab demo {lab.id}: {lab.title}")
    console.print(f"[dim]{lab.summary}\nReference solution: solutions/{lab.slug}/ · logs: "
                  f"{workdir.relative_to(course.REPO)}/[/dim]")
    console.print(f"[yellow]{NOTICE}[/yellow]")
    llm = CourseLLM(workdir / "llm", rules_files=[course.COURSE_TOML]).launch()
    try:
        target = graded_copy(lab, lab.solution_dir, workdir / "graded")
        (workdir / "run").mkdir()
        found = check.run_scenario(llm, target, workdir / "run")
        if found.failure is not None:
            console.print(f"[red]the scenario could not run: {found.failure.summary}[/red]")
            return 1
        console.print(f"\nThe workflow's DAG, as a worker would register it: [bold]{' -> '.join(found.order)}[/bold]; "
                      f"classify may retry {found.retries('classify')} times")

        retried = found.runs["retried"]
        sent = {}
        for entry in found.ledger:
            attempt = check.sender(found, entry)
            if attempt is not None and attempt.doc == "retried":
                sent.setdefault(attempt.pid, []).append(entry.status)
        console.print(f"\n[bold]The retried document[/bold] ({retried.doc.doc_id}): the LLM answers classify 429 "
                      f"{retried.doc.classify_429} times. Every attempt is a process of its own; the LLM requests "
                      "it sent are read from the course LLM's ledger (X-Lab-Origin):")
        for attempt in retried.attempts:
            requests = ", ".join(str(status) for status in sent.get(attempt.pid, [])) or "none"
            console.print(f"  {attempt.task:<9} {attempt_line(attempt)}  · LLM requests: {requests}", markup=False)
        extract_calls = [e for e in check.tagged(found, "extract", retried.doc)]
        classify_attempts = retried.of("classify")
        console.print(f"  -> only classify ran again ({len(classify_attempts)} attempts); extract's LLM call was "
                      f"made {len(extract_calls)} time(s): its recorded output was handed to every retry")

        plain = found.runs["plain"]
        first, again = plain.outputs.get("store") or {}, plain.replayed_store
        rows = check.rows_of(found, plain.doc.doc_id)
        console.print(f"\n[bold]The idempotent store[/bold] ({plain.doc.doc_id}): store ran, then ran again with the "
                      "same parents' outputs (a worker that died after the commit, before it reported):")
        console.print(f"  first run:  {first}", markup=False)
        console.print(f"  second run: {again.output if again and again.ok else (again.error if again else 'none')}",
                      markup=False)
        console.print(f"  -> rows for {plain.doc.doc_id} in the table: {len(rows)}")

        exhausted = found.runs["exhausted"]
        console.print(f"\n[bold]The exhausted document[/bold] ({exhausted.doc.doc_id}): classify answered 429 every "
                      f"time: {len(exhausted.of('classify'))} attempts, the run failed at "
                      f"{exhausted.failed_task}, store ran {len(exhausted.of('store'))} times, "
                      f"{len(check.rows_of(found, exhausted.doc.doc_id))} rows")

        ok = (retried.finished and len(extract_calls) == 1
              and len(classify_attempts) == retried.doc.classify_429 + 1
              and [a.ok for a in classify_attempts] == [False] * retried.doc.classify_429 + [True]
              and again is not None and again.ok and len(rows) == 1
              and exhausted.failed_task == "classify" and not check.rows_of(found, exhausted.doc.doc_id))
        console.print(f"\n[{'green' if ok else 'red'}]{'as the lab says' if ok else 'NOT as the lab says'}"
                      f"[/{'green' if ok else 'red'}] in {time.monotonic() - started:.1f} s "
                      "(on mock_run, not a Hatchet engine)")
        if keep:
            input(f"course LLM {llm.base_url}: press Enter to stop it ")
        return 0 if ok else 1
    finally:
        llm.stop()
