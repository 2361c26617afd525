"""Hostile submissions: `lab grade` gives each a clear verdict within its time limit, grades the
others as usual, and leaves no process and no listening port behind.

Each hostile submission is the Lab 01 solution with one file changed: its activities.py is the
solution's, followed by tests/hostile/note.py and the case's block, tests/hostile/lab01/<case>.py
(put together when the test runs, so the fixtures always follow the solution). The block leaves a
note in HOSTILE_NOTES_DIR (which the grader lets student code write to through
LAB_SANDBOX_WRITABLE) to prove it ran.

| case | the submission... | verdict |
|---|---|---|
| import_loop | loops forever at import | "did not finish importing (stuck at line N)", 0 |
| escaping_child | leaves a double-forked, setsid, SIGTERM-ignoring, marker-less daemon (one per import) | "left 3 process(es) running after its checks", 0; killed |
| memory_hog | allocates without bound in call_llm | "call_llm failed (attempt 1): MemoryError" (or "The workflow failed: MemoryError"), revisit names the limit, 0 |
| writes_outside | writes to checks/, labkit/, course.toml, $HOME, /tmp | sandbox: "PermissionError", nothing written, 0; no sandbox: "wrote outside its folder: <paths>", 0 |
| port_binder | listens on a port standing in for the course's fixed ports, and on its servers' ports | sandbox: "PermissionError", 0; no sandbox: graded as earned, the port free afterwards |
| exit_in_activity | calls os._exit in parse_json | "Your worker exited while workflow B ran ... (exit status 3)", 0 |
| exit_in_pytest | would os._exit the grading pytest process if imported there | never imported there: full marks (14/14) |
| (fake PASSED lines, forged reports) | tests/test_grading_tamper.py | the grade its lab earns |

The grader runs from a copy of the course (checks/, labkit/, course.toml, ...), so hostile writes
that get through land in the copy, never in this work tree. The course's fixed ports are never
bound: HOSTILE_PORTS is a free port the test picks.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from labkit import course as course_mod
from labkit import limits
from labkit.pristine import Snapshot
from labkit.services import free_port
from test_grading import IGNORE, LAB01, MARKER_ENV, MAX, REPO, Graded, clone_with, failed_checks, leftovers, run_grade

# Hang limits, not speed targets (the big class grades in 1-2 min here, several at a quarter core).
# The grader's per-run time limit is the backstop for a run that hangs: far above what a correct run
# needs on a slow machine, so that every hostile case gets its own verdict (its mechanism trips:
# the import guard, the memory limit, the sandbox), never the limit, on any machine.
TIME_LIMIT_S = 300
GRADE_HANG_LIMIT_S = 1500  # a whole `lab grade` of one class
pytestmark = pytest.mark.timeout(GRADE_HANG_LIMIT_S + 120)

HOSTILE = REPO / "tests" / "hostile"
COURSE_PARTS = ("checks", "labkit", "labs", "solutions", "course.toml", "pyproject.toml")
HOG_LIMIT_MB = 512


def test_each_hostile_block_is_marked_and_compiles_onto_the_solution():
    for block in sorted((HOSTILE / "lab01").glob("*.py")):
        assert f"HOSTILE({block.stem})" in block.read_text(), f"{block.name}: mark the block HOSTILE({block.stem})"
        compile(hostile_activities(block.stem), f"{block.stem}/activities.py", "exec")


# --- helpers ------------------------------------------------------------------------------------------

def course_copy(dest: Path) -> Path:
    for part in COURSE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=IGNORE)
        else:
            shutil.copy2(source, dest / part)
    return dest


def hostile_activities(case: str) -> str:
    """The solution's activities.py with the case's HOSTILE block (and its note helper) appended."""
    parts = (LAB01.solution_dir / "activities.py", HOSTILE / "note.py", HOSTILE / "lab01" / f"{case}.py")
    return "\n\n".join(part.read_text().rstrip("\n") for part in parts) + "\n"


def hostile(class_dir: Path, case: str, name: str | None = None) -> Path:
    submission = clone_with(class_dir / (name or case), LAB01.solution_dir)
    (submission / "labs" / LAB01.slug / "activities.py").write_text(hostile_activities(case))
    return submission


def listening(port: int) -> list[int]:
    """pids listening on 127.0.0.1:port (or on any address)."""
    return [c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port]


def grade_from(course: Path, submissions: Path, out: Path, *args: str, env: dict[str, str]) -> Graded:
    """`lab grade` run from the course copy; afterwards nothing it started may still run."""
    marker = uuid.uuid4().hex
    run_env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS", "PYTHONPATH")}
    run_env.update({MARKER_ENV: marker, "LAB_STATE_DIR": str(out.parent / "state"), **env})
    started = time.monotonic()
    done = run_grade([sys.executable, "-m", "labkit.cli", "grade", str(submissions), "--out", str(out), *args],
                     cwd=course, env=run_env, timeout=GRADE_HANG_LIMIT_S)
    graded = Graded(out, done.stdout + done.stderr, done.returncode, time.monotonic() - started)
    assert not leftovers(marker), f"processes left behind: {leftovers(marker)}\n{graded.describe()}"
    return graded


def notes(folder: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for path in folder.glob("*.jsonl"):
        found[path.stem] = [json.loads(line) for line in path.read_text().splitlines()]
    return found


def junit_failure(graded: Graded, submission: str) -> str:
    failure = graded.junit(submission).find("testsuite/testcase/failure")
    return "" if failure is None else f"{failure.get('message')}\n{failure.text}"


# --- with the sandbox (Landlock), as `lab grade` runs on this machine ---------------------------------

@pytest.mark.skipif(limits.landlock_abi() < 4, reason="needs Landlock ABI 4+ (writes and TCP binds)")
def test_hostile_submissions_get_clear_verdicts_and_leave_nothing(tmp_path):
    """Given a class of one correct and seven hostile Lab 01 submissions, When `lab grade --jobs 2`
    grades it, Then each hostile one gets its teaching verdict within the time limit, the correct
    one full marks, the course's files are unchanged and no process or port is left."""
    course = course_copy(tmp_path / "course")
    before = Snapshot.take([course / part for part in COURSE_PARTS])
    class_dir, proof, tag, port = tmp_path / "class", tmp_path / "notes", uuid.uuid4().hex[:8], free_port()
    proof.mkdir()
    clone_with(class_dir / "good", LAB01.solution_dir)
    for case in ("import_loop", "escaping_child", "memory_hog", "writes_outside", "port_binder",
                 "exit_in_activity", "exit_in_pytest"):
        hostile(class_dir, case)
    # The hog meets a 512 MiB limit (an instructor's LAB_STUDENT_MEMORY_MB) rather than the 2 GiB
    # default: the same mechanism and verdict, without touching 2 GiB three times on a busy machine.
    env = {"HOSTILE_NOTES_DIR": str(proof), "LAB_SANDBOX_WRITABLE": str(proof), "HOSTILE_TAG": tag,
           "HOSTILE_PORTS": str(port), "LAB_STUDENT_MEMORY_MB": str(HOG_LIMIT_MB)}
    try:
        graded = grade_from(course, class_dir, tmp_path / "out", "--labs", "01", "--jobs", "2",
                            "--time-limit", str(TIME_LIMIT_S), env=env)
    finally:
        for stray in (Path.home() / f"_hostile_{tag}", Path(f"/tmp/_hostile_{tag}")):
            stray.unlink(missing_ok=True)
    assert graded.returncode == 0, graded.describe()
    rows, found = graded.rows(), notes(proof)
    reason = {name: row["failed_checks"] for name, row in rows.items()}
    for name, row in rows.items():  # a verdict of their own, never the time limit
        assert "time limit" not in row["failed_checks"], graded.describe()

    # grading of the others went on: the correct submission, and the one that never gets imported
    # into the grading pytest process (it notes every process that imported it)
    assert (rows["good"]["score"], reason["good"]) == (str(MAX), ""), graded.describe()
    assert (rows["exit_in_pytest"]["score"], reason["exit_in_pytest"]) == (str(MAX), ""), graded.describe()
    imports = found["exit_in_pytest"]
    assert len({n["pid"] for n in imports}) >= 3 and not any(n["inside_pytest"] for n in imports), imports

    hostile_rows = {name: row for name, row in rows.items() if name not in ("good", "exit_in_pytest")}
    assert all(row["score"] == "0" and failed_checks(row) == ["crash-resume"] for row in hostile_rows.values()), rows

    assert found["import_loop"], "the loop never started"
    assert "crash-resume: The worker never started: your module activities.py did not finish importing " \
           "(stuck at line" in reason["import_loop"], reason["import_loop"]

    daemons = [n["daemon"] for n in found["escaping_child"]]  # one per import: both workers and the replay
    assert len(daemons) >= 2 and reason["escaping_child"].startswith(
        f"crash-resume: left {len(daemons)} process(es) running after its checks, detached from the worker "
        "(killed by the grader): pid "), reason["escaping_child"]
    assert any(f"pid {d}:" in reason["escaping_child"] for d in daemons), (daemons, reason["escaping_child"])
    for daemon in daemons:
        assert not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE

    assert found["memory_hog"] and all(n["mib"] <= HOG_LIMIT_MB for n in found["memory_hog"])
    # (under load the three attempts can run out before the check sees the first retry)
    assert reason["memory_hog"].startswith(("crash-resume: call_llm failed (attempt 1): MemoryError",
                                            "crash-resume: The workflow failed: MemoryError")), reason["memory_hog"]
    assert f"may use {HOG_LIMIT_MB} MiB (LAB_STUDENT_MEMORY_MB)" in junit_failure(graded, "memory_hog")

    (attempt,) = found["writes_outside"]
    # Lab 01's workers run as on their own host: $HOME is a fresh folder of the run (writable, thrown away)
    outside = {path: outcome for path, outcome in attempt["outcome"].items() if "/lab-grade-" not in path}
    assert set(outside.values()) == {"Permission denied"}, attempt
    failure = junit_failure(graded, "writes_outside")  # the whole message: the CSV's line is cut at 200
    assert "Your worker exited before it started polling: PermissionError: [Errno 13] Permission denied: " \
           f"'{course}/checks/_hostile_{tag}.py'" in failure, failure
    assert "sandbox" in failure
    assert before.changes(Snapshot.take([course / part for part in COURSE_PARTS])) == []

    (bound,) = found["port_binder"]
    assert bound["outcome"][str(port)] == "Permission denied", bound
    assert "PermissionError: [Errno 13] Permission denied" in reason["port_binder"], reason["port_binder"]
    assert not listening(port)

    assert found["exit_in_activity"]
    # (Lab 01's check runs workflow B to its end on the first worker before A: parse_json exits in B)
    assert "crash-resume: Your worker exited while workflow B ran on the first worker " \
           "(exit status 3)" in reason["exit_in_activity"], reason["exit_in_activity"]


def test_a_hostile_lab_does_not_stop_the_same_submissions_other_lab(tmp_path):
    """Given one submission whose Lab 01 leaves escaping daemons behind and whose Lab 02 is correct,
    When `lab grade --labs 01,02 --jobs 2` grades it,
    Then Lab 01 gets the escaped-process verdict and 0, Lab 02 full marks, and nothing is left."""
    course = course_copy(tmp_path / "course")
    class_dir, proof = tmp_path / "class", tmp_path / "notes"
    proof.mkdir()
    submission = hostile(class_dir, "escaping_child", "mallory")
    lab02 = course_mod.load().lab("02")
    shutil.copytree(lab02.solution_dir, submission / "labs" / lab02.slug, ignore=IGNORE)
    env = {"HOSTILE_NOTES_DIR": str(proof), "LAB_SANDBOX_WRITABLE": str(proof)}
    graded = grade_from(course, class_dir, tmp_path / "out", "--labs", "01,02", "--jobs", "2",
                        "--time-limit", str(TIME_LIMIT_S), env=env)
    assert graded.returncode == 0, graded.describe()
    with open(graded.out / "grades.csv", newline="") as handle:
        rows = {row["lab"]: row for row in csv.DictReader(handle)}
    assert rows["01"]["score"] == "0" and "left " in rows["01"]["failed_checks"] and \
        "process(es) running after its checks" in rows["01"]["failed_checks"], rows["01"]
    assert (rows["02"]["score"], rows["02"]["max"], rows["02"]["failed_checks"]) == \
        (str(lab02.max_points), str(lab02.max_points), ""), graded.describe()


# --- without the sandbox (a kernel without Landlock; LAB_SANDBOX=0): detected, and cleaned up --------

def test_without_the_sandbox_writes_are_detected_and_ports_freed(tmp_path):
    """Given LAB_SANDBOX=0, When `lab grade --jobs 1` grades a port binder, then a writer, then a
    correct submission,
    Then the binder held its port during its run and it is free afterwards (graded as earned), the
    writer's writes into the course's files are named in its verdict, and the submission after it is
    not graded on checks that can no longer be trusted: grading stopped, and it says why."""
    course = course_copy(tmp_path / "course")
    class_dir, proof, tag, port = tmp_path / "class", tmp_path / "notes", uuid.uuid4().hex[:8], free_port()
    proof.mkdir()
    hostile(class_dir, "port_binder", "a-binder")  # graded first: the writer's change spoils what follows
    hostile(class_dir, "writes_outside", "b-writer")
    clone_with(class_dir / "c-after", LAB01.solution_dir)
    env = {"HOSTILE_NOTES_DIR": str(proof), "LAB_SANDBOX": "0", "HOSTILE_TAG": tag, "HOSTILE_PORTS": str(port)}
    strays = (Path.home() / f"_hostile_{tag}", Path(f"/tmp/_hostile_{tag}"))
    try:
        graded = grade_from(course, class_dir, tmp_path / "out", "--labs", "01", "--jobs", "1",
                            "--time-limit", str(TIME_LIMIT_S), env=env)
        # (its $HOME is a fresh folder of the run, as on another host: only /tmp is the machine's)
        assert strays[1].is_file(), "the writer did not get through: the test proves nothing"
    finally:
        for stray in strays:
            stray.unlink(missing_ok=True)
    assert graded.returncode == 0, graded.describe()
    rows, found = graded.rows(), notes(proof)

    bound = found["port_binder"]  # one per import: both workers and the replay (SO_REUSEPORT)
    assert bound and all(b["outcome"][str(port)] == "listening" for b in bound), bound
    assert (rows["a-binder"]["score"], rows["a-binder"]["failed_checks"]) == (str(MAX), ""), graded.describe()
    assert not listening(port)

    attempts = found["writes_outside"]
    assert attempts and all(set(a["outcome"].values()) == {"written"} for a in attempts), attempts
    writer = rows["b-writer"]
    assert writer["score"] == "0", writer
    assert writer["failed_checks"].startswith(
        f"crash-resume: wrote outside its folder: checks/_hostile_{tag}.py (added), course.toml (changed), "
        f"labkit/_hostile_{tag}.py (added)"), writer
    after = rows["c-after"]
    assert after["score"] == "0" and after["failed_checks"].startswith(
        "crash-resume: not graded: grading stopped after the files the grader trusts changed ("), after
    assert "during b-writer's lab 01); restore them and grade again" in junit_failure(graded, "c-after"), \
        junit_failure(graded, "c-after")
