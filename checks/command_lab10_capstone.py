"""`lab capstone`: Lab 10's own command. It evicts each runtime's batch mid-way and prints the runtimes
side by side (the table in docs/capstone.md), by running the lab's check with a report folder set.

labkit.cli registers it (every checks/command_<slug>.py brings one command), so labkit holds no Lab 10
knowledge: the questions count and the report folder travel to the check as LAB10_* variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from labkit.course import REPO

NAME = "capstone"
LAB = "10"


def command(
    questions: int = typer.Option(20, "--questions", min=3, help="questions per batch (the text's: 200)"),
    out: Path = typer.Option(REPO / ".lab" / "capstone", "--out", help="where capstone.md and capstone.svg go"),
    path: Optional[Path] = typer.Option(None, "--path", help="the Lab 10 folder (default: labs/lab10_capstone)"),
    solution: bool = typer.Option(False, "--solution", help="the reference solution"),
) -> None:
    """Lab 10: evict each runtime's batch mid-way, and print the runtimes side by side (docs/capstone.md)."""
    from labkit.cli import console, find_lab, print_record, run_checks

    lab = find_lab(LAB)
    target = lab.solution_dir if solution else (path.resolve() if path else lab.starter_dir)
    out = out.resolve()
    for name in ("capstone.md", "capstone.svg", "capstone.json"):  # never show an older run's table
        (out / name).unlink(missing_ok=True)
    os.environ.update(LAB10_QUESTIONS_N=str(questions), LAB10_REPORT_DIR=str(out))
    console.print(f"lab 10 on {target} with {questions} questions per batch … about a minute per 20")
    records = run_checks(lab, ["--solution"] if solution else ["--lab-path", str(target)], verbose=False)
    for record in records:
        print_record(lab, record)
    if not (out / "capstone.md").exists():
        console.print("[red]no table[/red]: a runtime's run failed (see above)")
        raise typer.Exit(1)
    console.print((out / "capstone.md").read_text(), markup=False)
    console.print(f"table and picture: {out / 'capstone.md'}, {out / 'capstone.svg'}", markup=False)
    raise typer.Exit(0 if all(r["outcome"] == "passed" for r in records) else 1)
