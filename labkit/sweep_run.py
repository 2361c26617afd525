"""`lab sweep NN`: crash-test a lab folder at seeded random moments, and say what broke and how to see it again.

The check kills one process at one chosen moment; the sweep kills at many moments drawn from a seed
and audits the same invariants after each trial (labkit.sweep, the lab's checks/scenario_<slug>.py).
It grades what `lab check` grades: a copy of the folder with the course's own copy of every file that
is not the student's, its student processes confined as in a check (labkit.limits), on servers of its
own (free ports, stopped after), and leaves nothing running. One line per trial, then a summary; for
each trial with a violation, the command that re-runs that trial alone (its kill moments come from
the seed and the trial's number), and for the first one a picture of where the kills landed.

    from labkit.sweep_run import sweep
    sweep(console, course.load().lab("01"), Path("labs/lab01_temporal_crash"), trials=3)   # a notebook cell
"""

from __future__ import annotations

import asyncio
import os
import random
import shlex
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from . import course, limits, proc, state
from .aio import run_sync
from .course import shown
from .feedback import CheckFailed
from .sweep import NoScenario, Report, TrialSummary, load_scenario, run_sweep, scenario_module, scenario_path

PER_TRIAL_LIMIT_S = 300.0  # a hang guard, far above a trial's 10-40 s (minutes at a quarter core)
START_LIMIT_S = 180.0  # the servers and the graded copy, once
SHOWN_PER_TRIAL = 4  # violations printed per trial (the count says how many more)
SERVERS_OF_THE_CHECK = ("TEMPORAL_ADDRESS", "DATABASE_URL")  # the student's own servers: never the sweep's


def rerun_command(lab: course.Lab, *, seed: int, kills: int, trial: int | None = None, trials: int | None = None,
                  folder: str | None = None, solution: bool = False, subjects: int | None = None) -> str:
    """The `lab sweep` command that runs the same kill moments again: the whole sweep, or one trial (1-based)."""
    argv = ["lab", "sweep", lab.id, "--seed", str(seed), "--kills", str(kills)]
    argv += ["--trial", str(trial)] if trial is not None else ["--trials", str(trials)]
    if subjects is not None:
        argv += ["--subjects", str(subjects)]
    if solution:
        argv.append("--solution")
    elif folder is not None:
        argv += ["--path", folder]
    return shlex.join(argv)


def sweep(console: Console, lab: course.Lab, target: Path, *, solution: bool = False, path_given: bool = False,
          trials: int = 5, kills: int = 3, seed: int | None = None, trial: int | None = None,
          subjects: int | None = None, time_limit_s: float | None = None, verbose: bool = False,
          out_dir: Path | None = None) -> int:
    """Run the lab's sweep on `target`; print trials, summary, violations; 0 when nothing broke, 1 when
    something did (a violation, or code the sweep could not run), 2 when there is nothing to sweep."""
    try:
        module = scenario_module(lab)
    except NoScenario as err:
        console.print(f"[yellow]{escape(str(err))}[/yellow]. `lab check {lab.id}` is this lab's test.")
        return 2
    except Exception as err:  # the course's scenario does not import: a course problem, said as such
        console.print(f"[red]lab {lab.id}'s crash sweep could not be loaded[/red] (a problem with the course, "
                      f"not with your code): {type(err).__name__}: {escape(str(err))}")
        return 2
    from .services import unavailable

    # A sweep may need fewer services than the lab's check (SERVICES in its scenario module).
    services = list(getattr(module, "SERVICES", lab.services))
    for service in services:  # as a check reports NOT CHECKED: the service's own reason
        reason = unavailable(service)
        if reason:
            console.print(f"[yellow]lab {lab.id} cannot be swept on this machine[/yellow]: {escape(reason)}")
            return 2
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    folder = None if solution else shown(target) if path_given else None
    same = rerun_command(lab, seed=seed, kills=kills, trial=trial, trials=trials, folder=folder,
                         solution=solution, subjects=subjects)
    which = f"trial {trial} only" if trial is not None else f"{trials} trial(s)"
    console.print(f"crash-testing lab {lab.id} ({lab.title}) on {shown(target)}: seed {seed}, {which} x {kills} "
                  "SIGKILL(s) at random moments … a trial takes 10-40 s", markup=False)
    from .cli import SERVICE_NAMES

    console.print(f"servers: the sweep's own ({', '.join(SERVICE_NAMES.get(s, s) for s in services)}; "
                  "free ports, stopped after); "
                  f"scenario: {shown(scenario_path(lab))}; same moments again: {same}", style="dim", markup=False)
    note = lab.ignored_edits_note(target)
    if note:
        console.print(note, style="yellow", markup=False)
    limit = time_limit_s if time_limit_s is not None else START_LIMIT_S + PER_TRIAL_LIMIT_S * (1 if trial else trials)
    total = 1 if trial is not None else trials

    def on_trial(summary: TrialSummary) -> None:
        colour = "red" if summary.violations else "green"
        console.print(f"[{colour}]{summary.line(total if trial is None else '')}[/{colour}]")

    def log(line: str) -> None:
        if verbose:
            console.print(line, style="dim", markup=False)

    saved = {name: os.environ.pop(name) for name in SERVERS_OF_THE_CHECK if name in os.environ}
    started = time.monotonic()
    guard: list[asyncio.Timeout] = []  # the hang guard, to tell its expiry from a scenario's own TimeoutError

    async def guarded(scenario) -> Report:
        async with asyncio.timeout(limit) as deadline:
            guard.append(deadline)
            return await run_sweep(scenario, seed=seed, trials=trials, kills=kills, command=same, log=log,
                                   only_trial=trial - 1 if trial is not None else None, on_trial=on_trial)
    try:
        with tempfile.TemporaryDirectory(prefix=f"lab-sweep{lab.id}-") as tmp:
            limits.allow_writes_under(tmp)
            try:
                scenario = load_scenario(lab, workdir=Path(tmp), path=target,
                                         **({"subjects": subjects} if subjects is not None else {}))
                report = run_sync(guarded(scenario))
            finally:
                limits.allow_writes_anywhere()
                proc.reap_all()  # whatever a failed or interrupted sweep left running
    except CheckFailed as err:  # the scenario met code it cannot run (a worker that never polls, ...)
        console.print("[red]The sweep could not run your code[/red]; `lab check "
                      f"{lab.id}` says more about it:")
        console.print(err.render(), markup=False)
        return 1
    except TimeoutError as err:
        if not (guard and guard[0].expired()):  # a wait inside the scenario gave up: say which
            console.print(f"[red]The sweep stopped[/red] after {time.monotonic() - started:.0f} s: a wait gave up: "
                          f"{escape(str(err)[:500]) or 'TimeoutError'}")
            return 1
        console.print(f"[red]The sweep did not finish within {limit:.0f} s[/red] (its hang guard): a trial was still "
                      "waiting for your code, which made no progress. `lab check "
                      f"{lab.id}` names the step that hangs. Every process it started was stopped.")
        return 1
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]: the sweep stopped every process it had started.")
        return 130
    except Exception as err:  # e.g. a server's refusal a student process caused: one line, never a traceback
        console.print(f"[red]The sweep stopped[/red] after {time.monotonic() - started:.0f} s: "
                      f"{type(err).__name__}: {escape(str(err)[:500])}")
        console.print(f"`lab check {lab.id}` shows what your code does with one crash.", markup=False)
        return 1
    finally:
        os.environ.update(saved)
    return print_report(console, lab, report, folder=folder, solution=solution, subjects=subjects,
                        out_dir=out_dir or state.STATE_DIR / "sweep")


def print_report(console: Console, lab: course.Lab, report: Report, *, folder: str | None, solution: bool,
                 subjects: int | None, out_dir: Path) -> int:
    fired, planned = report.kills_fired, len(report.kills)
    in_flight = report.in_flight + sum(t.in_flight for t in report.ledgers.values())
    repeats = report.at_least_once + sum(t.at_least_once for t in report.ledgers.values())
    console.print(f"\n{report.trials} trial(s), seed {report.seed}: {fired}/{planned} kills fired"
                  + (f" ({planned - fired} found no live process: it had already exited)"
                     if planned > fired else "") + f", {report.wall_s:.0f} s", markup=False)
    console.print(f"at-least-once windows: {in_flight} call(s) caught in flight by a kill, {repeats} repeated after "
                  "the restart (allowed: the result was not recorded yet, so the call is made again)", markup=False)
    if report.landings:
        console.print("kills landed: " + "; ".join(f"{n} x {label}" for label, n in report.landings.most_common(6)),
                      style="dim", markup=False)
    if report.tallies:
        console.print("counted, not failed: " + ", ".join(f"{name} {n}" for name, n in report.tallies.items()),
                      style="dim", markup=False)
    if not report.violations:
        console.print(f"[green]0 violations[/green]: {fired} SIGKILL(s) at random moments, and every invariant held. "
                      f"Another seed kills elsewhere: lab sweep {lab.id} --seed N.")
        return 0
    todo = f"TODO(lab{lab.id})"
    unfinished = next((v for v in report.violations if todo in v.observed), None)
    if unfinished is not None:  # the starter's NotImplementedError: the sweep has nothing to crash yet
        what = escape(unfinished.observed.split(todo)[1][:80].strip(": "))
        console.print(f"[yellow]Your code is not finished yet[/yellow] ({what} "
                      f"is still a {todo}): `lab check {lab.id}` and `lab hint {lab.id}` first; sweep it once the "
                      "check passes.")
    by_trial: dict[int, list] = {}
    for violation in report.violations:
        by_trial.setdefault(violation.trial, []).append(violation)
    console.print(f"[red]{len(report.violations)} violation(s) in {len(by_trial)} trial(s)[/red]")
    for index, found in by_trial.items():
        kills = [k for k in report.kills if k.trial == index]
        console.print(f"\n[bold]trial {index + 1}[/bold]")
        for kill in kills:
            console.print(f"  kill {kill.index + 1}: {kill.planned_after_s:.2f} s after the "
                          f"{'start' if kill.index == 0 else 'restart'}, "
                          + (f"SIGKILLed pid {', '.join(map(str, kill.victims))}" if kill.fired else "no live process")
                          + f"; it found: {', '.join(kill.landed) or '-'}"
                          + (f"; caught in flight: {', '.join(sorted(kill.in_flight))}" if kill.in_flight else ""),
                          markup=False)
        for violation in found[:SHOWN_PER_TRIAL]:
            console.print("  " + violation.line().replace("\n", "\n  "), markup=False)
        if len(found) > SHOWN_PER_TRIAL:
            console.print(f"  … and {len(found) - SHOWN_PER_TRIAL} more violation(s) in this trial", markup=False)
        console.print("  re-run this trial alone: " + rerun_command(
            lab, seed=report.seed, kills=report.kills_per_trial, trial=index + 1, folder=folder, solution=solution,
            subjects=subjects), markup=False)
    if report.picture:
        out_dir.mkdir(parents=True, exist_ok=True)
        picture = out_dir / f"lab{lab.id}-seed{report.seed}-trial{report.picture_trial + 1}.svg"
        picture.write_text(report.picture)
        console.print(f"\nwhere the kills landed in trial {report.picture_trial + 1} (one bar per LLM call, red: "
                      f"caught in flight by a kill): {picture}", markup=False)
    console.print(f"`lab hint {lab.id}` and `lab check {lab.id}` name the idea; the re-run command shows the same "
                  "kill moments again (the machine decides what runs at them).", markup=False)
    return 1
