"""Lab 02's self-test: its autograder grades what it claims to grade.

- every check passes on solutions/lab02_approval_signal and fails on the untouched starter;
- each known-bad variant (tests/variants/lab02/<name>: the solution with ONE marked bug) fails the
  check that owns its bug, with that check's teaching message; the checks its bug blocks say
  "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_*) passes every check;
- every run gives a verdict (never an internal error) within its time budget, and leaves no process
  behind.

Each run is `python -m pytest checks/test_lab02_approval_signal.py --lab-path DIR --lab-report FILE`
in a subprocess, as `lab check 02` and the grader run it: its own servers, its own process group.
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
LAB02 = course.load().lab("02")
VARIANTS = Path(__file__).resolve().parent / "variants" / "lab02"

RUN_TIMEOUT_S = 120
RUN_BUDGET_S = 45  # services, scenario, teardown; a variant that leaves a run waiting says more
MARKER_ENV = "LAB_SELFTEST_RUN"
INTERNAL_ERROR = "internal error in the check"
NOT_CHECKED = "not checked:"


@dataclass
class CheckRun:
    returncode: int
    seconds: float
    output: str
    records: dict[str, dict] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [f"exit status {self.returncode} after {self.seconds:.1f}s"]
        for name, record in self.records.items():
            head = record["message"].splitlines()[0] if record["message"] else ""
            lines.append(f"  {name}: {record['outcome']}  {head[:160]}")
        return "\n".join(lines) + "\n--- output (tail) ---\n" + "\n".join(self.output.splitlines()[-30:])


def leftovers(marker: str, paths: list[Path]) -> list[str]:
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
            if hit:
                found.append(f"pid {p.pid}: {cmdline[:200]}")
    return found


def run_check(tmp_path: Path, *, lab_path: Path | None = None, solution: bool = False) -> CheckRun:
    report, basetemp = tmp_path / "report.json", tmp_path / "basetemp"
    argv = [sys.executable, "-m", "pytest", str(LAB02.check_path), "-q", "-p", "no:cacheprovider",
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

    survivors = leftovers(marker, [basetemp])
    assert not survivors, f"processes left behind by the check run: {survivors}\n{run.describe()}"
    assert report.exists(), f"the check run wrote no --lab-report\n{run.describe()}"
    records = json.loads(report.read_text())
    run.records = {r["check"]: r for r in records}
    assert run.returncode in (0, 1), f"pytest itself failed (usage or internal error)\n{run.describe()}"
    for name, record in run.records.items():
        assert INTERNAL_ERROR not in record["message"], f"{name}: {record['message']}\n{run.describe()}"
    assert set(run.records) == {c.name for c in LAB02.checks}, f"the report's checks are not course.toml's\n{run.describe()}"
    return run


# --- the solution passes, the starter fails --------------------------------------------------------

def test_every_check_passes_on_the_solution(tmp_path):
    run = run_check(tmp_path, solution=True)
    failed = [name for name, r in run.records.items() if r["outcome"] != "passed"]
    assert not failed and run.returncode == 0, f"failing on the solution: {failed}\n{run.describe()}"
    assert run.seconds < RUN_BUDGET_S, run.describe()


def test_every_check_fails_on_the_starter(tmp_path):
    run = run_check(tmp_path)  # the default target: labs/lab02_approval_signal
    assert run.returncode == 1, run.describe()
    messages = [record["message"] for record in run.records.values()]
    assert any(m.startswith("Not implemented yet: TODO(lab02)") for m in messages), run.describe()
    for name, record in run.records.items():
        assert record["outcome"] == "failed", f"{name} passes on the untouched starter\n{run.describe()}"
        assert record["message"].startswith(("Not implemented yet", NOT_CHECKED)), f"{name}: {record['message']}"
    assert run.seconds < RUN_BUDGET_S, run.describe()


def test_the_starter_marks_its_edited_files():
    for name in LAB02.edits:
        assert "TODO(lab02)" in (LAB02.starter_dir / name).read_text(), f"labs/{LAB02.slug}/{name}: no TODO(lab02)"


# --- the variants ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """fails: check -> substrings its message must contain; blocked: checks that must say
    "not checked: ..."; every other check passes."""

    name: str
    fails: dict[str, tuple[str, ...]]
    changed: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    budget_s: float = RUN_BUDGET_S

    @property
    def good(self) -> bool:
        return self.name.startswith("good_")

    @property
    def path(self) -> Path:
        return VARIANTS / self.name


NO_GATE = ("status-query", "approval-survives-crash", "one-row-after-approval", "signal-recorded-once",
           "reject-keeps-reason", "timeout-expires", "durable-wait", "update-acknowledged", "validator-refuses")

LAB02_VARIANTS = [
    Variant("approval_ignored", changed=("workflows.py",), blocked=NO_GATE, fails={
        "waits-for-approval": ("The approve run finished before anyone decided", "before any decision was sent",
                               "rows saved: 1"),
    }),
    Variant("save_before_approval", changed=("workflows.py",), fails={
        "waits-for-approval": ("A row was saved before anyone approved it", "save_to_db had been scheduled"),
        "approval-survives-crash": ("The save did not run on the new worker",),
        "reject-keeps-reason": ("The rejected run did not end rejected - and it saved a row",),
        "timeout-expires": ("The timed-out run did not end expired with nothing saved",
                            "save_to_db scheduled 1 time(s)"),
    }),
    Variant("decision_applied_twice", changed=("workflows.py",), fails={
        "reject-keeps-reason": ("The rejected run did not end rejected", "'reviewer': 'dave'"),
        "validator-refuses": ("The validator did not refuse an unknown decision", "decide('maybe', carol) -> accepted"),
    }),
    Variant("no_timeout", changed=("workflows.py",), budget_s=60, fails={
        "timeout-expires": ("did not expire within 10 s of its 2 s approval timeout", "'stage': 'awaiting_approval'"),
        "durable-wait": ("The approve run's wait is not one timer of 86400 s", "0 timer(s)"),
    }),
    Variant("polling_sleep", changed=("workflows.py",), fails={
        "durable-wait": ("The approve run's wait is not one timer of 86400 s", "0.5 s (fired)"),
    }),
    Variant("init_in_run", changed=("workflows.py",), budget_s=60, fails={
        "early-signal": ("An approval that arrived before the wait was lost", "'stage': 'awaiting_approval'"),
    }),
    # One dict for the whole worker: erin's early approval approves every run; and a fresh process
    # (the replay) has an empty dict, so the recorded histories no longer replay.
    Variant("global_decision", changed=("models.py", "workflows.py"), blocked=NO_GATE, fails={
        "waits-for-approval": ("The approve run finished before anyone decided", "'reviewer': 'erin'"),
        "history-replays": ("does not replay against your workflow code", "Nondeterminism"),
    }),
    Variant("good_alt_shape", fails={}),
]
VARIANT_IDS = [v.name for v in LAB02_VARIANTS]


@pytest.mark.parametrize("variant", LAB02_VARIANTS, ids=VARIANT_IDS)
def test_lab02_variant_gets_its_verdict(variant, tmp_path):
    run = run_check(tmp_path, lab_path=variant.path)
    assert run.seconds < variant.budget_s, f"took {run.seconds:.1f}s (budget {variant.budget_s}s)\n{run.describe()}"
    for check in (c.name for c in LAB02.checks):
        record = run.records[check]
        if check in variant.fails:
            assert record["outcome"] == "failed", f"{check} should fail\n{run.describe()}"
            assert not record["message"].startswith(NOT_CHECKED), f"{check} should be checked\n{run.describe()}"
            for needle in variant.fails[check]:
                assert needle in record["message"], f"{check}: {needle!r} not in:\n{record['message']}"
        elif check in variant.blocked:
            assert record["outcome"] == "failed" and record["message"].startswith(NOT_CHECKED), (
                f"{check} should be 'not checked'\n{run.describe()}")
        else:
            assert record["outcome"] == "passed", f"{check} should pass\n{run.describe()}"
    assert run.returncode == (0 if variant.good else 1), run.describe()


def test_lab02_variant_folders_match_the_list_and_the_readme():
    folders = sorted(p.name for p in VARIANTS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(VARIANT_IDS)
    readme = (VARIANTS / "README.md").read_text()
    for variant in LAB02_VARIANTS:
        assert f"`{variant.name}`" in readme, f"README.md does not describe {variant.name}"


@pytest.mark.parametrize("variant", [v for v in LAB02_VARIANTS if not v.good],
                         ids=[v.name for v in LAB02_VARIANTS if not v.good])
def test_lab02_bad_variant_is_the_solution_with_one_marked_bug(variant):
    """A bad variant that drifted from the solution tests something else: re-copy it."""
    solution = LAB02.solution_dir
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
            assert same, f"{variant.name}/{name} differs from solutions/{LAB02.slug}/{name}: re-copy it"
