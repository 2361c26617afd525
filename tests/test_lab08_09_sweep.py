"""`lab sweep 08` and `lab sweep 09`: what a random-kill sweep means for the two SDK-harness labs.

Lab 08 has none, on purpose (its memo lives in the one process a kill ends): `lab sweep 08` says why,
from checks/scenario_lab08_inngest_steps.py, and exits 2. Lab 09 has one (checks/scenario_lab09_...):
task attempts SIGKILLed at random moments lose only the task they ran; on the reference solution every
invariant holds, and a task that redoes its parent's LLM call is caught. Each sweep here: 1 trial,
2 documents, 2-3 kills, 20-60 s (minutes at a quarter core)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from labkit import course, proc
from labkit.sweep import NoScenario, load_scenario, run_sweep

REPO = Path(__file__).resolve().parent.parent
VARIANTS = REPO / "tests" / "variants"
pytestmark = pytest.mark.timeout(900)  # a hang limit, not a speed target


def test_lab_sweep_08_says_plainly_why_there_is_none(tmp_path):
    out = subprocess.run([sys.executable, "-m", "labkit.cli", "sweep", "08", "--solution"], cwd=REPO,
                         env={**os.environ, "LAB_STATE_DIR": str(tmp_path)}, capture_output=True, text=True,
                         timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "no crash sweep, on purpose" in text and "in-process executor" in text and "lab check 08" in text, text
    assert "Traceback" not in text, text
    with pytest.raises(NoScenario, match="on purpose"):
        load_scenario(course.load().lab("08"), workdir=tmp_path)


def live_children() -> list[str]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{child.pid} {' '.join(child.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            pass
    return found


def sweep_09(tmp_path: Path, path: Path, seed: int, kills: int):
    lines: list[str] = []
    scenario = load_scenario(course.load().lab("09"), workdir=tmp_path, path=path, subjects=2)
    try:
        report = asyncio.run(run_sweep(scenario, seed=seed, trials=1, kills=kills, command="test", log=lines.append))
        left = live_children()
    finally:
        proc.reap_all()
    return report, "\n".join(lines + [report.render()]), left


def test_lab09_sweep_on_the_solution_holds_every_invariant(tmp_path):
    """Given the reference solution, When attempts are SIGKILLed at 3 seeded moments, Then every document
    ends with one row holding its parents' outputs, no LLM call is repeated beyond what a kill caught in
    flight explains, the killed attempts ran again, and no process is left."""
    report, story, left = sweep_09(tmp_path, REPO / "solutions" / "lab09_hatchet_pipeline", seed=2026, kills=3)
    assert report.kills_fired >= 1, story
    assert not report.violations, story
    assert report.tallies.get("task attempts run again after a kill", 0) >= report.kills_fired, story
    assert not left, f"processes still running after the sweep: {left}"


def test_lab09_sweep_names_a_task_that_redoes_its_parents_llm_call(tmp_path):
    report, story, left = sweep_09(tmp_path, VARIANTS / "lab09" / "classify_reextracts", seed=7, kills=2)
    invariants = {v.invariant for v in report.violations}
    assert "LLM calls from another task's attempt, or untagged" in invariants, story
    assert any("repeated without a kill to explain it" in i for i in invariants), story
    assert not left, f"processes still running after the sweep: {left}"
