"""Lab 03's self-test: its checks grade what they claim to grade.

- every check passes on solutions/lab03_langgraph_resume, forked from the warm interpreter
  (the default) and started with a plain exec (LAB_PREFORK=0): the fork server changes speed,
  not verdicts;
- every check fails on the untouched starter, with the TODO or "not checked";
- each known-bad variant (tests/variants/lab03/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the checks that own the bug, with their teaching message; the checks
  listed as blocked say "not checked"; every other check passes;
- the differently shaped correct variant passes everything;
- every run gives a verdict within its budget and leaves no process behind.

Each run is `python -m pytest checks/test_lab03_langgraph_resume.py --lab-path DIR --lab-report FILE`
in its own process group, as the `lab` CLI runs it.
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
VARIANTS = Path(__file__).resolve().parent / "variants" / "lab03"
LAB = course.load().lab("03")
CHECKS = [c.name for c in LAB.checks]
RUN_TIMEOUT_S = 120
RUN_BUDGET_S = 40  # measured 4-10 s on a shared 2-core machine; a hang shows up as 30 s+ per step
MARKER_ENV = "LAB_SELFTEST_RUN"
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
            lines.append(f"  {name}: {record['outcome']}  {head[:200]}")
        return "\n".join(lines) + "\n--- output (tail) ---\n" + "\n".join(self.output.splitlines()[-30:])


def leftovers(marker: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get(MARKER_ENV) == marker:
                found.append(f"pid {p.pid}: {' '.join(p.info['cmdline'] or [])[:200]}")
    return found


def run_check(tmp_path: Path, *, lab_path: Path | None = None, solution: bool = False,
              env_extra: dict[str, str] | None = None) -> CheckRun:
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "pytest", str(LAB.check_path), "-q", "-p", "no:cacheprovider",
            f"--basetemp={tmp_path / 'basetemp'}", f"--lab-report={report}"]
    if solution:
        argv.append("--solution")
    if lab_path is not None:
        argv.append(f"--lab-path={lab_path}")
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "DATABASE_URL", "PYTEST_ADDOPTS")}
    env.update(env_extra or {})
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
    # PostgreSQL runs as another user when we are root, but it inherits the marker too.
    survivors = leftovers(marker)
    assert not survivors, f"processes left behind by the check run: {survivors}\n{run.describe()}"
    assert report.exists(), f"the check run wrote no --lab-report\n{run.describe()}"
    records = json.loads(report.read_text())
    run.records = {r["check"]: r for r in records}
    assert run.returncode in (0, 1), f"pytest itself failed\n{run.describe()}"
    assert list(run.records) == CHECKS, f"the report's checks are not course.toml's\n{run.describe()}"
    for name, record in run.records.items():
        assert "internal error in the check" not in record["message"], f"{name}: {record['message']}"
    assert run.seconds < RUN_BUDGET_S, f"took {run.seconds:.1f}s (budget {RUN_BUDGET_S}s)\n{run.describe()}"
    return run


# --- the solution and the starter ----------------------------------------------------------------

@pytest.mark.parametrize("prefork", ["1", "0"], ids=["forked", "plain-exec"])
def test_every_check_passes_on_the_solution(prefork, tmp_path):
    run = run_check(tmp_path, solution=True, env_extra={"LAB_PREFORK": prefork})
    failed = [name for name, r in run.records.items() if r["outcome"] != "passed"]
    assert not failed and run.returncode == 0, f"failing on the solution: {failed}\n{run.describe()}"


def test_every_check_fails_on_the_starter(tmp_path):
    run = run_check(tmp_path)
    assert run.returncode == 1, run.describe()
    for name, record in run.records.items():
        assert record["outcome"] == "failed", f"{name} passes on the untouched starter\n{run.describe()}"
        assert record["message"].startswith(("Not implemented yet: TODO(lab03)", NOT_CHECKED)), (
            f"{name}: {record['message']}")


def test_every_edited_starter_file_has_todo_markers():
    for name in LAB.edits:
        assert "TODO(lab03)" in (LAB.starter_dir / name).read_text(), f"labs/{LAB.slug}/{name}"


# --- the variants --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """`fails`: check -> substrings its message must contain; `blocked`: checks that must say
    "not checked"; every other check must pass."""

    name: str
    changed: tuple[str, ...] = ()
    fails: dict[str, tuple[str, ...]] = field(default_factory=dict)
    blocked: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return VARIANTS / self.name

    @property
    def good(self) -> bool:
        return self.name.startswith("good_")


AFTER_RUN = ("checkpoints-after-crash", "resume-runs-report-only", "llm-once-per-node", "five-checkpoints",
             "resume-again-noop", "sql-confirms")
AFTER_RESUME = ("llm-once-per-node", "five-checkpoints", "resume-again-noop")
NO_RESUME = "Received no input for __start__"

VARIANTS_03 = [
    Variant("resume_original_input", changed=("cli.py",), fails={
        "resume-runs-report-only": ("The resume ran fetch and transform again", "original input instead of None"),
        "llm-once-per-node": ("fetch's LLM was called 2 time(s)", "original input instead of None"),
        "five-checkpoints": ("9 checkpoint(s)", "step 3 (input)", "started the thread over"),
        "resume-again-noop": ("Resuming a finished thread did work again", "checkpoints 9 -> 14"),
        "sql-confirms": ("finds 9 row(s) after the resume, not 5",),
        "sigkill-sync": ("The resume ran fetch and transform again",),
        "sqlite-part": ("The resume ran fetch and transform again",),
    }),
    Variant("new_thread_on_resume", changed=("cli.py",), blocked=AFTER_RESUME + ("sql-confirms",), fails={
        "resume-runs-report-only": ("The resume failed", NO_RESUME, "same thread_id"),
        "sigkill-sync": ("The resume after the SIGKILL failed", NO_RESUME),
        "sqlite-part": ("The SQLite resume failed", NO_RESUME),
    }),
    Variant("no_checkpointer", changed=("graph.py",), blocked=AFTER_RUN, fails={
        "crash-happened": ("The run failed before the crash point", "'_put_checkpoint_fut'",
                           "compile(checkpointer=saver)"),
        "sigkill-sync": ("'_put_checkpoint_fut'",),
        "sqlite-part": ("'_put_checkpoint_fut'",),
    }),
    Variant("in_memory_saver", changed=("graph.py",), blocked=AFTER_RESUME, fails={
        "checkpoints-after-crash": ("No checkpoint reached PostgreSQL after the crash", "InMemorySaver"),
        "resume-runs-report-only": ("The resume failed", NO_RESUME),
        "sql-confirms": ("finds 0 row(s) after the run, not 4",),
        "sigkill-sync": ("No checkpoint reached PostgreSQL after the SIGKILL",),
        "sqlite-part": ("holds no checkpoint table at all", "InMemorySaver"),
    }),
    Variant("setup_never_called", changed=("savers.py",), blocked=AFTER_RUN, fails={
        "crash-happened": ('UndefinedTable: relation "checkpoints" does not exist', "setup() was never called"),
        "sigkill-sync": ("setup() was never called",),
    }),
    Variant("durability_exit", changed=("graph.py",), blocked=AFTER_RESUME, fails={
        "checkpoints-after-crash": ("No checkpoint reached PostgreSQL after the crash", 'durability="exit"'),
        "resume-runs-report-only": ("The resume failed", NO_RESUME),
        "sql-confirms": ("finds 0 row(s) after the run, not 4",),
        "sigkill-sync": ("No checkpoint reached PostgreSQL after the SIGKILL", 'durability="exit"'),
        "sqlite-part": ("No checkpoint reached the SQLite file",),
    }),
    Variant("from_conn_string_direct", changed=("savers.py",), blocked=AFTER_RUN, fails={
        "crash-happened": ("_GeneratorContextManager", "returns a context manager, not a saver"),
        "sigkill-sync": ("_GeneratorContextManager",),
    }),
    Variant("good_own_connection"),
]


@pytest.mark.parametrize("variant", VARIANTS_03, ids=[v.name for v in VARIANTS_03])
def test_variant_gets_its_verdict(variant, tmp_path):
    run = run_check(tmp_path, lab_path=variant.path)
    for check in CHECKS:
        record = run.records[check]
        if check in variant.fails:
            assert record["outcome"] == "failed", f"{check} should fail\n{run.describe()}"
            for needle in variant.fails[check]:
                assert needle in record["message"], f"{check}: {needle!r} not in:\n{record['message']}"
        elif check in variant.blocked:
            assert record["outcome"] == "failed" and record["message"].startswith(NOT_CHECKED), (
                f"{check} should be 'not checked'\n{run.describe()}")
        else:
            assert record["outcome"] == "passed", f"{check} should pass\n{run.describe()}"
    assert run.returncode == (0 if variant.good else 1), run.describe()


def test_variant_folders_match_the_list_and_the_readme():
    folders = sorted(p.name for p in VARIANTS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(v.name for v in VARIANTS_03)
    readme = (VARIANTS / "README.md").read_text()
    for variant in VARIANTS_03:
        assert f"`{variant.name}`" in readme, f"README.md does not describe {variant.name}"


@pytest.mark.parametrize("variant", [v for v in VARIANTS_03 if not v.good],
                         ids=[v.name for v in VARIANTS_03 if not v.good])
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    names = sorted(p.name for p in LAB.solution_dir.glob("*.py"))
    assert sorted(p.name for p in variant.path.glob("*.py")) == names
    for name in names:
        same = filecmp.cmp(LAB.solution_dir / name, variant.path / name, shallow=False)
        if name in variant.changed:
            assert not same, f"{variant.name}/{name} is declared changed but equals the solution's"
            assert f"BUG({variant.name})" in (variant.path / name).read_text()
        else:
            assert same, f"{variant.name}/{name} differs from solutions/{LAB.slug}/{name}: re-copy it"
