"""The course self-test (like rustlings `dev check`): the checks grade what they claim to grade.

- every lab's checks pass on solutions/ and fail on labs/ (an already-solved starter is a bug);
- every starter marks the files the student edits with TODO(labNN);
- known-bad variants of Lab 01 (tests/variants/lab01/<name>, each the solution with ONE bug)
  fail the check that owns the bug, with its teaching message, and nothing else changes;
- differently shaped correct variants (good_*) pass every check: a grader that only accepts
  the reference's shape is wrong;
- every run gives a verdict (never an internal error), within its time budget, and leaves no
  process behind.

Each run is `python -m pytest <check> --lab-path DIR --lab-report FILE` in a subprocess, as the
`lab` CLI and the grader run it: its own servers, its own process group, a hard timeout.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from labkit import course

REPO = Path(__file__).resolve().parent.parent
VARIANTS = Path(__file__).resolve().parent / "variants"
COURSE = course.load()
LAB01 = COURSE.lab("01")

RUN_TIMEOUT_S = 120  # the course's per-check timeout (pyproject: [tool.pytest.ini_options] timeout)
RUN_BUDGET_S = 45  # a whole check run (services, scenario, teardown); the slow variants say more
MARKER_ENV = "LAB_SELFTEST_RUN"  # inherited by every process a run starts: finds its leftovers
INTERNAL_ERROR = "internal error in the check"


# --- running a check the way the CLI does ---------------------------------------------------------

@dataclass
class CheckRun:
    returncode: int
    seconds: float
    output: str
    records: dict[str, dict] = field(default_factory=dict)  # check name -> report record

    def describe(self) -> str:
        lines = [f"exit status {self.returncode} after {self.seconds:.1f}s"]
        for name, record in self.records.items():
            head = record["message"].splitlines()[0] if record["message"] else ""
            lines.append(f"  {name}: {record['outcome']}  {head[:160]}")
        return "\n".join(lines) + "\n--- output (tail) ---\n" + "\n".join(self.output.splitlines()[-30:])


def running_processes_of(marker: str, paths: list[Path]) -> list[str]:
    """Processes still running that a check run started: they carry its marker in their
    environment, or name one of its folders on their command line or as their cwd.
    A zombie is not running: it holds no port and runs nothing."""
    found = []
    needles = [str(p) for p in paths]
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(p.info["cmdline"] or [])
            hit = any(n in cmdline for n in needles)
            with contextlib.suppress(psutil.Error):
                hit = hit or p.environ().get(MARKER_ENV) == marker
                hit = hit or any(p.cwd().startswith(n) for n in needles)
            if hit:
                found.append(f"pid {p.pid}: {cmdline[:200]}")
    return found


def run_check(lab: course.Lab, tmp_path: Path, *, lab_path: Path | None = None,
              solution: bool = False) -> CheckRun:
    report = tmp_path / "report.json"
    basetemp = tmp_path / "basetemp"
    argv = [sys.executable, "-m", "pytest", str(lab.check_path), "-q", "-p", "no:cacheprovider",
            f"--basetemp={basetemp}", f"--lab-report={report}"]
    if solution:
        argv.append("--solution")
    if lab_path is not None:
        argv.append(f"--lab-path={lab_path}")
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS", "PYTEST_ADDOPTS")}
    env[MARKER_ENV] = marker
    started = time.monotonic()
    child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        output, _ = child.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        pytest.fail(f"the check run did not finish within {RUN_TIMEOUT_S} s:\n{output[-3000:]}")
    run = CheckRun(returncode=child.returncode, seconds=time.monotonic() - started, output=output)

    # Nothing the run started may outlive it: not a worker, a server, nor a replay.
    survivors = running_processes_of(marker, [p for p in (lab_path, basetemp) if p is not None])
    children = [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    assert not survivors and not children, (
        f"processes left behind by the check run: {survivors or children}\n{run.describe()}")

    assert report.exists(), f"the check run wrote no --lab-report\n{run.describe()}"
    records = json.loads(report.read_text())
    run.records = {r["check"]: r for r in records}
    assert run.returncode in (0, 1), f"pytest itself failed (usage or internal error)\n{run.describe()}"
    for name, record in run.records.items():
        assert INTERNAL_ERROR not in record["message"], f"{name}: {record['message']}\n{run.describe()}"
    assert len(records) == len(run.records) and set(run.records) == {c.name for c in lab.checks}, (
        f"the report's checks are not course.toml's\n{run.describe()}")
    return run


# --- solutions pass, starters fail ---------------------------------------------------------------

LAB_IDS = [lab.slug for lab in COURSE.labs]


@pytest.mark.parametrize("lab", COURSE.labs, ids=LAB_IDS)
def test_every_check_passes_on_the_solution(lab, tmp_path):
    run = run_check(lab, tmp_path, solution=True)
    failed = [name for name, r in run.records.items() if r["outcome"] != "passed"]
    assert not failed and run.returncode == 0, f"failing on the solution: {failed}\n{run.describe()}"


@pytest.mark.parametrize("lab", COURSE.labs, ids=LAB_IDS)
def test_every_check_fails_on_the_starter(lab, tmp_path):
    run = run_check(lab, tmp_path)  # no --lab-path: the default target, labs/<slug>
    assert run.returncode == 1, run.describe()
    messages = [record["message"] for record in run.records.values()]
    assert any("Not implemented yet" in m for m in messages), run.describe()
    for name, record in run.records.items():
        assert record["outcome"] == "failed", f"{name} passes on the untouched starter\n{run.describe()}"
        # the TODO itself, or a check that could not run because of it
        assert record["message"].startswith(("Not implemented yet", "not checked:")), f"{name}: {record['message']}"


@pytest.mark.parametrize("lab", COURSE.labs, ids=LAB_IDS)
def test_every_starter_has_todo_markers_in_its_edited_files(lab):
    marker = f"TODO(lab{lab.id})"
    assert lab.edits, f"{lab.slug}: course.toml lists no `edits`"
    for name in lab.edits:
        assert marker in (lab.starter_dir / name).read_text(), f"labs/{lab.slug}/{name} has no {marker}"


# --- Lab 01 variants -----------------------------------------------------------------------------

BLOCKED = "not checked: the crash scenario did not finish"


@dataclass(frozen=True)
class Variant:
    """A copy of solutions/lab01_temporal_crash. `fails`: check -> substrings its message must
    contain; every other check passes, or (scenario_blocked) reports that it was not checked."""

    name: str
    fails: dict[str, tuple[str, ...]]
    changed: tuple[str, ...] = ()  # files that differ from the solution (bad variants; __init__.py aside)
    scenario_blocked: bool = False
    budget_s: float = RUN_BUDGET_S

    @property
    def good(self) -> bool:
        return self.name.startswith("good_")

    @property
    def path(self) -> Path:
        return VARIANTS / "lab01" / self.name


LAB01_VARIANTS = [
    # --- the concepts: each lands on the check that teaches it --------------------------------
    Variant("llm_in_parse_json", changed=("activities.py", "workflows.py"), fails={
        "llm-called-once": ("call_llm reached the LLM 2 times in run A",),
        # there is no separate call_llm step any more
        "activities-completed-once": ("are not call_llm → parse_json → save_to_db", "parse_json (completed, attempt 2)"),
    }),
    Variant("llm_reask_in_parse_json", changed=("activities.py",), fails={
        "llm-called-once": ("The LLM was called 4 more time(s) with a prompt that is neither run's text",
                            "Return only the JSON object"),
    }),
    Variant("no_retry_policy", changed=("workflows.py",), fails={
        "retry-policy": ("call_llm was scheduled with a different retry policy",
                         "maximum_attempts=0, initial_interval_s=1, backoff_coefficient=2"),
    }),
    Variant("other_retry_policy", changed=("workflows.py",), fails={
        "retry-policy": ("call_llm was scheduled with a different retry policy",
                         "maximum_attempts=5, initial_interval_s=2, backoff_coefficient=2"),
    }),
    Variant("no_deliberate_failure", changed=("activities.py",), scenario_blocked=True, fails={
        "crash-resume": ("The workflow finished without any retry", "parse_json completed on attempt 1"),
    }),
    Variant("nondeterministic_workflow", changed=("workflows.py",), scenario_blocked=True, fails={
        "crash-resume": ("Your workflow code failed inside the worker", "[TMPRL1100] Nondeterminism error",
                         "Activity id of scheduled event 'call_llm-"),
    }),
    Variant("non_idempotent_save", changed=("activities.py",), fails={
        "one-row-saved": ("save_to_db is not idempotent",
                          "failed: IntegrityError: UNIQUE constraint failed: analysis.workflow_id"),
    }),
    # A flag in the worker's memory, per workflow id: the restarted worker fails attempt 2 again,
    # and parse_json completes on attempt 3 (the last one maximum_attempts=3 allows).
    Variant("flag_based_failure", changed=("activities.py",), fails={
        "activities-completed-once": ("parse_json failed again on the restarted worker",
                                      "completed on attempt 3"),
    }),
    # One bool for the whole worker: only the first of the two runs fails, the other never retries.
    Variant("global_flag_failure", changed=("activities.py",), scenario_blocked=True, fails={
        "crash-resume": ("The workflow finished without any retry", "parse_json completed on attempt 1"),
    }),
    # --- bad input: a clear verdict, in time, nothing left running ----------------------------
    Variant("syntax_error", changed=("activities.py",), scenario_blocked=True, fails={
        "crash-resume": ("Your worker exited before it started polling: SyntaxError",),
    }),
    Variant("missing_function", changed=("worker.py",), scenario_blocked=True, fails={
        "crash-resume": ("Your worker exited before it started polling: ImportError: cannot import name "
                         "'save_analysis'",),
    }),
    # The worker's blocked event loop never runs its SIGTERM handler: the harness must SIGKILL it.
    Variant("worker_never_polls", changed=("worker.py",), scenario_blocked=True, budget_s=60, fails={
        "crash-resume": ("Your worker did not start polling within 20 s", "the process is still running"),
    }),
    Variant("hanging_activity", changed=("activities.py",), scenario_blocked=True, budget_s=60, fails={
        "crash-resume": ("parse_json never reached its retry backoff within 20 s", "call_llm attempt 1 (started)"),
    }),
    # --- correct, and shaped differently from the reference -----------------------------------
    Variant("good_class_activities", fails={}),
    Variant("good_start_activity", fails={}),
]
VARIANT_IDS = [v.name for v in LAB01_VARIANTS]


@pytest.mark.parametrize("variant", LAB01_VARIANTS, ids=VARIANT_IDS)
def test_lab01_variant_gets_its_verdict(variant, tmp_path):
    run = run_check(LAB01, tmp_path, lab_path=variant.path)
    assert run.seconds < variant.budget_s, f"took {run.seconds:.1f}s (budget {variant.budget_s}s)\n{run.describe()}"
    for check in (c.name for c in LAB01.checks):
        record = run.records[check]
        if check in variant.fails:
            assert record["outcome"] == "failed", f"{check} should fail\n{run.describe()}"
            for needle in variant.fails[check]:
                assert needle in record["message"], f"{check}: {needle!r} not in:\n{record['message']}"
        elif variant.scenario_blocked:
            assert record["outcome"] == "failed" and record["message"].startswith(BLOCKED), (
                f"{check} should be 'not checked'\n{run.describe()}")
        else:
            assert record["outcome"] == "passed", f"{check} should pass\n{run.describe()}"
    assert run.returncode == (0 if variant.good else 1), run.describe()


def test_lab01_variant_folders_match_the_list_and_the_readme():
    folders = sorted(p.name for p in (VARIANTS / "lab01").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(VARIANT_IDS)
    readme = (VARIANTS / "lab01" / "README.md").read_text()
    for variant in LAB01_VARIANTS:
        assert f"`{variant.name}`" in readme, f"README.md does not describe {variant.name}"


@pytest.mark.parametrize("variant", [v for v in LAB01_VARIANTS if not v.good],
                         ids=[v.name for v in LAB01_VARIANTS if not v.good])
def test_lab01_bad_variant_is_the_solution_with_one_marked_bug(variant):
    """A bad variant that drifted from the solution tests something else: re-copy it."""
    solution = LAB01.solution_dir
    names = sorted(p.name for p in solution.glob("*.py"))
    assert sorted(p.name for p in variant.path.glob("*.py")) == names
    for name in names:
        if name == "__init__.py":
            continue
        same = filecmp.cmp(solution / name, variant.path / name, shallow=False)
        if name in variant.changed:
            assert not same, f"{variant.name}/{name} is declared changed but equals the solution's"
            assert f"BUG({variant.name})" in (variant.path / name).read_text(), (
                f"{variant.name}/{name}: mark the bug with a BUG({variant.name}) comment")
        else:
            assert same, f"{variant.name}/{name} differs from solutions/{LAB01.slug}/{name}: re-copy it"
