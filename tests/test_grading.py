"""`lab grade` on a simulated class, run as an instructor runs it (the CLI, in a subprocess).

One class: a correct submission (a clone with labs/lab01_temporal_crash = the solution), a broken
one (the untouched starter), one without the lab, and one that is a folder holding the lab folder
directly. Graded with --jobs 2; every output format is read back. A second run shows the time
limit stopping a submission whose worker never polls, with nothing left running.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from labkit import course
from selftest import default_sigint, tail_of

REPO = Path(__file__).resolve().parent.parent
LAB01 = course.load().lab("01")
CHECKS = [c.name for c in LAB01.checks]
MAX = LAB01.max_points
MARKER_ENV = "LAB_GRADING_TEST_RUN"  # every process `lab grade` starts inherits it
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")

# A class graded by `lab grade`: it runs real checks on real servers, a few at a time. Its hang
# limit (not a speed target: 1-2 min here, several times that at a quarter of a core):
GRADE_HANG_LIMIT_S = 900
pytestmark = pytest.mark.timeout(GRADE_HANG_LIMIT_S + 120)


# --- helpers, shared with tests/test_grading_tamper.py -------------------------------------------

def clone_with(submission: Path, lab_folder: Path | None) -> Path:
    """A submission shaped like a clone of the course: labs/<slug> (absent when lab_folder is None)."""
    (submission / "labs").mkdir(parents=True)
    (submission / "README.md").write_text("my clone of the course\n")
    if lab_folder is not None:
        shutil.copytree(lab_folder, submission / "labs" / LAB01.slug, ignore=IGNORE)
    return submission


@dataclass
class Graded:
    out: Path
    stdout: str
    returncode: int
    seconds: float

    def rows(self) -> dict[str, dict]:
        with open(self.out / "grades.csv", newline="") as handle:
            return {row["submission"]: row for row in csv.DictReader(handle)}

    def junit(self, submission: str) -> ET.Element:
        return ET.parse(self.out / "junit" / f"{submission}.xml").getroot()

    def gradescope(self, submission: str) -> dict:
        return json.loads((self.out / "gradescope" / submission / "results.json").read_text())

    def describe(self) -> str:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted((self.out / "logs").glob("*.log")))
        return f"exit {self.returncode} after {self.seconds:.1f}s\n{self.stdout[-3000:]}\n{logs}"


def leftovers(marker: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "status", "cmdline"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER_ENV) == marker:
                found.append(f"pid {process.pid}: {' '.join(process.info['cmdline'] or [])[:200]}")
    return found


def run_grade(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = GRADE_HANG_LIMIT_S):
    """Run `lab grade`; past its hang limit, fail with what it printed last (what hung)."""
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        output = hung.output.decode(errors="replace") if isinstance(hung.output, bytes) else hung.output or ""
        pytest.fail(f"hung: `lab grade` was still running after {timeout:.0f} s; what it printed last:\n"
                    f"{tail_of(output)}", pytrace=False)


def lab_grade(submissions: Path, out: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = GRADE_HANG_LIMIT_S) -> Graded:
    """`lab grade SUBMISSIONS --out OUT ARGS`; afterwards nothing it started may still run."""
    marker = uuid.uuid4().hex
    run_env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS")}
    run_env.update({MARKER_ENV: marker, "LAB_STATE_DIR": str(out.parent / "state"), **(env or {})})
    started = time.monotonic()
    done = run_grade([sys.executable, "-m", "labkit.cli", "grade", str(submissions), "--out", str(out), *args],
                     cwd=REPO, env=run_env, timeout=timeout)
    graded = Graded(out, done.stdout + done.stderr, done.returncode, time.monotonic() - started)
    left = leftovers(marker)
    assert not left, f"processes left behind by lab grade: {left}\n{graded.describe()}"
    return graded


def failed_checks(row: dict) -> list[str]:
    return [part.split(":")[0].strip() for part in row["failed_checks"].split("; ") if ":" in part]


# --- a class ---------------------------------------------------------------------------------------

def test_grading_a_class_gives_every_format(tmp_path):
    """Given a class of four (correct, broken starter, lab missing, lab folder given directly),
    When `lab grade --labs 01 --jobs 2` grades it,
    Then grades.csv, the JUnit XML, Gradescope's results.json and summary.md say the same, right."""
    submissions = tmp_path / "class"
    clone_with(submissions / "ada", LAB01.solution_dir)
    clone_with(submissions / "bob", LAB01.starter_dir)
    clone_with(submissions / "cy", None)
    shutil.copytree(LAB01.solution_dir, submissions / "dee" / LAB01.slug, ignore=IGNORE)
    (submissions / ".git").mkdir()  # hidden folders are not submissions

    graded = lab_grade(submissions, tmp_path / "out", "--labs", "01", "--jobs", "2")
    assert graded.returncode == 0, graded.describe()
    assert "grading 4 submissions" in graded.stdout and "4/4" in graded.stdout, graded.describe()

    # grades.csv: one row per submission and lab, score, max, a one-line reason per failed check
    rows = graded.rows()
    assert sorted(rows) == ["ada", "bob", "cy", "dee"], graded.describe()
    for name in ("ada", "dee"):
        assert (rows[name]["lab"], rows[name]["score"], rows[name]["max"], rows[name]["failed_checks"]) == \
            ("01", str(MAX), str(MAX), ""), graded.describe()
    bob = rows["bob"]
    assert (bob["score"], bob["max"]) == ("0", str(MAX))
    assert failed_checks(bob) == ["crash-resume"], bob
    assert "TODO(lab01)" in bob["failed_checks"] and "6 more not checked" in bob["failed_checks"], bob
    assert "\n" not in bob["failed_checks"]
    # which folder of each submission was graded
    assert {name: row["graded_folder"] for name, row in rows.items()} == {
        "ada": f"labs/{LAB01.slug}", "bob": f"labs/{LAB01.slug}", "cy": "", "dee": LAB01.slug}, rows
    cy = rows["cy"]
    assert (cy["score"], cy["max"]) == ("0", str(MAX))
    # the missing folder is the first check's reason; the others were not checked, not failed
    assert failed_checks(cy) == ["crash-resume"], cy
    assert cy["failed_checks"] == (f"crash-resume: no folder labs/{LAB01.slug} in the submission; "
                                   f"{len(CHECKS) - 1} more not checked (the run they inspect did not finish)")

    # JUnit XML: parses; a failure per failed check, a skip per check not checked
    for name, failures, skipped in (("ada", [], []), ("dee", [], []), ("bob", ["crash-resume"], CHECKS[1:]),
                                    ("cy", ["crash-resume"], CHECKS[1:])):
        root = graded.junit(name)
        (suite,) = root.findall("testsuite")
        cases = suite.findall("testcase")
        assert [c.get("name") for c in cases] == CHECKS
        assert [c.get("name") for c in cases if c.find("failure") is not None] == failures, name
        assert [c.get("name") for c in cases if c.find("skipped") is not None] == skipped, name
        assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == \
            (str(len(CHECKS)), str(len(failures)), str(len(skipped)))
    bob_failure = graded.junit("bob").find("testsuite/testcase/failure")
    assert "TODO(lab01)" in bob_failure.get("message") and "revisit" in bob_failure.text

    # Gradescope results.json: the shape Gradescope reads
    points = {c.name: c.points for c in LAB01.checks}
    for name, score in (("ada", MAX), ("dee", MAX), ("bob", 0), ("cy", 0)):
        result = graded.gradescope(name)
        assert result["score"] == score and result["max_score"] == MAX, result
        assert isinstance(result["execution_time"], (int, float)) and result["execution_time"] >= 0
        assert [t["name"] for t in result["tests"]] == [f"lab01 {c}" for c in CHECKS]
        for test in result["tests"]:
            assert set(test) >= {"name", "score", "max_score", "output", "visibility"}, test
            assert test["max_score"] == points[test["name"].split()[1]]
            assert test["visibility"] == "visible" and isinstance(test["output"], str) and test["output"]
        assert sum(t["score"] for t in result["tests"]) == score
    assert "no folder" in graded.gradescope("cy")["tests"][0]["output"]
    assert graded.gradescope("cy")["tests"][1]["output"].startswith("not checked")
    assert graded.gradescope("ada")["execution_time"] > 1  # a real run

    # summary.md: the pass rate of every check, so the instructor sees which idea the class missed
    summary = (graded.out / "summary.md").read_text()
    assert "4 submissions" in summary
    assert f"mean score {2 * MAX / 4:.1f} / {MAX}" in summary
    for check in LAB01.checks:
        not_checked = 2 if check.name != "crash-resume" else 0
        failed = 2 if check.name == "crash-resume" else 0
        assert f"| {check.name} | {check.concept} | 2/4 | {failed} | {not_checked} | 50% |" in summary, summary

    # --jobs 2: two submissions were graded at the same time
    spans = []
    for name in ("ada", "bob", "dee"):
        suite = graded.junit(name).find("testsuite")
        start = datetime.fromisoformat(suite.get("timestamp")).timestamp()
        spans.append((start, start + float(suite.get("time"))))
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans

    # the instructor keeps each run's pytest output
    assert (graded.out / "logs" / "bob-lab01.log").read_text().strip()


def test_a_syntax_error_is_reported_with_its_file_and_line_and_the_graded_folder_is_named(tmp_path):
    """Given a submission uploaded as a zip of a clone (repo-main/labs/lab01_...) whose activities.py
    does not parse (the syntax_error variant),
    When `lab grade` grades it,
    Then grades.csv names the folder it graded and gives the error with activities.py:LINE, the log
    and Gradescope's output name the folder too, and the message teaches parsing, not missing names."""
    variant = REPO / "tests" / "variants" / "lab01" / "syntax_error"
    line = next(n for n, text in enumerate((variant / "activities.py").read_text().splitlines(), 1)
                if "BUG(syntax_error)" in text)
    submissions = tmp_path / "class"
    shutil.copytree(variant, submissions / "zoe" / "repo-main" / "labs" / LAB01.slug, ignore=IGNORE)
    graded = lab_grade(submissions, tmp_path / "out", "--labs", "01")
    assert graded.returncode == 0, graded.describe()
    row = graded.rows()["zoe"]
    folder = f"repo-main/labs/{LAB01.slug}"
    assert row["graded_folder"] == folder, row
    assert row["score"] == "0" and failed_checks(row) == ["crash-resume"], row
    assert f"SyntaxError: expected ':' (activities.py:{line})" in row["failed_checks"], row
    assert f"[graded {folder}]" in graded.stdout, graded.describe()
    log = (graded.out / "logs" / "zoe-lab01.log").read_text()
    assert log.splitlines()[0] == f"lab 01: graded zoe/{folder}", log[:500]
    assert graded.junit("zoe").find("testsuite/properties/property[@name='graded_folder']").get("value") == folder
    assert f"lab01: 0/{MAX} (graded {folder})" in graded.gradescope("zoe")["output"]
    message = graded.junit("zoe").find("testsuite/testcase/failure").text
    revisit = message.split("revisit:", 1)[1].split("details:", 1)[0]
    assert "parse activities.py" in revisit and f"line {line}" in revisit, message
    assert "missing name" not in revisit, message


def test_the_time_limit_stops_a_hanging_submission_and_leaves_nothing(tmp_path):
    """Given a submission whose worker never polls (it would hang for the check's 20 s wait),
    When `lab grade --time-limit 6` grades it,
    Then it is stopped at the limit, scored 0 with the reason, and no process is left behind."""
    submissions = tmp_path / "class"
    clone_with(submissions / "hangs", REPO / "tests" / "variants" / "lab01" / "worker_never_polls")
    graded = lab_grade(submissions, tmp_path / "out", "--labs", "01", "--time-limit", "6")  # checks leftovers
    assert graded.returncode == 0, graded.describe()
    row = graded.rows()["hangs"]
    assert (row["score"], row["max"]) == ("0", str(MAX)), row
    assert row["failed_checks"].startswith("crash-resume: time limit: grading took longer than 6 s"), row
    assert "6 more not checked" in row["failed_checks"], row
    # the limit, not the check's own 20 s wait for polling, ended the run: that wait starts after
    # the servers are up, so the 6 s limit always comes first, and the check's message never does
    result = graded.gradescope("hangs")
    assert result["score"] == 0 and result["execution_time"] >= 6, result
    assert "did not start polling" not in (graded.out / "logs" / "hangs-lab01.log").read_text(), graded.describe()


def test_ctrl_c_stops_every_run_and_leaves_nothing(tmp_path):
    """Given `lab grade` grading a submission (its runs are in sessions of their own, out of reach of
    the terminal's Ctrl-C), When Ctrl-C reaches `lab grade`, Then it stops every run and exits 130."""
    import signal

    submissions = tmp_path / "class"
    clone_with(submissions / "hangs", REPO / "tests" / "variants" / "lab01" / "worker_never_polls")
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS")}
    env.update({MARKER_ENV: marker, "LAB_STATE_DIR": str(tmp_path / "state")})
    child = subprocess.Popen([sys.executable, "-m", "labkit.cli", "grade", str(submissions), "--labs", "01",
                              "--out", str(tmp_path / "out")], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=default_sigint)  # Ctrl-C reaches it even from a background job
    try:
        deadline = time.monotonic() + GRADE_HANG_LIMIT_S
        while time.monotonic() < deadline:  # wait until the student's worker runs
            if any("lab01_temporal_crash.worker" in line for line in leftovers(marker)):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the worker never started: {leftovers(marker)}")
        os.killpg(child.pid, signal.SIGINT)
        try:
            out, _ = child.communicate(timeout=GRADE_HANG_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hung: `lab grade` was still running {GRADE_HANG_LIMIT_S} s after Ctrl-C", pytrace=False)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out, out
    deadline = time.monotonic() + 60  # a wait for the state (all gone), not a speed target
    while leftovers(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers(marker), leftovers(marker)


def test_bad_arguments_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (([str(tmp_path / "nowhere")], "no folder"), ([str(empty)], "holds no submission"),
                          ([str(tmp_path), "--labs", "99"], "no lab '99'")):
        done = subprocess.run([sys.executable, "-m", "labkit.cli", "grade", *args, "--out", str(tmp_path / "o")],
                              cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "LAB_STATE_DIR": str(tmp_path / "state")})
        assert done.returncode == 2 and message in done.stdout, (args, done.stdout, done.stderr)


# --- pieces, without a run -------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["clone", "lab-folders", "zipped-clone", "bare-files", "nothing"])
def test_the_lab_folder_is_found_in_every_shape_a_submission_comes_in(tmp_path, layout):
    from labkit.grading import find_lab_folder

    submission = tmp_path / "sub"
    where = {"clone": submission / "labs" / LAB01.slug, "lab-folders": submission / LAB01.slug,
             "zipped-clone": submission / "durable-agents-lab" / "labs" / LAB01.slug,
             "bare-files": submission, "nothing": None}[layout]
    submission.mkdir()
    (submission / "notes.txt").write_text("hello")
    if where is not None:
        shutil.copytree(LAB01.starter_dir, where, ignore=IGNORE, dirs_exist_ok=True)
    assert find_lab_folder(submission, LAB01) == where


def test_an_error_that_stops_parsing_names_its_file_and_line_and_others_are_left_as_they_are():
    from labkit.feedback import parse_error, student_error

    frames = ('Traceback (most recent call last):\n'
              '  File "/tmp/x/graded/lab01_temporal_crash/worker.py", line 16, in <module>\n'
              '    from .activities import call_llm\n')
    unparsed = frames + ('  File "/tmp/x/graded/lab01_temporal_crash/activities.py", line 42\n'
                         '    async def call_llm(prompt: str) -> str\n'
                         '                                          ^\n'
                         "SyntaxError: expected ':'\n")
    assert student_error(unparsed) == "SyntaxError: expected ':' (activities.py:42)"
    assert parse_error(unparsed) == student_error(unparsed)
    indented = frames + '  File "/tmp/x/workflows.py", line 7\n    return x\nIndentationError: unexpected indent\n'
    assert student_error(indented) == "IndentationError: unexpected indent (workflows.py:7)"
    missing = frames + "ImportError: cannot import name 'save_to_db' from 'lab01_temporal_crash.activities'\n"
    assert student_error(missing) == "ImportError: cannot import name 'save_to_db' from 'lab01_temporal_crash.activities'"
    assert parse_error(missing) is None


def test_only_a_line_signed_with_the_runs_key_is_a_report():
    from labkit.grade_plugin import PREFIX, signed_line, verified_report

    key, other = b"k" * 64, b"o" * 64
    real = {"records": [{"check": "crash-resume", "outcome": "failed"}], "exitstatus": 1}
    forged = {"records": [{"check": "crash-resume", "outcome": "passed"}], "exitstatus": 0}
    output = "\n".join(["lab01 crash-resume ..... PASSED", signed_line(key, real), signed_line(other, forged),
                        f"{PREFIX} {'0' * 64} {json.dumps(forged)}", f"{PREFIX} garbage"])
    assert verified_report(output, key) == real
    assert verified_report(output, b"x" * 64) is None
    assert verified_report("6 passed in 1.0s", key) is None
