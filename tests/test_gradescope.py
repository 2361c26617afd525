"""The Gradescope autograder zip, run against a simulated /autograder layout in a temp dir.

`make gradescope` runs `python -m labkit.gradescope build`; here the same command builds the zip,
which is unpacked into ROOT/source as Gradescope does, and ROOT/source/run_autograder grades a
correct and a broken submission (AUTOGRADER_ROOT relocates /autograder; LAB_PYTHON names the
interpreter that setup.sh would have installed). Both write ROOT/results/results.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from test_grading import IGNORE, LAB01, MARKER_ENV, MAX, REPO, leftovers

pytestmark = pytest.mark.timeout(300)


def build_zip(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "dist" / "gradescope-autograder.zip"
    done = subprocess.run([sys.executable, "-m", "labkit.gradescope", "build", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_makefile_builds_the_zip_with_the_same_command():
    makefile = (REPO / "Makefile").read_text()
    target = re.search(r"^gradescope:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "no gradescope target in the Makefile"
    assert "-m labkit.gradescope build --out dist/gradescope-autograder.zip" in target.group(1)


def test_the_zip_holds_the_scripts_and_the_course_but_no_solutions(tmp_path):
    archive = zipfile.ZipFile(build_zip(tmp_path, "--labs", "01"))
    names = set(archive.namelist())
    for script in ("setup.sh", "run_autograder"):
        assert script in names
        assert (archive.getinfo(script).external_attr >> 16) & 0o111, f"{script} is not executable"
    for needed in ("course.toml", "pyproject.toml", "requirements.lock", "README.md", "labkit/grading.py",
                   "labkit/grade_plugin.py", "labkit/pytest_plugin.py", "labkit/llm/server.py",
                   "checks/conftest.py", LAB01.check, f"labs/{LAB01.slug}/worker.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("solutions/", "tests/", "notebooks/", ".git", ".venv"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert 'labs = ["01"]' in archive.read("autograder.toml").decode()
    for script in ("setup.sh", "run_autograder"):  # at least valid bash
        checked = subprocess.run(["bash", "-n", "-c", archive.read(script).decode()], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_an_unknown_lab_is_refused_at_build_time(tmp_path):
    done = subprocess.run([sys.executable, "-m", "labkit.gradescope", "build", "--out", str(tmp_path / "z.zip"),
                           "--labs", "99"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no lab '99'" in done.stderr
    assert not (tmp_path / "z.zip").exists()


def test_run_autograder_grades_a_correct_and_a_broken_submission(tmp_path):
    """Given the zip unpacked into two simulated /autograder roots, one with the solution (a clone's
    labs/), one with the starter's files uploaded bare (a zip of the lab folder's contents),
    When run_autograder runs in both (at the same time),
    Then each writes results/results.json in Gradescope's shape with the grade its lab earns."""
    archive = build_zip(tmp_path, "--labs", "01")
    roots = {"correct": tmp_path / "correct", "broken": tmp_path / "broken"}
    for root in roots.values():
        with zipfile.ZipFile(archive) as z:
            z.extractall(root / "source")
    shutil.copytree(LAB01.solution_dir, roots["correct"] / "submission" / "labs" / LAB01.slug, ignore=IGNORE)
    shutil.copytree(LAB01.starter_dir, roots["broken"] / "submission", ignore=IGNORE)

    marker = uuid.uuid4().hex
    runs = {}
    for name, root in roots.items():
        env = {k: v for k, v in os.environ.items() if k not in ("LAB_PATH", "TEMPORAL_ADDRESS", "PYTHONPATH")}
        env.update(AUTOGRADER_ROOT=str(root), LAB_PYTHON=sys.executable, **{MARKER_ENV: marker})
        runs[name] = subprocess.Popen(["bash", str(root / "source" / "run_autograder")], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {name: run.communicate(timeout=240)[0] for name, run in runs.items()}
    assert not leftovers(marker), leftovers(marker)

    for name, root in roots.items():
        assert runs[name].returncode == 0, outputs[name]
        # the shipped course graded it, not the repository the test runs from
        assert f"with the course at {root / 'source'}" in outputs[name], outputs[name]
        result = json.loads((root / "results" / "results.json").read_text())
        assert result["max_score"] == MAX and isinstance(result["execution_time"], (int, float)), result
        assert [t["name"] for t in result["tests"]] == [f"lab01 {c.name}" for c in LAB01.checks]
        for test in result["tests"]:
            assert set(test) >= {"name", "score", "max_score", "output", "visibility"}, test
        expected = MAX if name == "correct" else 0
        assert result["score"] == expected, (name, result, outputs[name])
        assert sum(t["score"] for t in result["tests"]) == expected
        assert (root / "results" / "logs" / "lab01.log").exists()
    broken = json.loads((roots["broken"] / "results" / "results.json").read_text())
    assert "TODO(lab01)" in broken["tests"][0]["output"]
    assert all(t["output"].startswith("not checked") for t in broken["tests"][1:])


def test_a_missing_submission_still_gives_gradescope_a_results_json(tmp_path):
    archive = build_zip(tmp_path, "--labs", "01")
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "root" / "source")
    env = {**os.environ, "AUTOGRADER_ROOT": str(tmp_path / "root"), "LAB_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(tmp_path / "root" / "source" / "run_autograder")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "root" / "results" / "results.json").read_text())
    assert result["score"] == 0 and "no submission folder" in result["output"], result
