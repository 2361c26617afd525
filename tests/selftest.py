"""Shared helpers for the course's self-tests: helpers, not tests (pytest collects nothing here).

A check is graded the way the `lab` CLI and the grader run it: `python -m pytest <check>
--lab-path DIR --lab-report FILE` in a subprocess, in its own process group, with a hard timeout,
its own servers, and a marker in its environment that every process it starts inherits. After the
run nothing it started may still be running, it must have written its report, and the report must
hold exactly course.toml's checks, in order, none of them an internal error.

A known-bad variant (tests/variants/labNN/<name>/) is the solution with ONE bug, marked
`BUG(<name>)` in each file it changes; a correct variant of a different shape is named `good_<name>`.
A lab's self-test, tests/test_labNN_selftest.py, is a table of its variants and three tests:

    from labkit import course
    from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, \\
        bad, parametrize, run_variant

    LAB = course.load().lab("04")
    AFTER_RESUME = ("state-after-resume", "time-travel")  # checks a failed resume keeps from running

    VARIANTS = [
        # fails: check -> fragments its message must contain; blocked: checks that must say
        # "not checked: ..."; every other check must pass.
        Variant("no_interrupt", changed=("graph.py",), blocked=AFTER_RESUME, fails={
            "pauses-for-review": ("The graph ran past the review step", "interrupt()"),
        }),
        Variant("slow_variant", changed=("graph.py",), hang_limit_s=1800, fails={...}),  # above HANG_LIMIT_S
        Variant("good_other_shape"),
    ]

    @parametrize(VARIANTS)
    def test_variant_gets_its_verdict(variant, tmp_path):
        run_variant(LAB, variant, tmp_path)

    def test_variant_folders_match_the_list_and_the_readme():
        assert_folders_match(LAB, VARIANTS)

    @parametrize(bad(VARIANTS))
    def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
        assert_solution_plus_marked_bug(LAB, variant)

No self-test asserts how long a run took (a verdict that depends on the machine's speed is the
bug issue 13 is about; speed is measured in bench/, see bench/slow_machine.py). A run that does not
finish within its hang limit (HANG_LIMIT_S, or more where a variant's row says so) is killed, and
the failure shows the tail of what it printed: what hung, not how long it took.

Do not repeat what tests/test_course_selftest.py proves for every lab in course.toml: the
solution passes, the untouched starter fails ("Not implemented yet: TODO(labNN)" or "not
checked: ..."), the starter has TODO markers. A lab-specific run (say, the solution under another
setting) calls `run_check(LAB, tmp_path, solution=True, env={...})` and asserts on `run.records`.
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from labkit import course

REPO = Path(__file__).resolve().parent.parent
VARIANTS = Path(__file__).resolve().parent / "variants"

# A whole check run's hang limit (services, scenario, every check, teardown). Not a speed target:
# runs take 5-60 s on a quiet 2-core machine and several times that at a quarter of a core or
# under `make test`'s load; a run still going after HANG_LIMIT_S is stuck, and is killed and
# reported with its output's tail. LAB_SELFTEST_HANG_LIMIT_S overrides it (a very slow runner).
HANG_LIMIT_S = float(os.environ.get("LAB_SELFTEST_HANG_LIMIT_S", "900"))
RUN_TIMEOUT_S = HANG_LIMIT_S  # the old name
RUN_BUDGET_S = None  # the old per-run time budget: no longer asserted (issue 13); kept for imports
MARKER_ENV = "LAB_SELFTEST_RUN"  # inherited by every process a run starts: finds its leftovers
INTERNAL_ERROR = "internal error in the check"
NOT_CHECKED = "not checked:"
# Settings a developer's shell may hold that would point a run at other servers, another folder
# or another way of starting programs: a self-test run uses its own and the defaults.
SCRUBBED_ENV = ("LAB_PATH", "TEMPORAL_ADDRESS", "DATABASE_URL", "PYTEST_ADDOPTS", "LAB_PREFORK")


# --- running a check the way the CLI does ---------------------------------------------------------

@dataclass
class CheckRun:
    returncode: int
    seconds: float
    output: str
    records: dict[str, dict] = field(default_factory=dict)  # check name -> its --lab-report record

    def describe(self) -> str:
        lines = [f"exit status {self.returncode} after {self.seconds:.1f}s"]
        for name, record in self.records.items():
            head = record["message"].splitlines()[0] if record["message"] else ""
            lines.append(f"  {name}: {record['outcome']}  {head[:200]}")
        return "\n".join(lines) + "\n--- output (tail) ---\n" + "\n".join(self.output.splitlines()[-30:])

    def failed(self) -> list[str]:
        return [name for name, record in self.records.items() if record["outcome"] != "passed"]


def running_processes_of(marker: str, paths: Iterable[Path]) -> list[str]:
    """Processes still running that a check run started: they carry its marker in their
    environment (PostgreSQL too, though it runs as another user when we are root), or name one of
    its folders on their command line or as their cwd. A process carrying another run's marker is
    that run's (another self-test of the same variant, say), not this one's. A zombie is not
    running: it holds no port and runs nothing."""
    found = []
    needles = [str(p) for p in paths]
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(p.info["cmdline"] or [])
            hit = any(n in cmdline for n in needles)
            with contextlib.suppress(psutil.Error):
                theirs = p.environ().get(MARKER_ENV)
                if theirs not in (None, marker):
                    continue
                hit = hit or theirs == marker
                hit = hit or any(p.cwd().startswith(n) for n in needles)
            if hit:
                found.append(f"pid {p.pid}: {cmdline[:200]}")
    return found


def running_children(marker: str | None = None) -> list[psutil.Process]:
    """This process's descendants that are still running (not zombies); with `marker`, leaving out
    those that carry another run's marker (runs made at once from one process, bench/slow_machine.py
    --jobs N, see each other's processes as children)."""
    def theirs(process: psutil.Process) -> bool:  # carries another run's marker
        with contextlib.suppress(psutil.Error):
            return marker is not None and process.environ().get(MARKER_ENV) not in (None, marker)
        return False

    found = []
    for top in psutil.Process().children():
        if theirs(top):  # another run's whole tree (its PostgreSQL may not carry the marker)
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.status() != psutil.STATUS_ZOMBIE and not theirs(child):
                        found.append(child)
    return found


def hang_limit(*asked: float | None) -> float:
    """The hang limit of a run: HANG_LIMIT_S, or more if a caller or a variant's row asks for more.
    Never less: a short limit would make the verdict depend on the machine's speed."""
    return max([HANG_LIMIT_S, *(a for a in asked if a)])


def run_check(lab: course.Lab, tmp_path: Path, *, lab_path: Path | None = None, solution: bool = False,
              env: Mapping[str, str] | None = None, hang_limit_s: float | None = None,
              budget_s: float | None = None, prefix: Iterable[str] = ()) -> CheckRun:
    """Run `lab`'s check on `lab_path` (default: the starter, labs/<slug>; or the solution) as
    `lab check` does, and assert the run is sound: it finished (a run still going after its hang
    limit is killed with its process group, and the failure shows what it printed last), left
    nothing running, wrote its report with exactly course.toml's checks in order, exited 0 or 1,
    no internal error. How long it took is not asserted (bench/ measures speed).
    `hang_limit_s` (or its old name `budget_s`): raises the hang limit above HANG_LIMIT_S.
    `env`: extra environment for the run; `prefix`: a command the run is started under (say
    /work/shared/tools/slow-machine 0.25, as bench/slow_machine.py does). The verdicts are for the
    caller to assert."""
    report, basetemp = tmp_path / "report.json", tmp_path / "basetemp"
    argv = [*prefix, sys.executable, "-m", "pytest", str(lab.check_path), "-q", "-p", "no:cacheprovider",
            f"--basetemp={basetemp}", f"--lab-report={report}"]
    if solution:
        argv.append("--solution")
    if lab_path is not None:
        argv.append(f"--lab-path={lab_path}")
    marker = uuid.uuid4().hex
    child_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    child_env.update(env or {})
    child_env[MARKER_ENV] = marker
    limit = hang_limit(hang_limit_s, budget_s)
    started = time.monotonic()
    child = subprocess.Popen(argv, cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        output, _ = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        where = f"--lab-path {lab_path}" if lab_path else ("--solution" if solution else "the starter")
        pytest.fail(f"hung: the check run of lab {lab.id} on {where} was still running after its hang limit "
                    f"({limit:.0f} s) and was killed. What it printed last:\n{tail_of(output)}", pytrace=False)
    run = CheckRun(returncode=child.returncode, seconds=time.monotonic() - started, output=output)

    # Nothing the run started may outlive it: not a worker, a server, nor a replay.
    survivors = running_processes_of(marker, [p for p in (lab_path, basetemp) if p is not None])
    children = running_children(marker)
    assert not survivors and not children, (
        f"processes left behind by the check run: {survivors or children}\n{run.describe()}")

    assert report.exists(), f"the check run wrote no --lab-report\n{run.describe()}"
    records = json.loads(report.read_text())
    run.records = {r["check"]: r for r in records}
    assert run.returncode in (0, 1), f"pytest itself failed (usage or internal error)\n{run.describe()}"
    for name, record in run.records.items():
        assert INTERNAL_ERROR not in record["message"], f"{name}: {record['message']}\n{run.describe()}"
    assert [r["check"] for r in records] == [c.name for c in lab.checks], (
        f"the report's checks are not course.toml's, in its order\n{run.describe()}")
    return run


def tail_of(output: str, lines: int = 40) -> str:
    """The last lines of a run's output: the check that was running and what it waited for."""
    return "\n".join(output.splitlines()[-lines:]) or "(nothing)"


def default_sigint() -> None:
    """preexec_fn for a program a test will interrupt with SIGINT (Ctrl-C): SIGINT's default action.

    A non-interactive shell starts a background job (`make test &`) with SIGINT ignored, every
    child inherits that, and Python then keeps ignoring it: the program would never see the
    test's Ctrl-C. A terminal's Ctrl-C always reaches a program that did not ignore it itself."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- variants ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """The student's files of a submission under tests/variants/labNN/<name> (see student_files).

    fails: check -> fragments its message must contain (and it must be checked, not "not checked");
    blocked: checks that must say "not checked: ..." (a check in `fails` is not blocked even when
    listed here, so `blocked=every check` reads "the rest could not run"); every other check passes.
    changed: the files that differ from the solution's, each marking its bug with BUG(<name>).
    hang_limit_s: this run's hang limit when it must be above HANG_LIMIT_S (a variant whose bug
    makes the check wait out its own long timeouts). budget_s: its old name, read the same way
    (a hang limit, not a speed target: no run's duration is asserted).
    sweep_finds: a known-bad variant that passes every check on purpose (the check's one kill cannot
    see it) and that a crash sweep catches (`lab sweep NN --path ...`); its README row gives the seed."""

    name: str
    fails: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    changed: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    hang_limit_s: float | None = None
    budget_s: float | None = None
    sweep_finds: bool = False

    @property
    def limit_s(self) -> float:
        return hang_limit(self.hang_limit_s, self.budget_s)

    @property
    def good(self) -> bool:
        return self.name.startswith("good_")

    def path(self, lab: course.Lab) -> Path:
        return VARIANTS / f"lab{lab.id}" / self.name


def bad(variants: Iterable[Variant]) -> list[Variant]:
    return [v for v in variants if not v.good]


def parametrize(variants: Iterable[Variant]):
    """`@parametrize(VARIANTS)`: one test per variant, named after it, as the argument `variant`;
    each with a pytest timeout above its run's hang limit (the run's limit fires first, with its tail)."""
    variants = list(variants)
    return pytest.mark.parametrize("variant", [
        pytest.param(v, id=v.name, marks=pytest.mark.timeout(timeout_for_runs(v.limit_s))) for v in variants])


def timeout_for_runs(*run_limits: float) -> float:
    """pytest-timeout's limit for a test that makes runs with these hang limits (default: one run
    of HANG_LIMIT_S): above them, so a run's own limit fires first and shows what hung.
    tests/conftest.py gives it to every test of a module that uses run_check."""
    return sum(run_limits or (HANG_LIMIT_S,)) + 120



def assert_verdict(lab: course.Lab, variant: Variant, run: CheckRun, *, budget_s: float | None = None,
                   not_checked: str = NOT_CHECKED) -> None:
    """The run of `variant` gave exactly the verdict its table row expects (how long it took is not
    asserted; `budget_s` is accepted for old callers and ignored).
    `not_checked`: how a blocked check's message starts (a lab may say more than NOT_CHECKED)."""
    checks = [c.name for c in lab.checks]
    unknown = sorted((set(variant.fails) | set(variant.blocked)) - set(checks))
    assert not unknown, f"{variant.name}: no such check(s) in course.toml: {unknown}"
    assert not (variant.good and (variant.fails or variant.blocked)), f"{variant.name}: a good_ variant fails nothing"
    for check in checks:
        record = run.records[check]
        if check in variant.fails:
            assert record["outcome"] == "failed", f"{check} should fail\n{run.describe()}"
            assert not record["message"].startswith(NOT_CHECKED), f"{check} should be checked\n{run.describe()}"
            for needle in variant.fails[check]:
                assert needle in record["message"], f"{check}: {needle!r} not in:\n{record['message']}"
        elif check in variant.blocked:
            assert record["outcome"] == "failed" and record["message"].startswith(not_checked), (
                f"{check} should be {not_checked!r}...\n{run.describe()}")
        else:
            assert record["outcome"] == "passed", f"{check} should pass\n{run.describe()}"
    assert not (variant.sweep_finds and (variant.fails or variant.blocked)), \
        f"{variant.name}: a variant only a sweep finds fails no check"
    assert run.returncode == (0 if variant.good or variant.sweep_finds else 1), run.describe()


def run_variant(lab: course.Lab, variant: Variant, tmp_path: Path, *, budget_s: float | None = None,
                not_checked: str = NOT_CHECKED) -> CheckRun:
    """Run the check on the variant's folder and assert its verdict (see assert_verdict).
    The run's hang limit: the variant's (hang_limit_s / budget_s) or `budget_s` if above HANG_LIMIT_S."""
    run = run_check(lab, tmp_path, lab_path=variant.path(lab), hang_limit_s=hang_limit(variant.limit_s, budget_s))
    assert_verdict(lab, variant, run, not_checked=not_checked)
    return run


def assert_folders_match(lab: course.Lab, variants: Iterable[Variant]) -> None:
    """tests/variants/labNN holds exactly the listed variants, and its README.md names each one."""
    variants = list(variants)
    folder = VARIANTS / f"lab{lab.id}"
    folders = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(v.name for v in variants)
    readme = (folder / "README.md").read_text()
    for variant in variants:
        assert f"`{variant.name}`" in readme, f"README.md does not describe {variant.name}"


def student_files(lab: course.Lab) -> list[str]:
    """What a variant folder holds: the student's files (course.toml `edits`) and the package's
    __init__.py (whose docstring may say what the variant is). Grading lays the course's own copy of
    every other file over the folder (labkit.pytest_plugin.graded_copy), so a copy here would never run."""
    return sorted({*lab.edits, "__init__.py"})


def assert_solution_plus_marked_bug(lab: course.Lab, variant: Variant, *, ignore: tuple[str, ...] = ()) -> None:
    """A bad variant is the solution's student files with ONE bug: it holds exactly those files,
    equal to the solution's outside the files it declares changed, and each of those differs and
    marks its bug with BUG(<name>). A variant that drifted from the solution tests something else:
    re-copy it. `ignore`: files a lab lets differ (say, a docstring per variant)."""
    assert not variant.good and variant.changed, f"{variant.name}: a bad variant names the files it changes"
    names = student_files(lab)
    held = sorted(p.name for p in variant.path(lab).glob("*.py"))
    assert held == names, (f"{variant.name} holds {held}; a variant holds the student's files {names} "
                           "(the course's own files are laid over it when it is graded)")
    assert set(variant.changed) <= set(names), f"{variant.name}: changed names no student file"
    for name in names:
        if name in ignore:
            continue
        mine = variant.path(lab) / name
        same = filecmp.cmp(lab.solution_dir / name, mine, shallow=False)
        if name in variant.changed:
            assert not same, f"{variant.name}/{name} is declared changed but equals the solution's"
            assert f"BUG({variant.name})" in mine.read_text(), (
                f"{variant.name}/{name}: mark the bug with a BUG({variant.name}) comment")
        else:
            assert same, f"{variant.name}/{name} differs from solutions/{lab.slug}/{name}: re-copy it"
