"""`lab`: the course's command line, a thin layer over pytest and labkit (modelled on rustlings).

    lab list | lab up | lab down | lab doctor
    lab check NN [--path DIR | --solution] [--repeat N] [--server URL]
    lab hint NN      lab demo NN
    lab sweep NN [--trials N] [--kills K] [--seed S] [--trial T] [--path DIR | --solution]   (crash-test)
    lab watch NN     lab reset NN     lab solution NN      (students)
    lab hold [WORKFLOW_ID]     lab release WORKFLOW_ID   (hold a retry while you kill a worker)
    lab grade SUBMISSIONS                                  (instructors)
    lab capstone [--questions N]                           (a lab's own command: checks/command_*.py)
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
    for column in ("lab", "title", "text §", "score", "status"):
        table.add_column(column)
    for lab in labs:
        done = progress.passed(lab.id)
        seen = progress.labs.get(lab.id)
        if done:
            status = "[green]done[/green]" + ("" if seen.get("last", True) else " [yellow](last check failed)[/yellow]")
        elif seen:
            status = "[red]failing[/red]"
        else:
            status = "[yellow]pending[/yellow]"
        score = f"{seen['score']}/{seen['max']}" if seen else f"-/{lab.max_points}"
        if seen and seen.get("best", seen["score"]) > seen["score"]:
            score += f" (best {seen['best']})"
        table.add_row(lab.id, lab.title, lab.section.split(" ")[0], score, status)
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


SERVER_ENV = "LAB_SERVER_URL"  # `lab check NN --server URL`: a check that can use a real server reads it


USE_RUNNING_ENV = "LAB_CHECK_USE_RUNNING"  # docs/decisions/check-servers.md


SERVICE_NAMES = {"temporal": "Temporal", "postgres": "PostgreSQL", "llm": "course LLM", "web": "course web",
                 "sink": "notification sink", "restate": "Restate"}


def check_servers(lab: course.Lab, environ: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """The environment a lab's check runs with, and one line saying which servers it uses.

    A check starts its own servers on free ports, whatever TEMPORAL_ADDRESS and DATABASE_URL say
    (`eval "$(lab env)"` sets them for the student's own runs): its evidence is then its own.
    LAB_CHECK_USE_RUNNING=1 opts in to the running Temporal and PostgreSQL (those variables, else
    `lab up`'s), to watch the check's workflows in the Web UI. The course LLM is always the check's
    own: the verdicts read its ledger."""
    from .background import TEMPORAL_PORT, TEMPORAL_UI_PORT
    from .postgres import status as running_postgres
    from .services import port_open

    env = dict(os.environ if environ is None else environ)
    own = [SERVICE_NAMES.get(name, name) for name in lab.services]
    if env.get(USE_RUNNING_ENV, "").strip().lower() not in ("1", "true", "yes"):
        ignored = [name for name in ("TEMPORAL_ADDRESS", "DATABASE_URL") if env.pop(name, None)]
        return env, (f"servers: the check's own ({', '.join(own)}; free ports, stopped after)"
                     + (f"; your shell's {' and '.join(ignored)} not used ({USE_RUNNING_ENV}=1 uses them)"
                        if ignored else ""))
    used = []
    if "temporal" in lab.services:
        temporal = env.get("TEMPORAL_ADDRESS") or f"localhost:{TEMPORAL_PORT}"
        host, _, port = temporal.rpartition(":")
        if not port.isdigit() or not port_open(int(port), host or "127.0.0.1"):
            console.print(f"[red]{USE_RUNNING_ENV}=1, but no Temporal answers at {temporal}[/red]: start "
                          f"`lab up`, or unset {USE_RUNNING_ENV} and the check starts its own servers")
            raise typer.Exit(2)
        env["TEMPORAL_ADDRESS"] = temporal
        ui = temporal in (f"localhost:{TEMPORAL_PORT}", f"127.0.0.1:{TEMPORAL_PORT}") and port_open(TEMPORAL_UI_PORT)
        used.append(f"Temporal {temporal}" + (f" (its workflows in the Web UI, http://localhost:{TEMPORAL_UI_PORT})"
                                              if ui else ""))
    if "postgres" in lab.services:
        database = env.get("DATABASE_URL") or running_postgres()
        if database:
            env["DATABASE_URL"] = database
            used.append(f"PostgreSQL {database} (its own databases there, dropped after)")
    shared = {"temporal"} | ({"postgres"} if "DATABASE_URL" in env else set())
    rest = [SERVICE_NAMES.get(name, name) for name in lab.services if name not in shared]
    return env, (f"servers ({USE_RUNNING_ENV}=1): " + ", ".join(used or ["none of this lab's is shared"])
                 + (f"; the check's own: {', '.join(rest)} (the course LLM always: its ledger is the evidence)"
                    if rest else ""))


def run_checks(lab: course.Lab, target_args: list[str], verbose: bool, server: str | None = None) -> list[dict]:
    """Run the lab's pytest checks in a child process and return the per-check records."""
    with tempfile.TemporaryDirectory(prefix="lab-check-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "pytest", str(lab.check_path), "-q", "-p", "no:cacheprovider",
                "--lab-report", str(report), "--rootdir", str(REPO), *target_args]
        if not verbose:
            argv += ["--no-header", "-rN", "--tb=no", "--disable-warnings"]
        pipe = None if verbose else subprocess.PIPE
        env = {**check_servers(lab)[0], **({SERVER_ENV: server} if server else {})}
        child = subprocess.Popen(argv, cwd=REPO, stdout=pipe, stderr=pipe, text=True, env=env)
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
    if record.get("blocked"):  # its message says which run it needed, and why that run gave nothing to inspect
        reason = (record.get("message") or "").strip().splitlines() or ["not checked"]
        console.print(f"  ({reason[0]})", style="dim", markup=False)
    elif record["outcome"] != "passed":
        console.print(record["message"], markup=False)
        console.print()


@app.command()
def check(
    lab_id: str = typer.Argument(..., metavar="NN", help="lab number, e.g. 01"),
    path: Optional[Path] = typer.Option(None, "--path", help="grade this folder instead of labs/<lab>"),
    solution: bool = typer.Option(False, "--solution", help="grade the reference solution"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show pytest's own output"),
    repeat: int = typer.Option(1, "--repeat", min=1, help="run the whole check N times and summarise "
                               "(a flake hunt: a check must pass every time)"),
    server: Optional[str] = typer.Option(None, "--server", metavar="URL",
                                         help="run the lab's scenario against a real server at URL too, for the "
                                              "labs whose check can (passed to the check as LAB_SERVER_URL)"),
) -> None:
    """Run a lab's autograder: one line per check, and what to fix when one fails."""
    lab = find_lab(lab_id)
    if path and solution:
        console.print("[red]--path and --solution exclude each other[/red]")
        raise typer.Exit(2)
    if server is not None and not server_url_ok(server):
        console.print(f"[red]--server wants an http(s) URL with a host, such as http://127.0.0.1:8288; "
                      f"got {server!r}[/red]", markup=True)
        raise typer.Exit(2)
    target = solution and lab.solution_dir or (path.resolve() if path else lab.starter_dir)
    if not target.is_dir():
        console.print(f"[red]no folder at {target}[/red]")
        raise typer.Exit(2)
    args = ["--solution"] if solution else ["--lab-path", str(target)]
    shown = target.relative_to(REPO) if target.is_relative_to(REPO) else target
    if repeat > 1:
        raise typer.Exit(repeat_checks(lab, args, shown, repeat, verbose, server))
    console.print(f"checking lab {lab.id} ({lab.title}) on {shown} … this takes a few seconds")
    console.print(check_servers(lab)[1], style="dim", markup=False)
    if server:
        console.print(f"with the server at {server} ({SERVER_ENV})", markup=False)
    ignored = lab.ignored_edits_note(target)
    if ignored:
        console.print(ignored, style="yellow", markup=False)
    started = time.monotonic()
    records = run_checks(lab, args, verbose, server)
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
        console.print(f"Lab {lab.id} done. [bold]lab solution {lab.id}[/bold] compares your files with the reference.")
    elif not all_passed and not solution:
        console.print(f"Stuck? [bold]lab hint {lab.id}[/bold] shows one more hint each time.")
    raise typer.Exit(0 if all_passed else 1)


def server_url_ok(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def repeat_checks(lab: course.Lab, target_args: list[str], shown: Path, runs: int, verbose: bool,
                  server: str | None = None) -> int:
    """Run the whole check `runs` times: one line per run, then a summary a flake hunt can quote."""
    console.print(f"checking lab {lab.id} ({lab.title}) on {shown}, {runs} runs … a flake hunt: "
                  "every run must pass")
    console.print(check_servers(lab)[1], style="dim", markup=False)
    durations: list[float] = []
    failures: dict[str, list[int]] = {}
    first_message: dict[str, str] = {}
    for number in range(1, runs + 1):
        started = time.monotonic()
        records = run_checks(lab, target_args, verbose, server)
        durations.append(time.monotonic() - started)
        failed = [r for r in records if r["outcome"] != "passed" and not r.get("blocked")]
        if not records:
            failed = [{"check": "(no checks ran)", "message": "pytest reported no checks"}]
        for record in failed:
            failures.setdefault(record["check"], []).append(number)
            first_message.setdefault(record["check"], record.get("message", ""))
        verdict = "[green]passed[/green]" if not failed else \
            "[red]FAILED[/red] " + ", ".join(r["check"] for r in failed)
        console.print(f"run {number:>{len(str(runs))}}/{runs} {verdict} {durations[-1]:.1f}s")
    failed_runs = len({run for runs_of in failures.values() for run in runs_of})
    median = statistics.median(durations)
    colour = "green" if not failed_runs else "red"
    console.print(f"[{colour}]lab {lab.id} --repeat {runs}: {runs - failed_runs}/{runs} runs passed, "
                  f"{failed_runs} failed[/{colour}]; median {median:.1f}s, min {min(durations):.1f}s, "
                  f"max {max(durations):.1f}s")
    for name, numbers in failures.items():
        console.print(f"  {name} failed in run(s) {', '.join(map(str, numbers))}; the first time it said:")
        console.print(first_message[name], markup=False)
    return 0 if not failed_runs else 1


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
                              + (f"  ({result.error})" if result.error else "")
                              + f"  [graded {result.graded_shown}]", markup=False)

        try:
            results = grading.grade(found, chosen, jobs=jobs, out=out, time_limit=time_limit, progress=advance)
        except KeyboardInterrupt:
            console.print("\n[yellow]interrupted[/yellow]: every grading run was stopped; no report was written.")
            raise typer.Exit(130) from None
    total = sum(r.score for r in results)
    console.print(f"done: {out}/grades.csv, {out}/summary.md, {out}/junit/, {out}/gradescope/  "
                  f"(class total {total}/{sum(r.max_score for r in results)})")


# --- students: watch, reset, solution ------------------------------------------------------------

IGNORED_PARTS = {"__pycache__", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache"}


def lab_files(folder: Path) -> list[Path]:
    """The files of a lab folder that are the student's work (no caches, no editor swap files)."""
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if IGNORED_PARTS & set(rel.parts) or any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and not path.name.endswith(("~", ".pyc", ".pyo")):
            found.append(rel)
    return sorted(found)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    state_of = {}
    for rel in lab_files(folder):
        try:
            stat = (folder / rel).stat()
        except OSError:  # deleted while we looked
            continue
        state_of[rel.as_posix()] = (stat.st_mtime_ns, stat.st_size)
    return state_of


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def wait_for_change(folder: Path, before: dict[str, tuple[int, int]], *, poll: bool,
                    interval: float = 0.5) -> list[str]:
    """Block until a file of `folder` differs from `before`; return the changed names.

    File events (watchfiles) wake us at once; the snapshot comparison decides, and also runs
    every few seconds, so a change made while the check ran, or one whose event never came
    (containers, WSL, network drives), is still seen. --poll: compare every `interval` seconds only."""
    changed = changes(before, snapshot(folder))
    if changed:
        return changed
    if not poll:
        try:
            import watchfiles
        except ImportError:  # pragma: no cover - watchfiles is a dependency; polling still works
            poll = True
    if not poll:
        for _ in watchfiles.watch(folder, debounce=200, step=50, rust_timeout=3000, yield_on_timeout=True,
                                  raise_interrupt=True):
            changed = changes(before, snapshot(folder))
            if changed:
                return changed
    while True:
        time.sleep(interval)
        changed = changes(before, snapshot(folder))
        if changed:
            return changed


@app.command()
def watch(
    lab_id: str = typer.Argument(..., metavar="NN"),
    poll: bool = typer.Option(False, "--poll", help="compare the files every half second instead of waiting "
                              "for file events (for containers, WSL or network drives where events are missed)"),
    runs: int = typer.Option(0, "--runs", hidden=True, help="stop after this many checks (0: never)"),
) -> None:
    """Re-run `lab check NN` each time you save a file of the lab (Ctrl-C stops)."""
    lab = find_lab(lab_id)
    folder = lab.starter_dir
    if not folder.is_dir():
        console.print(f"[red]no folder at {folder}[/red]")
        raise typer.Exit(2)
    shown = folder.relative_to(REPO)
    how = "polling every 0.5 s" if poll else "file events, and a look every 3 s"
    console.print(f"watching {shown}/ ({how}): `lab check {lab.id}` runs now and after each save. Ctrl-C stops.")
    count = 0
    try:
        while True:
            before = snapshot(folder)
            checking = subprocess.Popen([sys.executable, "-m", "labkit.cli", "check", lab.id], cwd=REPO)
            try:
                checking.wait()
            except KeyboardInterrupt:  # it got the Ctrl-C too: let it stop its servers and workers
                try:
                    checking.wait(30)
                except subprocess.TimeoutExpired:
                    checking.kill()
                    checking.wait()
                raise
            count += 1
            if runs and count >= runs:
                return
            console.print(f"[dim]waiting for a change in {shown}/ …[/dim]")
            changed = wait_for_change(folder, before, poll=poll)
            time.sleep(0.2)  # let an editor finish writing the rest of a save
            console.print(f"\nchanged: {', '.join(changed)} — checking again")
    except KeyboardInterrupt:
        console.print("\nstopped watching")


def git(*args: str, text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=text)


@dataclass
class Starter:
    """A lab's pristine starter, from git: the files, the commit they come from, and a note."""

    commit: str
    date: str
    files: dict[str, bytes]
    note: str = ""


class NoStarter(Exception):
    pass


def pristine_starter(lab: course.Lab) -> Starter:
    """The starter as the course shipped it, from the git history of labs/<slug>.

    The newest commit that touched the folder is the starter, unless the student committed their
    own work over it. A starter carries every TODO(labNN) marker, and a student's commit removes
    some, so among the commits of labs/<slug> (newest first) the first with the most markers is
    the starter: a later course update that keeps the markers still wins over an older one."""
    rel = f"labs/{lab.slug}"
    if git("rev-parse", "--git-dir").returncode != 0:
        raise NoStarter("this copy of the course is not a git clone, so there is no pristine starter to "
                        "restore. Clone the course again (git clone …) and copy your work over.")
    log = git("log", "--format=%H %cs", "--", rel)
    commits = [line.split() for line in log.stdout.splitlines() if line.strip()][:200]
    if log.returncode != 0 or not commits:
        raise NoStarter(f"git has no commit of {rel}: nothing to restore it from.")
    marker = f"TODO(lab{lab.id})"
    best: tuple[int, str, str] | None = None
    for sha, date in commits:
        found = git("grep", "-c", "-F", marker, sha, "--", rel)
        total = sum(int(line.rsplit(":", 1)[1]) for line in found.stdout.splitlines() if ":" in line)
        if best is None or total > best[0]:
            best = (total, sha, date)
    total, sha, date = best
    if total == 0:
        raise NoStarter(f"no commit of {rel} has its {marker} markers: git holds no starter to restore.")
    names = git("ls-tree", "-r", "-z", "--name-only", sha, "--", rel).stdout.split("\0")
    files = {}
    for name in filter(None, names):
        files[name.removeprefix(rel + "/")] = git("show", f"{sha}:{name}", text=False).stdout
    note = ""
    if sha != commits[0][0]:
        newest, newest_date = commits[0]
        note = (f"{rel} was committed after the starter ({newest[:7]}, {newest_date}) without all its "
                f"{marker} markers: that looks like your own work, so the starter comes from the commit "
                f"before it. Your committed work stays in git: git show {newest[:7]}:{rel}/<file>")
    return Starter(commit=sha, date=date, files=files, note=note)


@app.command()
def reset(lab_id: str = typer.Argument(..., metavar="NN"),
          yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")) -> None:
    """Restore a lab's starter files; your version is kept in .lab/backups/ first."""
    import shutil

    lab = find_lab(lab_id)
    folder = lab.starter_dir
    try:
        starter = pristine_starter(lab)
    except NoStarter as err:
        console.print(f"[red]cannot reset lab {lab.id}[/red]: {err}")
        raise typer.Exit(1) from None
    shown = folder.relative_to(REPO)
    current = {rel.as_posix(): (folder / rel).read_bytes() for rel in lab_files(folder)} if folder.is_dir() else {}
    if current == starter.files:
        console.print(f"{shown}/ is already the starter (commit {starter.commit[:7]}): nothing to do.")
        return
    if starter.note:
        console.print(f"[yellow]note[/yellow]: {starter.note}")
    if not yes and not typer.confirm(f"Replace {shown}/ with the starter? (your version goes to a backup)"):
        raise typer.Exit(1)
    backup = None
    if folder.is_dir():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = state.STATE_DIR / "backups" / f"{lab.slug}-{stamp}"
        n = 1
        while backup.exists():
            n += 1
            backup = state.STATE_DIR / "backups" / f"{lab.slug}-{stamp}-{n}"
        shutil.copytree(folder, backup, ignore=shutil.ignore_patterns(*IGNORED_PARTS, "*.pyc"))
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for name, data in starter.files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    console.print(f"restored {shown}/ from the starter in commit {starter.commit[:7]} ({starter.date}).")
    progress = state.Progress.load()
    if progress.labs.get(lab.id):  # the score was the replaced files': the starter starts over
        progress.forget(lab.id)
        console.print(f"`lab list` shows lab {lab.id} pending again (its score was your version's).")
    if backup is not None:
        console.print(f"your version is in {backup}  (to get it back: cp -r {backup}/. {shown}/)")


def code_lines(text: str) -> list[tuple[int, str]]:
    """A Python file's code as (line number, line): docstrings, comments and repeated blank lines
    left out, so a diff shows what runs. Text that does not parse is kept whole."""
    import ast
    import io
    import tokenize

    lines = text.splitlines()
    numbered = list(enumerate(lines, start=1))
    try:
        tree = ast.parse(text)
        comments = [token.start for token in tokenize.generate_tokens(io.StringIO(text).readline)
                    if token.type == tokenize.COMMENT]
    except (SyntaxError, ValueError, tokenize.TokenError):
        return numbered
    dropped = set()
    for row, column in comments:  # a comment line goes; a comment after code is cut off
        code = lines[row - 1][:column].rstrip()
        if code:
            numbered[row - 1] = (row, code)
        else:
            dropped.add(row)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            dropped.update(range(body[0].lineno, body[0].end_lineno + 1))
    kept: list[tuple[int, str]] = []
    for number, line in numbered:
        if number in dropped or (not line.strip() and (not kept or not kept[-1][1].strip())):
            continue
        kept.append((number, line))
    while kept and not kept[-1][1].strip():
        kept.pop()
    return kept


def print_diff(mine: Path, reference: Path, names: list[str], code_only: bool = True) -> int:
    """A unified diff of each named file (yours -, reference +); the number of files that differ.

    code_only: Python files are compared as code (code_lines), and each hunk says at which line of
    each file it starts."""
    import difflib

    from rich.text import Text

    def show(line: str, style: str = "") -> None:
        console.print(Text(line, style=style))

    differ = 0
    for name in names:
        a, b = mine / name, reference / name
        try:
            old = a.read_text() if a.exists() else ""
            new = b.read_text() if b.exists() else ""
        except UnicodeDecodeError:
            continue
        as_code = code_only and name.endswith(".py")
        old_lines = code_lines(old) if as_code else list(enumerate(old.splitlines(), start=1))
        new_lines = code_lines(new) if as_code else list(enumerate(new.splitlines(), start=1))
        matcher = difflib.SequenceMatcher(None, [t for _, t in old_lines], [t for _, t in new_lines],
                                          autojunk=False)
        groups = [g for g in matcher.get_grouped_opcodes(3) if any(tag != "equal" for tag, *_ in g)]
        if not groups:
            continue
        differ += 1
        show(f"--- {'yours/' + name if a.exists() else '/dev/null'}", "bold")
        show(f"+++ {'reference/' + name if b.exists() else '/dev/null'}"
             + ("   (code only: docstrings and comments left out)" if as_code else ""), "bold")
        for group in groups:
            i1, j1 = group[0][1], group[0][3]
            at_old = old_lines[i1][0] if i1 < len(old_lines) else len(old.splitlines()) + 1
            at_new = new_lines[j1][0] if j1 < len(new_lines) else len(new.splitlines()) + 1
            show(f"@@ yours line {at_old}, reference line {at_new} @@", "cyan")
            for tag, i1, i2, j1, j2 in group:
                if tag == "equal":
                    for _, line in old_lines[i1:i2]:
                        show(" " + line)
                    continue
                for _, line in old_lines[i1:i2]:
                    show("-" + line, "red")
                for _, line in new_lines[j1:j2]:
                    show("+" + line, "green")
        console.print()
    return differ


@app.command()
def solution(lab_id: str = typer.Argument(..., metavar="NN"),
             force: bool = typer.Option(False, "--force", help="show it before the lab passes (spoils it)"),
             full: bool = typer.Option(False, "--full", help="every line, docstrings and comments included")) -> None:
    """Compare your files with the reference solution, once `lab check NN` has passed."""
    lab = find_lab(lab_id)
    progress = state.Progress.load()
    if not progress.passed(lab.id):
        seen = progress.labs.get(lab.id)
        so_far = f" (last check: {seen['score']}/{seen['max']})" if seen else ""
        if not force:
            console.print(f"The reference solution opens once [bold]lab check {lab.id}[/bold] passes{so_far}. "
                          f"Seeing it earlier spoils the lab: [bold]lab hint {lab.id}[/bold] helps without giving "
                          "it away. `--force` shows it anyway.")
            raise typer.Exit(1)
        console.print(f"[yellow]warning[/yellow]: lab {lab.id} has not passed yet{so_far}; here is the reference "
                      "anyway (--force).")
    mine, reference = lab.starter_dir, lab.solution_dir
    # Your files: the lab's `edits` and any file you added; the course's files are everyone's
    # (the checks run the course's copy), and the READMEs are the course's text.
    course_files = set(lab.course_files) | {"README.md"}
    added = sorted(rel.as_posix() for rel in lab_files(mine) if rel.as_posix() not in course_files
                   and rel.as_posix() not in lab.edits) if mine.is_dir() else []
    names = list(lab.edits) + added
    console.print(f"[bold]your files in {mine.relative_to(REPO)}/ (-) vs {reference.relative_to(REPO)}/ "
                  f"(reference, +): {', '.join(names)}[/bold]"
                  + ("" if full else "  [dim](code only; --full shows docstrings and comments)[/dim]") + "\n")
    differ = print_diff(mine, reference, names, code_only=not full)
    if differ:
        console.print(f"{differ} file(s) differ. Yours passed the same checks: a different shape can be "
                      "just as right (the checks look at what happened, not at the code).")
    else:
        console.print("Your files are the reference's, line for line"
                      + ("." if full else " (as code; --full compares docstrings and comments too)."))


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
def hold(
    workflow_id: Optional[str] = typer.Argument(None, help="the workflow to watch (default: every running one)"),
    activity: Optional[str] = typer.Option(None, "--activity", help="only this activity type"),
    timeout: float = typer.Option(600.0, "--timeout", help="give up after this many seconds without a failure"),
) -> None:
    """Hold the next retry: once an activity fails, pause it on the server until `lab release`.

    Start it before the workflow, then kill the worker by hand while the retry is held."""
    from . import hold as holding
    from .aio import run_sync

    where = f"workflow {workflow_id}" if workflow_id else "every running workflow"
    console.print(f"watching {where} on {holding.address()} for an activity that fails and waits for its "
                  "retry … (Ctrl-C stops)")

    async def watch():
        return await holding.hold(await holding.connect(), workflow_id, activity, timeout)

    try:
        held = run_sync(watch())
    except TimeoutError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    except RuntimeError as err:  # no server at the address
        console.print(f"[red]cannot reach Temporal at {holding.address()}[/red]: {err} (`lab up`, then "
                      "eval \"$(lab env)\")")
        raise typer.Exit(2) from None
    except Exception as err:  # an RPCError from the server
        console.print(f"Temporal at {holding.address()} refused: {err}", style="red", markup=False)
        raise typer.Exit(1) from None
    console.print(f"{held.activity} attempt {held.failed_attempt} of {held.workflow_id} failed "
                  f"({held.failure}), on worker {held.worker or '?'}.", markup=False)
    if held.too_late:
        console.print(f"[yellow]too late[/yellow]: attempt {held.failed_attempt + 1} had already started before "
                      f"the pause reached the server; `lab release {held.workflow_id}` and try another run.")
        raise typer.Exit(1)
    console.print(f"[bold]held[/bold]: attempt {held.failed_attempt + 1} waits until you release it, however "
                  "long the retry timer was.")
    kill = f"kill -9 {held.worker_pid}" if held.worker_pid else "kill -9 <the worker's pid>"
    console.print(f"now: {kill}   (the worker that ran it), start a new worker, then:  "
                  f"lab release {held.workflow_id}", markup=False)


@app.command()
def release(workflow_id: str = typer.Argument(..., help="the workflow `lab hold` paused")) -> None:
    """Let a held retry run (unpause the workflow's paused activities): it starts at once."""
    from . import hold as holding
    from .aio import run_sync

    async def unpause():
        return await holding.release(await holding.connect(), workflow_id)

    try:
        released = run_sync(unpause())
    except RuntimeError as err:
        console.print(f"[red]cannot reach Temporal at {holding.address()}[/red]: {err}")
        raise typer.Exit(2) from None
    except Exception as err:  # an RPCError, e.g. no such workflow
        console.print(f"{workflow_id}: {err}", style="red", markup=False)
        raise typer.Exit(1) from None
    if not released:
        console.print(f"{workflow_id} has no paused activity: nothing to release.")
        raise typer.Exit(1)
    console.print(f"released: {', '.join(released)}: its next attempt starts now, on any worker polling.")


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
    """Check this machine: Python, packages, the temporal binary, LangGraph's savers, PostgreSQL, ports, writable folders."""
    from . import doctor as doc

    results = doc.run()
    for ok, what, detail in results:
        mark = "[green]ok[/green]  " if ok else "[red]FAIL[/red]"
        console.print(f"{mark} {what}: {detail}")
    raise typer.Exit(0 if all(ok for ok, _, _ in results) else 1)


@app.command()
def sweep(
    lab_id: str = typer.Argument(..., metavar="NN", help="lab number, e.g. 01"),
    trials: int = typer.Option(5, "--trials", min=1, help="trials, each with its own kill moments"),
    kills: int = typer.Option(3, "--kills", min=1, help="SIGKILLs per trial, each followed by a restart"),
    seed: Optional[int] = typer.Option(None, "--seed", help="the kill moments' seed (default: a new one, printed)"),
    trial: Optional[int] = typer.Option(None, "--trial", min=1, help="re-run only this trial of the seed"),
    path: Optional[Path] = typer.Option(None, "--path", help="sweep this folder instead of labs/<lab>"),
    solution: bool = typer.Option(False, "--solution", help="sweep the reference solution"),
    subjects: Optional[int] = typer.Option(None, "--subjects", min=1, help="workflows or threads per trial "
                                           "(default: the lab's)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="one line per kill, as it happens"),
) -> None:
    """Crash-test your code: SIGKILL it at many seeded random moments, restart, audit the invariants."""
    from .sweep_run import sweep as run_sweep_command

    lab = find_lab(lab_id)
    if path and solution:
        console.print("[red]--path and --solution exclude each other[/red]")
        raise typer.Exit(2)
    target = lab.solution_dir if solution else (path.resolve() if path else lab.starter_dir)
    if not target.is_dir():
        console.print(f"[red]no folder at {target}[/red]")
        raise typer.Exit(2)
    raise typer.Exit(run_sweep_command(console, lab, target, solution=solution, path_given=path is not None,
                                       trials=trials, kills=kills, seed=seed, trial=trial, subjects=subjects,
                                       verbose=verbose))


def add_lab_commands() -> None:
    """A lab may bring a command of its own (e.g. Lab 10's `lab capstone`): checks/command_<slug>.py
    defines NAME and a Typer-style function `command`. Lab knowledge stays beside the lab's check."""
    for path in sorted((REPO / "checks").glob("command_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        app.command(name=module.NAME)(module.command)


add_lab_commands()

if __name__ == "__main__":
    app()
