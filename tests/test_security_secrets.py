"""A real API key never leaks: not into grading reports, committed notebooks, or git.

- `lab grade` run by an instructor whose environment holds OPENAI_API_KEY grades a hostile
  submission whose worker prints its whole environment into the logs the reports quote: the
  key is in none of grades.csv, the JUnit XML, results.json, summary.md or the logs;
- `lab check` run by a student whose shell holds a real OPENAI_API_KEY: the same environment-dumping
  worker never sees it (the check hands every student process its own course key), and it is in
  neither the check's output nor any file of its run (logs, ledgers, databases);
- the notebooks as committed store no key-shaped string in their outputs (or anywhere);
- .env files are ignored by git.
The course LLM's ledger never stores a non-course key (tests/test_course_llm.py,
test_a_non_course_key_is_never_stored_verbatim); tests/test_notebooks.py runs every notebook
with a sentinel key in its environment and scans the outputs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from labkit import course
from test_grading import IGNORE, LAB01, clone_with, lab_grade

REPO = course.REPO
KEY_SHAPE = re.compile(r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}")  # OpenAI / Anthropic style secret keys

HOSTILE_WORKER_PRELUDE = '''
import os as _os, sys as _sys
print("ENV-DUMP", dict(_os.environ), flush=True)  # a submission that shows whatever it was given
_sys.exit(3)
'''


def files_containing(root, needle: str) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.is_file() and needle.encode() in path.read_bytes())


def env_dumping_lab(folder):
    """Lab 01's solution whose activities module (a student file, imported by the course's worker)
    prints the worker's whole environment, then exits 3."""
    shutil.copytree(LAB01.solution_dir, folder, ignore=IGNORE)
    activities = folder / "activities.py"
    source = activities.read_text()
    activities.write_text(source.replace("\nimport functools\n", HOSTILE_WORKER_PRELUDE + "\nimport functools\n", 1))
    assert "ENV-DUMP" in activities.read_text()
    return folder


@pytest.mark.timeout(300)
def test_grading_reports_never_show_the_graders_api_key(tmp_path):
    """Given an instructor's environment with OPENAI_API_KEY=sk-sentinel-..., and a submission whose
      worker prints its entire environment and exits (so its log lands in the failure messages),
    When `lab grade` grades it,
    Then the dump reached the reports (the scan is not vacuous), and the sentinel is in no file
      under the output folder (grades.csv, JUnit, results.json, summary.md, logs) or the state dir."""
    sentinel = f"sk-sentinel-{uuid.uuid4().hex}"
    hostile = env_dumping_lab(tmp_path / "hostile-lab")
    clone_with(tmp_path / "class" / "eve", hostile)

    graded = lab_grade(tmp_path / "class", tmp_path / "out", "--labs", "01",
                       env={"OPENAI_API_KEY": sentinel})
    out = tmp_path / "out"
    assert (out / "grades.csv").exists(), f"observed: no grades.csv; expected a report\n{graded.describe()}"
    assert files_containing(out, "ENV-DUMP"), \
        f"observed: the worker's environment dump is in no report; expected it quoted\n{graded.describe()}"
    roots = [root for root in (out, tmp_path / "state") if root.exists()]
    leaked = [f"{root.name}/{name}" for root in roots for name in files_containing(root, sentinel)]
    assert not leaked, f"observed the grader's API key in: {leaked}; expected it in no report, log or state file"


@pytest.mark.timeout(180)
def test_a_students_api_key_stays_out_of_the_checks_processes_output_and_files(tmp_path):
    """Given a student's shell with OPENAI_API_KEY=sk-sentinel-... (for a real endpoint), and a
      worker that prints its whole environment,
    When the Lab 01 check runs on it (verbose, as `lab check -v` does, its temp files kept),
    Then the dump is in the output with a harmless variable set beside the key (the scan would see
      the key), and the sentinel is neither in the output nor in any file the run left (worker logs,
      the LLM ledger, the lab's SQLite file)."""
    sentinel = f"sk-sentinel-{uuid.uuid4().hex}"
    hostile = env_dumping_lab(tmp_path / "hostile-lab")
    basetemp = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS", "PYTEST_ADDOPTS")}
    probe = f"probe-{uuid.uuid4().hex}"  # passes through to the worker as any variable does
    env.update(OPENAI_API_KEY=sentinel, LAB_SECURITY_PROBE=probe, LAB_STATE_DIR=str(tmp_path / "state"))
    done = subprocess.run([sys.executable, "-m", "pytest", str(LAB01.check_path), "-v", "-p", "no:cacheprovider",
                           "--rootdir", str(REPO), "--lab-path", str(hostile), "--basetemp", str(basetemp)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    output = done.stdout + done.stderr
    assert "ENV-DUMP" in output, f"observed: no environment dump in the check's output; expected it quoted\n{output[-2000:]}"
    assert probe in output or files_containing(basetemp, probe), \
        "observed: the dump shows no variable of the student's shell; the scan below would prove nothing"
    assert sentinel not in output, "observed: the student's API key in the check's output; expected a course key only"
    leaked = [name for root in (basetemp, tmp_path / "state") if root.exists()
              for name in files_containing(root, sentinel)]
    assert not leaked, f"observed the student's API key in: {leaked}; expected it in no file of the run"


def test_committed_notebooks_hold_no_api_key():
    """Given every notebook as committed (sources and stored outputs),
    When they are scanned for key-shaped strings (sk-..., 20+ characters),
    Then none is found."""
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks, "observed: no notebooks found; expected notebooks/*.ipynb"
    found = {path.name: KEY_SHAPE.findall(path.read_text()) for path in notebooks}
    found = {name: keys for name, keys in found.items() if keys}
    assert not found, f"observed key-shaped strings in notebooks: {found}; expected none"


@pytest.mark.parametrize("path", [".env", ".env.local", ".env.production", "labs/lab01_temporal_crash/.env",
                                  "solutions/.env.test"])
def test_env_files_are_ignored_by_git(path):
    """Given a .env-style file name anywhere in the repository,
    When git is asked whether it would track it (git check-ignore),
    Then it is ignored."""
    done = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO)
    assert done.returncode == 0, f"observed: git would track {path}; expected .gitignore to cover it"
