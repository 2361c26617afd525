"""The course self-test (like rustlings `dev check`): the checks grade what they claim to grade.

For every lab in course.toml:
- every check passes on solutions/ (forked programs, the default; Lab 03 also runs it with a plain
  exec in its own self-test);
- every check fails on the untouched labs/ starter (an already-solved starter is a bug), each with
  the starter's "Not implemented yet: TODO(labNN)" or "not checked: ..." because of it;
- the starter marks the files the student edits with TODO(labNN), and the solution does not;
- every run gives a verdict (never an internal error) and leaves no process behind
  (tests/selftest.py); how long it took is not asserted (a run that hangs is stopped at its hang
  limit and shown; speed is measured in bench/: bench/slow_machine.py, bench/run.py).

Each lab's known-bad and differently shaped correct variants: tests/test_labNN_selftest.py.
"""

from __future__ import annotations

import pytest
from selftest import NOT_CHECKED, run_check

from labkit import course

COURSE = course.load()
LAB_IDS = [lab.slug for lab in COURSE.labs]


def missing_service(lab: course.Lab) -> str | None:
    """Why a service the lab needs cannot run on this machine (Lab 07 without Node.js), or None."""
    from labkit.services import unavailable

    return next(filter(None, map(unavailable, lab.services)), None)


def assert_all_not_checked(run, reason: str) -> None:
    """A lab whose service is missing: every check NOT CHECKED with the service's reason, never a pass."""
    assert run.returncode == 1, run.describe()
    for name, record in run.records.items():
        assert record["outcome"] == "failed" and record["message"] == f"{NOT_CHECKED} {reason}", (
            f"{name}: {record['message']}\n{run.describe()}")


@pytest.mark.parametrize("lab", COURSE.labs, ids=LAB_IDS)
def test_every_check_passes_on_the_solution(lab, tmp_path):
    run = run_check(lab, tmp_path, solution=True)
    if missing_service(lab):
        return assert_all_not_checked(run, missing_service(lab))
    assert not run.failed() and run.returncode == 0, f"failing on the solution: {run.failed()}\n{run.describe()}"


@pytest.mark.parametrize("lab", COURSE.labs, ids=LAB_IDS)
def test_every_check_fails_on_the_starter(lab, tmp_path):
    run = run_check(lab, tmp_path)  # the default target: labs/<slug>
    if missing_service(lab):
        return assert_all_not_checked(run, missing_service(lab))
    todo = f"Not implemented yet: TODO(lab{lab.id})"
    assert run.returncode == 1, run.describe()
    assert any(r["message"].startswith(todo) for r in run.records.values()), run.describe()
    for name, record in run.records.items():
        assert record["outcome"] == "failed", f"{name} passes on the untouched starter\n{run.describe()}"
        # the TODO itself, or a check that could not run because of it
        assert record["message"].startswith((todo, NOT_CHECKED)), f"{name}: {record['message']}"


@pytest.mark.parametrize("lab", COURSE.labs, ids=LAB_IDS)
def test_every_starter_has_todo_markers_in_its_edited_files(lab):
    marker = f"TODO(lab{lab.id})"
    assert lab.edits, f"{lab.slug}: course.toml lists no `edits`"
    for name in lab.edits:
        assert marker in (lab.starter_dir / name).read_text(), f"labs/{lab.slug}/{name} has no {marker}"
        assert marker not in (lab.solution_dir / name).read_text(), f"solutions/{lab.slug}/{name} still has {marker}"
