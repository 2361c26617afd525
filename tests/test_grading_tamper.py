"""Tamper resistance: a submission that tries to fool `lab grade` gets the grade its lab earns.

Each test grades one submission whose lab code, besides its own work, tries one trick, and proves
the trick was really tried (the tampering code leaves a note in TAMPER_PROOF_DIR, which the grader's
environment passes down to the student's processes) before asserting the grade is unchanged:

- it ships its own checks/, labkit/, course.toml and conftest.py (ignored: the course's are used);
- its lab files are symlinks to the course's own solution (left out: only regular files are graded);
- it prints fake PASSED lines and a forged report line, into its log and into pytest's own output
  (ignored: the grader reads a report signed with a key only pytest has);
- it writes fake reports where it thinks they are, then kills pytest (no signed report: 0);
- it deletes its extra LLM calls from the ledger file it finds (the server keeps its own copy);
- it pushes a rule to the course LLM's admin endpoint to change the replies (refused: admin token).
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest

from labkit import course, limits
from test_grading import CHECKS, IGNORE, LAB01, MAX, REPO, clone_with, failed_checks, lab_grade

pytestmark = pytest.mark.timeout(300)

NAMES = json.dumps(CHECKS)
# Student processes run in a Landlock sandbox where the kernel has one (ABI 6+: signals too): they can
# neither open another process's /proc/PID/fd nor signal a process outside the sandbox.
SANDBOXED = limits.landlock_abi() >= 6 and limits.policy().sandbox


def grade_one(tmp_path: Path, name: str) -> tuple[dict, dict]:
    """Grade the submission `name` (already under tmp_path/class); its row and its tamper notes."""
    proof = tmp_path / "proof"
    proof.mkdir()
    # LAB_SANDBOX_WRITABLE: the student's sandbox lets the notes out (labkit.limits)
    graded = lab_grade(tmp_path / "class", tmp_path / "out", "--labs", "01",
                       env={"TAMPER_PROOF_DIR": str(proof), "LAB_SANDBOX_WRITABLE": str(proof)})
    assert graded.returncode == 0, graded.describe()
    notes = {}
    for note in proof.glob("*.json*"):
        for line in note.read_text().splitlines():
            notes.setdefault(note.stem, []).append(json.loads(line))
    return graded.rows()[name], notes


def lab_with(tmp_path: Path, name: str, base: Path, file: str, prepend: str = "",
             replace: tuple[str, str] | None = None, append: str = "") -> Path:
    """A clone-shaped submission whose lab is `base` with tampering code added to one file."""
    submission = clone_with(tmp_path / "class" / name, base)
    path = submission / "labs" / LAB01.slug / file
    text = path.read_text()
    if replace:
        assert replace[0] in text, f"{file} of {base} changed: update the tamper test"
        text = text.replace(*replace)
    path.write_text(textwrap.dedent(prepend) + text + textwrap.dedent(append))
    return submission


PYTEST_ANCESTOR = """
    import os as _os, pathlib as _pathlib

    def _pytest_ancestor():
        # The pytest process that runs the checks: the nearest ancestor whose command line says pytest.
        pid = _os.getppid()
        while pid > 1:
            cmdline = _pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\\0")
            if any(b"pytest" in part for part in cmdline):
                return pid, [part.decode() for part in cmdline]
            pid = int(_pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        raise RuntimeError("no pytest ancestor")

    def _note(name, **facts):
        import json
        with open(_pathlib.Path(_os.environ["TAMPER_PROOF_DIR"], name + ".jsonl"), "a") as f:
            f.write(json.dumps(facts) + "\\n")
"""

FORGED = f"""
    import json as _json
    _NAMES = {NAMES}
    _RECORDS = [{{"nodeid": n, "check": n, "outcome": "passed", "duration": 0.1, "evidence": {{}},
                 "message": "", "blocked": False}} for n in _NAMES]
    _LINES = [f"lab01 {{n}} ........ PASSED 0.1s" for n in _NAMES] + [
        "6/6 checks passed, {MAX}/{MAX} points", "6 passed in 1.00s",
        "LAB-GRADE-REPORT " + "0" * 64 + " " + _json.dumps({{"records": _RECORDS, "exitstatus": 0}})]
"""


def test_own_checks_labkit_and_course_toml_are_ignored(tmp_path):
    """Given a clone whose checks/, labkit/, course.toml and conftest.py all say "everything passed,
    100 points", around the untouched starter, Then the grade is the starter's: 0 of the course's max."""
    submission = clone_with(tmp_path / "class" / "forger", LAB01.starter_dir)
    (submission / "checks").mkdir()
    (submission / "checks" / LAB01.check.split("/")[-1]).write_text(textwrap.dedent(f"""
        import pytest
        @pytest.mark.parametrize("name", {NAMES})
        def test_everything(name):
            pass
    """))
    (submission / "checks" / "conftest.py").write_text("pytest_plugins = []\n")
    (submission / "conftest.py").write_text("def pytest_sessionfinish(session):\n    print('6 passed')\n")
    (submission / "labkit").mkdir()
    (submission / "labkit" / "__init__.py").write_text("")
    (submission / "labkit" / "pytest_plugin.py").write_text("def pytest_configure(config):\n    raise SystemExit(0)\n")
    shutil.copytree(REPO / "labkit" / "llm", submission / "labkit" / "llm", ignore=IGNORE)
    toml = re.sub(r"points = \d+", "points = 100", course.COURSE_TOML.read_text())
    (submission / "course.toml").write_text(toml)
    (submission / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-p no:labkit'\n")

    row, _ = grade_one(tmp_path, "forger")
    assert (row["score"], row["max"]) == ("0", str(MAX)), row
    assert failed_checks(row) == ["crash-resume"] and "TODO(lab01)" in row["failed_checks"], row


def test_symlinks_to_the_courses_solution_are_not_graded(tmp_path):
    """Given a lab folder whose activities.py and workflows.py are symlinks to the course's
    solutions/ on the grading machine, Then they are left out of the graded copy: the worker
    cannot import them, and the lab earns 0."""
    submission = clone_with(tmp_path / "class" / "linker", LAB01.starter_dir)
    for name in ("activities.py", "workflows.py"):
        (submission / "labs" / LAB01.slug / name).unlink()
        (submission / "labs" / LAB01.slug / name).symlink_to(LAB01.solution_dir / name)
    row, _ = grade_one(tmp_path, "linker")
    assert (row["score"], row["max"]) == ("0", str(MAX)), row
    assert failed_checks(row) == ["crash-resume"], row
    log = (tmp_path / "out" / "logs" / "linker-lab01.log").read_text()
    # The log's first line names the folder graded (issue 19); the next says what was left out.
    first, second = log.splitlines()[:2]
    assert first == f"lab 01: graded linker/labs/{LAB01.slug}", log[:300]
    assert second == "symlinks left out of the graded copy: activities.py, workflows.py", log[:300]


def test_fake_passed_lines_and_a_forged_report_line_are_ignored(tmp_path):
    """Given the starter whose activities module (run by the worker at import) prints PASSED lines and a forged report line, to its own
    output and into the output of the pytest process that runs the checks,
    Then the grade is the starter's."""
    lab_with(tmp_path, "printer", LAB01.starter_dir, "activities.py", prepend=PYTEST_ANCESTOR + FORGED + """
    print("\\n".join(_LINES), flush=True)
    _pid, _ = _pytest_ancestor()
    try:
        with open(f"/proc/{_pid}/fd/1", "w") as _out:  # pytest's stdout: the grader's pipe
            _out.write("\\n" + "\\n".join(_LINES) + "\\n")
        _note("printed", pytest_pid=_pid, into_pytest="written")
    except OSError as _err:  # the sandbox: no access to another process's files
        _note("printed", pytest_pid=_pid, into_pytest=_err.strerror)
    """)
    row, notes = grade_one(tmp_path, "printer")
    assert notes.get("printed"), "the worker never printed its fake lines"
    assert notes["printed"][0]["into_pytest"] == ("Permission denied" if SANDBOXED else "written"), notes
    assert (row["score"], row["max"]) == ("0", str(MAX)), row
    assert failed_checks(row) == ["crash-resume"] and "TODO(lab01)" in row["failed_checks"], row


def test_fake_reports_written_where_they_might_be_read_are_ignored(tmp_path):
    """Given the starter whose activities module (run by the worker at import) writes all-passed reports in every folder above it (and at
    any report path pytest's command line names), then SIGKILLs pytest so it never writes its own,
    Then nothing is taken from those files: the checks did not finish, 0 points."""
    lab_with(tmp_path, "reporter", LAB01.starter_dir, "activities.py", prepend=PYTEST_ANCESTOR + FORGED + """
    import signal as _signal
    _written = []
    _pid, _cmdline = _pytest_ancestor()
    _targets = [d / name for d in [_pathlib.Path.cwd(), *_pathlib.Path.cwd().parents] if "lab-grade-" in str(d)
                for name in ("report.json", "lab-report.json", "junit.xml", "results.json")]
    for _i, _arg in enumerate(_cmdline):
        for _opt in ("--lab-report", "--junitxml"):
            if _arg == _opt:
                _targets.append(_pathlib.Path(_cmdline[_i + 1]))
            elif _arg.startswith(_opt + "="):
                _targets.append(_pathlib.Path(_arg.split("=", 1)[1]))
    for _target in _targets:
        try:
            _target.write_text(_json.dumps(_RECORDS) if _target.suffix == ".json" else "\\n".join(_LINES))
            _written.append(str(_target))
        except OSError:  # the sandbox: only the run's temp dirs are writable
            _written.append(f"refused: {_target}")
    try:
        _note("wrote", files=_written, killed=_pid)
        _os.kill(_pid, _signal.SIGKILL)
    except OSError as _err:  # the sandbox: no signal to a process outside it
        _note("wrote", files=_written, killed=_err.strerror)
    """)
    row, notes = grade_one(tmp_path, "reporter")
    assert notes.get("wrote") and len(notes["wrote"][0]["files"]) >= 4, notes
    assert (row["score"], row["max"]) == ("0", str(MAX)), row
    if SANDBOXED:  # pytest survived the attempt: the starter's own verdict
        assert notes["wrote"][-1]["killed"] == "Operation not permitted", notes
        assert failed_checks(row) == ["crash-resume"] and "TODO(lab01)" in row["failed_checks"], row
    else:
        assert row["failed_checks"].startswith("crash-resume: the checks did not finish"), row


def test_deleting_llm_calls_from_the_ledger_file_changes_nothing(tmp_path):
    """Given the known-bad variant whose parse_json calls the LLM on every attempt, plus code that
    then deletes every repeated call from each ledger file it can find (the one the course LLM's
    /_health names, any ledger.sqlite in the folders above it, .lab/llm/ and LAB_STATE_DIR),
    Then the checks still see every call: the variant's own verdict (llm-called-once fails)."""
    bad = REPO / "tests" / "variants" / "lab01" / "llm_in_parse_json"
    lab_with(tmp_path, "eraser", bad, "activities.py", prepend=PYTEST_ANCESTOR, replace=(
        "    text = await call_llm(prompt)\n",
        "    text = await call_llm(prompt)\n    _erase_repeated_calls()\n"), append="""

        def _erase_repeated_calls():
            import glob, sqlite3
            import httpx
            base = _os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
            paths = {httpx.get(base + "/_health", timeout=5).json().get("ledger", "")}
            for folder in [_pathlib.Path.cwd(), *_pathlib.Path.cwd().parents]:
                if "lab-grade-" in str(folder):
                    paths.update(glob.glob(str(folder / "**" / "ledger.sqlite"), recursive=True))
            paths.add(str(_pathlib.Path.cwd() / ".lab" / "llm" / "ledger.sqlite"))
            paths.add(str(_pathlib.Path(_os.environ.get("LAB_STATE_DIR", ".lab")) / "llm" / "ledger.sqlite"))
            deleted = 0
            for path in sorted(p for p in paths if p and _pathlib.Path(p).is_file()):
                with sqlite3.connect(path, timeout=10) as db:
                    deleted += db.execute(
                        "DELETE FROM requests WHERE id NOT IN (SELECT MIN(id) FROM requests GROUP BY caller, prompt)"
                    ).rowcount
            _note("erased", files=sorted(p for p in paths if p and _pathlib.Path(p).is_file()), rows=deleted)
        """)
    row, notes = grade_one(tmp_path, "eraser")
    erased = notes.get("erased", [])
    assert erased and sum(n["rows"] for n in erased) >= 2, f"the ledger was never edited: {notes}"
    # the variant's own verdict (tests/variants/lab01/README.md): these two fail, the rest pass
    assert failed_checks(row) == ["llm-called-once", "activities-completed-once"], row
    assert "not from call_llm, in run A: 2 answered request(s)" in row["failed_checks"], row
    assert row["score"] == str(MAX - 3 - 2), row


def test_pushing_rules_to_the_course_llm_is_refused(tmp_path):
    """Given the solution whose call_llm first asks the course LLM's admin endpoint to answer every
    prompt with text that is not JSON (which would sink its own parse_json),
    Then the course LLM refuses (401) and the submission earns what it earns: full marks."""
    lab_with(tmp_path, "pusher", LAB01.solution_dir, "activities.py", prepend=PYTEST_ANCESTOR, replace=(
        '    """Ask the LLM to analyze the prompt; returns the raw reply text."""\n',
        '    """Ask the LLM to analyze the prompt; returns the raw reply text."""\n    _push_rule()\n'
    ), append="""

        def _push_rule():
            import httpx
            base = _os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
            rule = {"name": "hijack", "match": ".", "reply": "no JSON here"}
            response = httpx.post(base + "/_rules", json={"rules": [rule]}, timeout=5)
            _note("pushed", status=response.status_code)
        """)
    row, notes = grade_one(tmp_path, "pusher")
    pushed = notes.get("pushed", [])
    assert pushed, "the rule was never pushed"
    assert {n["status"] for n in pushed} == {401}, pushed
    assert (row["score"], row["failed_checks"]) == (str(MAX), ""), row
