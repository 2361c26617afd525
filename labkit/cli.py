"""`lab`: the course's command line, a thin layer over pytest and labkit (modelled on rustlings).

    lab list | lab up | lab down | lab doctor
    lab check NN [--path DIR | --solution]
    lab hint NN      lab demo NN
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from . import course, state
from .course import REPO

app = typer.Typer(help="Durable Agents Lab: run, check and grade the labs.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode="rich")
console = Console(highlight=False, soft_wrap=True)


def find_lab(key: str) -> course.Lab:
    try:
        return course.load().lab(key)
    except KeyError as err:
        console.print(f"[red]{err.args[0]}[/red]")
        raise typer.Exit(2) from None


@app.command("list")
def list_labs() -> None:
    """Every lab in course.toml, with your progress."""
    labs = course.load().labs
    progress = state.Progress.load()
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("lab", "title", "text §", "status"):
        table.add_column(column)
    for lab in labs:
        done = progress.passed(lab.id)
        status = "[green]done[/green]" if done else "[yellow]pending[/yellow]"
        table.add_row(lab.id, lab.title, lab.section.split(" ")[0], status)
    console.print(table)
    done_count = sum(progress.passed(lab.id) for lab in labs)
    bar = Progress(TextColumn("progress"), BarColumn(), TextColumn("{task.completed}/{task.total} labs"),
                   console=console)
    bar.add_task("", total=len(labs), completed=done_count)
    console.print(bar.get_renderable())
    pending = next((lab for lab in labs if not progress.passed(lab.id)), None)
    if pending:
        console.print(f"next: [bold]lab check {pending.id}[/bold]  (files: labs/{pending.slug}/"
                      f"{{{','.join(pending.edits)}}})")


def run_checks(lab: course.Lab, target_args: list[str], verbose: bool) -> list[dict]:
    """Run the lab's pytest checks in a child process and return the per-check records."""
    with tempfile.TemporaryDirectory(prefix="lab-check-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "pytest", str(lab.check_path), "-q", "-p", "no:cacheprovider",
                "--lab-report", str(report), "--rootdir", str(REPO), *target_args]
        if not verbose:
            argv += ["--no-header", "-rN", "--tb=no", "--disable-warnings"]
        pipe = None if verbose else subprocess.PIPE
        child = subprocess.Popen(argv, cwd=REPO, stdout=pipe, stderr=pipe, text=True)
        try:
            stdout, stderr = child.communicate()
        except KeyboardInterrupt:
            # The child got the same Ctrl-C: let it stop its servers and workers itself.
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
            console.print("\n[yellow]interrupted[/yellow]: the check stopped every process it had started.")
            raise typer.Exit(130) from None
        done = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
        if report.exists():
            return json.loads(report.read_text())
        output = (done.stdout or "") + (done.stderr or "")
        console.print("[red]The checks could not run[/red] (this is a problem with the course setup, "
                      "not with your code). pytest said:")
        console.print(output[-3000:], markup=False)
        raise typer.Exit(2)


def print_record(lab: course.Lab, record: dict) -> None:
    name = record["check"]
    evidence = " ".join(f"{k}={v}" for k, v in record.get("evidence", {}).items())
    dots = "." * max(3, 28 - len(name))
    outcome = record["outcome"].upper()
    colour = {"PASSED": "green", "FAILED": "red"}.get(outcome, "yellow")
    if record.get("blocked"):
        outcome, colour = "NOT CHECKED", "yellow"
    console.print(f"lab{lab.id} {name} {dots} [{colour}]{outcome}[/{colour}] "
                  f"{record['duration']:.1f}s {evidence}".rstrip())
    if record.get("blocked"):
        console.print("  (it inspects the run above, which did not finish)", style="dim")
    elif record["outcome"] != "passed":
        console.print(record["message"], markup=False)
        console.print()


@app.command()
def check(
    lab_id: str = typer.Argument(..., metavar="NN", help="lab number, e.g. 01"),
    path: Optional[Path] = typer.Option(None, "--path", help="grade this folder instead of labs/<lab>"),
    solution: bool = typer.Option(False, "--solution", help="grade the reference solution"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show pytest's own output"),
) -> None:
    """Run a lab's autograder: one line per check, and what to fix when one fails."""
    lab = find_lab(lab_id)
    if path and solution:
        console.print("[red]--path and --solution exclude each other[/red]")
        raise typer.Exit(2)
    target = solution and lab.solution_dir or (path.resolve() if path else lab.starter_dir)
    if not target.is_dir():
        console.print(f"[red]no folder at {target}[/red]")
        raise typer.Exit(2)
    args = ["--solution"] if solution else ["--lab-path", str(target)]
    shown = target.relative_to(REPO) if target.is_relative_to(REPO) else target
    console.print(f"checking lab {lab.id} ({lab.title}) on {shown} … this takes a few seconds")
    started = time.monotonic()
    records = run_checks(lab, args, verbose)
    for record in records:
        print_record(lab, record)
    passed = sum(r["outcome"] == "passed" for r in records)
    points = {c.name: c.points for c in lab.checks}
    score = sum(points.get(r["check"], 0) for r in records if r["outcome"] == "passed")
    all_passed = bool(records) and passed == len(records)
    colour = "green" if all_passed else "red"
    console.print(f"[{colour}]{passed}/{len(records)} checks passed[/{colour}], "
                  f"{score}/{lab.max_points} points, {time.monotonic() - started:.1f}s")
    if target == lab.starter_dir:
        state.Progress.load().record(lab.id, all_passed, score, lab.max_points)
    if all_passed and target == lab.starter_dir:
        console.print(f"Lab {lab.id} done. Compare with the reference: solutions/{lab.slug}/")
    elif not all_passed and not solution:
        console.print(f"Stuck? [bold]lab hint {lab.id}[/bold] shows one more hint each time.")
    raise typer.Exit(0 if all_passed else 1)


@app.command()
def hint(lab_id: str = typer.Argument(..., metavar="NN")) -> None:
    """Show the next hint for a lab (one more each time you ask)."""
    lab = find_lab(lab_id)
    hints = state.Hints.load()
    shown = hints.next(lab.id, len(lab.hints))
    for number in range(shown):
        style = "bold" if number == shown - 1 else "dim"
        console.print(f"[{style}]hint {number + 1}/{len(lab.hints)}:[/{style}] {lab.hints[number]}")
    if shown == len(lab.hints):
        console.print("[dim]That was the last hint. The reference solution is in "
                      f"solutions/{lab.slug}/ when you want to compare.[/dim]")


@app.command()
def demo(lab_id: str = typer.Argument(..., metavar="NN"),
         ui: bool = typer.Option(True, help="start the Temporal Web UI too"),
         keep: bool = typer.Option(False, help="keep the servers up afterwards, until Enter")) -> None:
    """Run the reference solution's crash scenario and show its timeline."""
    lab = find_lab(lab_id)
    demo_file = REPO / "checks" / f"demo_{lab.slug}.py"
    if not demo_file.exists():
        console.print(f"[yellow]lab {lab.id} has no demo yet[/yellow]")
        raise typer.Exit(2)
    spec = importlib.util.spec_from_file_location(f"demo_{lab.slug}", demo_file)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "checks"))
    spec.loader.exec_module(module)
    raise typer.Exit(module.run(console, ui=ui, keep=keep))


@app.command()
def grade(
    submissions: Path = typer.Argument(..., help="a folder with one subfolder per submission"),
    labs: Optional[str] = typer.Option(None, "--labs", help="e.g. 01,02 (default: every lab)"),
    jobs: int = typer.Option(2, "--jobs", "-j", help="submissions graded at the same time"),
    out: Path = typer.Option(Path("grades"), "--out", help="where the reports go"),
    time_limit: float = typer.Option(240.0, "--time-limit", help="seconds per submission and lab"),
) -> None:
    """Grade a class: grades.csv, JUnit XML and Gradescope results.json per submission, a summary."""
    from rich.progress import MofNCompleteColumn, TimeElapsedColumn

    from . import grading

    if not submissions.is_dir():
        console.print(f"[red]no folder at {submissions}[/red]")
        raise typer.Exit(2)
    try:
        chosen = grading.load_labs(labs)
    except KeyError as err:
        console.print(f"[red]{err.args[0]}[/red]")
        raise typer.Exit(2) from None
    found = grading.submissions_in(submissions)
    if not found:
        console.print(f"[red]{submissions} holds no submission folders[/red]")
        raise typer.Exit(2)
    console.print(f"grading {len(found)} submissions × {len(chosen)} labs, {jobs} at a time, with the "
                  "course's own checks")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("grading", total=len(found) * len(chosen))

        def advance(result) -> None:
            bar.advance(task)
            bar.console.print(f"{result.submission} lab{result.lab.id}: {result.score}/{result.max_score}"
                              + (f"  ({result.error})" if result.error else ""))

        results = grading.grade(found, chosen, jobs=jobs, out=out, time_limit=time_limit, progress=advance)
    total = sum(r.score for r in results)
    console.print(f"done: {out}/grades.csv, {out}/summary.md, {out}/junit/, {out}/gradescope/  "
                  f"(class total {total}/{sum(r.max_score for r in results)})")


@app.command()
def approve(
    workflow_id: str = typer.Argument(..., help="the workflow waiting for a decision"),
    reject: bool = typer.Option(False, "--reject", help="reject instead of approve"),
    reason: str = typer.Option("", "--reason", "--comment", help="why (kept in the workflow's result)"),
    reviewer: str = typer.Option(os.environ.get("USER", "reviewer"), "--reviewer"),
    update: bool = typer.Option(False, "--update", help="send the `decide` update and wait for its answer "
                                "(needs a running worker) instead of a signal"),
) -> None:
    """Approve (or --reject) a workflow that waits for a human, from outside its process."""
    from .aio import run_sync
    from .approval import ApprovalError, send_decision

    try:
        result = run_sync(send_decision(None, workflow_id, decision="reject" if reject else "approve",
                                        reviewer=reviewer, comment_or_reason=reason,
                                        via="update" if update else "signal"))
    except ApprovalError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    console.print(str(result), markup=False)
    raise typer.Exit(1 if result.accepted is False else 0)


@app.command()
def up() -> None:
    """Start the course services in the background (Temporal + Web UI, course LLM)."""
    from . import background

    for line in background.up():
        console.print(line)


@app.command()
def down() -> None:
    """Stop the services `lab up` started."""
    from . import background

    for line in background.down():
        console.print(line)


@app.command()
def env() -> None:
    """Print the environment a shell needs for the background services: eval "$(lab env)"."""
    from .background import student_env

    for key, value in student_env().items():
        print(f"export {key}={value}")


@app.command()
def doctor() -> None:
    """Check this machine: Python, packages, the temporal binary, ports, writable folders."""
    from . import doctor as doc

    results = doc.run()
    for ok, what, detail in results:
        mark = "[green]ok[/green]  " if ok else "[red]FAIL[/red]"
        console.print(f"{mark} {what}: {detail}")
    raise typer.Exit(0 if all(ok for ok, _, _ in results) else 1)


if __name__ == "__main__":
    app()
