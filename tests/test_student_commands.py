"""`lab watch`, `lab reset`, `lab solution` and the progress `lab list` keeps, run as a student runs them.

They run on a small course built in a temp dir (a git clone with labkit/, one lab whose check
reads one file, course.toml): the commands change the lab folder, so they must never run on this
repository's labs/, and a one-second check keeps the tests fast. The CLI is this labkit, copied:
`python -m labkit.cli` from the course's folder imports it, as `.venv/bin/lab` does in a clone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from selftest import tail_of

REPO = Path(__file__).resolve().parent.parent
# A one-check course whose check reads a file: seconds here; a `lab` command still running after
# HANG_LIMIT_S is stuck (and shown), never "too slow". A test makes several such commands.
HANG_LIMIT_S = 300
pytestmark = pytest.mark.timeout(4 * HANG_LIMIT_S)
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
SLUG = "lab01_demo"
STARTER = '"""Lab 01 (demo): the answer."""\n\n# TODO(lab01): set the answer\nANSWER = None\n'
SOLVED = '"""Lab 01 (demo): the answer."""\n\nANSWER = 42\n'
REFERENCE = '"""Lab 01 (demo): the answer, for reference."""\n\nANSWER = 42\n'

COURSE_TOML = f"""
[course]
name = "Demo course"
text = "none"

[[labs]]
id = "01"
slug = "{SLUG}"
title = "The answer"
section = "0.0 (demo)"
edits = ["answer.py"]
check = "checks/test_{SLUG}.py"
notebook = "notebooks/01_demo.ipynb"
services = []
hints = ["It is 42."]
checks = [{{ name = "answer", points = 2, concept = "the answer" }}]
"""

CHECK = '''"""The demo lab's check: answer.py says ANSWER = 42."""
import pytest

from labkit.feedback import CheckFailed

LAB = "01"


@pytest.mark.check("answer")
def test_answer(lab_target):
    text = (lab_target.root / lab_target.name / "answer.py").read_text()
    if "ANSWER = 42" not in text:
        raise CheckFailed("The answer is not 42 yet", observed=text.strip().splitlines()[-1],
                          expected="ANSWER = 42", revisit="the TODO(lab01) in answer.py")
'''


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), "-c", "user.name=Course", "-c", "user.email=course@example.org",
                           *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def clone(tmp_path) -> Path:
    """A clone of a one-lab course: labkit/ (this one), checks/, course.toml, labs/ and solutions/."""
    root = tmp_path / "course"
    shutil.copytree(REPO / "labkit", root / "labkit", ignore=IGNORE)
    (root / "checks").mkdir()
    (root / "checks" / "conftest.py").write_text('pytest_plugins = ["labkit.pytest_plugin"]\n')
    (root / "checks" / f"test_{SLUG}.py").write_text(CHECK)
    (root / "course.toml").write_text(COURSE_TOML)
    (root / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -p no:langsmith_plugin\ntimeout = 60\n")
    (root / ".gitignore").write_text(".lab/\n__pycache__/\n")
    for folder, text in (("labs", STARTER), ("solutions", REFERENCE)):
        (root / folder / SLUG).mkdir(parents=True)
        (root / folder / SLUG / "answer.py").write_text(text)
        (root / folder / SLUG / "README.md").write_text("# The answer\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the course")
    return root


def lab(root: Path, *args: str, timeout: float = HANG_LIMIT_S) -> subprocess.CompletedProcess:
    """`lab ARGS` in the clone; one that is still running after its hang limit fails with its output."""
    env = {**os.environ, "LAB_STATE_DIR": str(root.parent / "state"), "PYTHONUNBUFFERED": "1"}
    env.pop("LAB_PATH", None)
    try:
        return subprocess.run([sys.executable, "-m", "labkit.cli", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        output = hung.output.decode(errors="replace") if isinstance(hung.output, bytes) else hung.output or ""
        pytest.fail(f"hung: `lab {' '.join(args)}` was still running after {timeout:.0f} s; what it printed "
                    f"last:\n{tail_of(output)}", pytrace=False)


def answer(root: Path) -> Path:
    return root / "labs" / SLUG / "answer.py"


# --- progress and lab list -------------------------------------------------------------------------

def test_progress_and_scores_are_kept_across_runs(clone):
    """Given a fresh clone, lab list says pending; after a failing check it shows the score and
    "failing"; after a passing one "done" and the full score; each a separate `lab` process."""
    listed = lab(clone, "list")
    assert listed.returncode == 0, listed.stderr
    assert "pending" in listed.stdout and "-/2" in listed.stdout and "0/1 labs" in listed.stdout

    failed = lab(clone, "check", "01")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "The answer is not 42 yet" in failed.stdout
    listed = lab(clone, "list").stdout
    assert "0/2" in listed and "failing" in listed, listed

    answer(clone).write_text(SOLVED)
    passed = lab(clone, "check", "01")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "lab solution 01" in passed.stdout
    listed = lab(clone, "list").stdout
    assert "2/2" in listed and "done" in listed and "1/1 labs" in listed, listed

    answer(clone).write_text(STARTER)  # broken again: done stays, the last score shows, the best too
    assert lab(clone, "check", "01").returncode == 1
    listed = lab(clone, "list").stdout
    assert "0/2 (best 2)" in listed and "done" in listed and "last check failed" in listed, listed
    progress = json.loads((clone.parent / "state" / "progress.json").read_text())
    assert progress["01"]["passed"] is True and progress["01"]["best"] == 2 and progress["01"]["last"] is False


# --- lab solution ----------------------------------------------------------------------------------

def test_solution_opens_only_after_the_lab_passes(clone):
    refused = lab(clone, "solution", "01")
    assert refused.returncode == 1
    assert "opens once lab check 01 passes" in refused.stdout and "--force" in refused.stdout
    assert "ANSWER = 42" not in refused.stdout

    forced = lab(clone, "solution", "01", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "warning" in forced.stdout and "has not passed yet" in forced.stdout
    assert "-ANSWER = None" in forced.stdout and "+ANSWER = 42" in forced.stdout
    assert "--- yours/answer.py" in forced.stdout and "+++ reference/answer.py" in forced.stdout
    assert "TODO(lab01)" not in forced.stdout  # a comment: not code
    assert "README.md" not in forced.stdout  # identical files are not shown

    answer(clone).write_text(SOLVED)
    assert lab(clone, "check", "01").returncode == 0
    shown = lab(clone, "solution", "01")
    assert shown.returncode == 0 and "warning" not in shown.stdout
    assert "line for line" in shown.stdout and "(as code" in shown.stdout  # the docstrings alone differ
    full = lab(clone, "solution", "01", "--full")
    assert "+\"\"\"Lab 01 (demo): the answer, for reference.\"\"\"" in full.stdout
    assert "1 file(s) differ" in full.stdout

    answer(clone).write_text(REFERENCE)
    assert "line for line." in lab(clone, "solution", "01", "--full").stdout


def test_solution_shows_the_code_of_your_files_only(clone):
    """Given a passed lab whose README, docstrings and comments differ from the reference's, and a
    course file the student changed, When `lab solution` runs, Then it shows the lines of code of
    the student's files that differ, where they are in each file, and nothing else."""
    (clone / "labs" / SLUG / "README.md").write_text("# The answer\n\nMy own notes.\n")
    (clone / "labs" / SLUG / "course_helper.py").write_text("HELPER = 1\n")
    (clone / "solutions" / SLUG / "course_helper.py").write_text("HELPER = 2\n")
    (clone / "labs" / SLUG / "mine.py").write_text("EXTRA = 1\n")
    answer(clone).write_text('"""My docstring."""\n\n# my comment\nANSWER = 42  # mine\nSPARE = 0\n\n\ndef f():\n'
                             '    """Says why."""\n    return ANSWER\n')
    (clone / "solutions" / SLUG / "answer.py").write_text(REFERENCE + "\n\ndef f():\n    return ANSWER\n")
    assert lab(clone, "check", "01").returncode == 0
    shown = lab(clone, "solution", "01").stdout
    assert "-SPARE = 0" in shown and " ANSWER = 42" in shown, shown
    assert "@@ yours line 4, reference line 3 @@" in shown, shown
    assert "docstring" not in shown.replace("docstrings and comments", "") and "my comment" not in shown, shown
    assert "# mine" not in shown  # a comment after code: the code stays, the comment goes
    assert "Says why" not in shown and "return ANSWER" in shown  # context lines are code
    assert "README" not in shown and "course_helper" not in shown, shown  # the course's files
    assert "+++ /dev/null" in shown and "-EXTRA = 1" in shown  # a file the student added is theirs
    assert "2 file(s) differ" in shown, shown


# --- lab reset -------------------------------------------------------------------------------------

def test_reset_restores_the_starter_and_keeps_a_backup(clone):
    answer(clone).write_text(SOLVED)
    (clone / "labs" / SLUG / "helper.py").write_text("HELP = 1\n")
    (clone / "labs" / SLUG / "__pycache__").mkdir()
    out = lab(clone, "reset", "01", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert answer(clone).read_text() == STARTER
    assert sorted(p.name for p in (clone / "labs" / SLUG).iterdir()) == ["README.md", "answer.py"]
    (backup,) = (clone.parent / "state" / "backups").iterdir()
    assert backup.name.startswith(f"{SLUG}-")
    assert (backup / "answer.py").read_text() == SOLVED and (backup / "helper.py").exists()
    assert str(backup) in out.stdout and "restored labs/lab01_demo/" in out.stdout
    assert "note" not in out.stdout

    assert "pending again" not in out.stdout  # no check had run: there was no score to forget
    again = lab(clone, "reset", "01", "--yes")
    assert again.returncode == 0 and "already the starter" in again.stdout


def test_reset_sets_the_lab_back_to_pending_in_lab_list(clone):
    """Given a lab that passed (lab list: done), When `lab reset` restores the starter,
    Then lab list shows it pending, with no score, and `lab solution` is closed again."""
    answer(clone).write_text(SOLVED)
    assert lab(clone, "check", "01").returncode == 0
    assert "done" in lab(clone, "list").stdout
    out = lab(clone, "reset", "01", "--yes")
    assert out.returncode == 0 and "pending again" in out.stdout, out.stdout
    listed = lab(clone, "list").stdout
    assert "pending" in listed and "done" not in listed and "-/2" in listed and "0/1 labs" in listed, listed
    assert lab(clone, "solution", "01").returncode == 1
    assert len(list((clone.parent / "state" / "backups").iterdir())) == 1


def test_reset_after_committing_over_the_starter_finds_the_real_starter(clone):
    """Given a student who committed their answer (no TODO marker left) and a later course update
    that kept the markers, Then reset restores the newest starter, and says why it is not HEAD's."""
    starter_v2 = STARTER.replace("the answer.", "the answer (v2).")
    answer(clone).write_text(starter_v2)
    git(clone, "commit", "-q", "-am", "course: starter v2")
    answer(clone).write_text(SOLVED)
    git(clone, "commit", "-q", "-am", "my answer")
    out = lab(clone, "reset", "01", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert answer(clone).read_text() == starter_v2
    assert "note" in out.stdout and "looks like your own work" in out.stdout and "git show" in out.stdout


def test_reset_says_why_it_cannot_without_git(clone):
    shutil.rmtree(clone / ".git")
    answer(clone).write_text(SOLVED)
    out = lab(clone, "reset", "01", "--yes")
    assert out.returncode == 1 and "not a git clone" in out.stdout, out.stdout
    assert answer(clone).read_text() == SOLVED


# --- lab watch -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["--poll"]], ids=["file-events", "polling"])
def test_watch_checks_again_when_a_file_is_saved(clone, mode):
    env = {**os.environ, "LAB_STATE_DIR": str(clone.parent / "state"), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "labkit.cli", "watch", "01", "--runs", "2", *mode], cwd=clone,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + HANG_LIMIT_S  # a wait for the state (the watcher armed), not a budget
        while not any("waiting for a change" in line for line in lines):
            assert child.poll() is None, "".join(lines)
            if time.monotonic() > deadline:
                pytest.fail("hung: `lab watch` never said 'waiting for a change'; it printed:\n" + "".join(lines),
                            pytrace=False)
            time.sleep(0.1)
        assert any("0/1 checks passed" in line for line in lines), "".join(lines)
        answer(clone).write_text(SOLVED)  # the student saves
        try:
            child.wait(HANG_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail("hung: `lab watch` did not check again after the save; it printed:\n" + "".join(lines),
                        pytrace=False)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader.join(5)
    out = "".join(lines)
    assert child.returncode == 0, out
    assert "changed: answer.py" in out and "1/1 checks passed" in out, out
    assert out.index("0/1 checks passed") < out.index("changed: answer.py") < out.index("1/1 checks passed")


def test_a_save_during_the_check_is_not_lost(tmp_path):
    """A file saved while the check ran (no watcher yet) still counts as a change."""
    from labkit.cli import snapshot, wait_for_change

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    before = snapshot(tmp_path)
    (tmp_path / "__pycache__" / "a.cpython.pyc").write_bytes(b"ignored")
    (tmp_path / ".a.py.swp").write_text("ignored")
    (tmp_path / "a.py").write_text("x = 22\n")
    assert wait_for_change(tmp_path, before, poll=False) == ["a.py"]
    assert wait_for_change(tmp_path, before, poll=True) == ["a.py"]
