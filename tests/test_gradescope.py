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
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", ".git", ".venv"))]
    # of solutions/, only the course's own files of the lab folder (what grading lays over a
    # submission): never a file the student writes, never the README
    course_files = {f"solutions/{LAB01.slug}/{name}" for name in LAB01.course_files}
    assert f"solutions/{LAB01.slug}/worker.py" in course_files
    assert {n for n in names if n.startswith("solutions/")} == course_files, names
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


# --- the zip ships the committed starter, not the instructor's working tree --------------------------

def course_tree(tmp_path: Path, name: str = "course") -> Path:
    """A copy of the course (what the zip is built from, and solutions/), outside any git checkout."""
    tree = tmp_path / name
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".lab", ".pytest_cache")
    for item in ("pyproject.toml", "requirements.lock", "README.md", "course.toml", "labkit", "checks",
                 "gradescope", "labs", "solutions", "package.json", "package-lock.json"):
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, tree / item, ignore=ignore)
        else:
            shutil.copy2(source, tree / item)
    return tree


def git(tree: Path, *args: str) -> None:
    done = subprocess.run(["git", "-c", "user.name=instructor", "-c", "user.email=i@example.org",
                           "-c", "commit.gpgsign=false", *args], cwd=tree, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def solve(tree: Path, lab) -> None:
    """What an instructor does in their clone: the lab's student files replaced by the reference's."""
    for name in lab.edits:
        shutil.copy2(tree / "solutions" / lab.slug / name, tree / "labs" / lab.slug / name)


@pytest.fixture
def outside_git(tmp_path, monkeypatch):
    """git looks for a checkout no higher than tmp_path: the trees here are in one only if made so."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def build_from(tree: Path, out: Path, labs: str = "01") -> tuple[zipfile.ZipFile, list[str]]:
    from labkit.gradescope import build

    said: list[str] = []
    return zipfile.ZipFile(build(out, labs, repo=tree, report=said.append)), said


def test_a_zip_built_from_a_clone_with_solved_labs_holds_the_committed_starter(tmp_path, outside_git):
    """Given an instructor's clone (a git checkout) whose committed labs/ are the starters and whose
    working tree has every lab solved,
    When the zip is built,
    Then each lab's student files in it are the committed starter's, not the solution's, and the
    build says the working tree's changes were not shipped."""
    from labkit import course

    tree = course_tree(tmp_path)
    labs = course.load(tree / "course.toml").labs
    starter = {(lab.slug, name): (tree / "labs" / lab.slug / name).read_bytes() for lab in labs for name in lab.edits}
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "the course")
    for lab in labs:
        solve(tree, lab)
    assert (tree / "labs" / LAB01.slug / "activities.py").read_bytes() != starter[(LAB01.slug, "activities.py")]

    archive, said = build_from(tree, tmp_path / "dist" / "autograder.zip", ",".join(lab.id for lab in labs))
    for (slug, name), content in starter.items():
        assert archive.read(f"labs/{slug}/{name}") == content, f"labs/{slug}/{name} is not the starter"
        assert f"solutions/{slug}/{name}" not in archive.namelist()
    assert any(line.startswith("labs/ (the starters) and the course's lab files: from git HEAD") for line in said), said
    assert any(line.startswith("not shipped: your working tree's changes to labs/") for line in said), said
    assert "from git HEAD" in archive.read("autograder.toml").decode()


def test_a_committed_solution_is_refused(tmp_path, outside_git):
    """Given a clone whose committed labs/lab01 is solved, When the zip is built, Then it is refused
    with the reason and no zip is written (the CLI exits 2)."""
    from labkit.gradescope import BuildError

    tree = course_tree(tmp_path)
    solve(tree, LAB01)
    git(tree, "init", "-q")
    git(tree, "add", ".")
    git(tree, "commit", "-q", "-m", "solved")
    with pytest.raises(BuildError, match=rf"labs/{LAB01.slug} in git HEAD .* is solved: activities.py, "
                                         "workflows.py are the reference solution's"):
        build_from(tree, tmp_path / "dist" / "autograder.zip")
    assert not (tmp_path / "dist" / "autograder.zip").exists()


def test_outside_git_the_working_tree_is_packed_with_a_warning_and_a_solved_lab_refused(tmp_path, outside_git):
    """Given a copy of the course that is not a git checkout,
    When the zip is built from its starters, Then it is built and the build warns where labs/ came from;
    When lab 01 is solved there, Then the build is refused."""
    from labkit.gradescope import BuildError

    tree = course_tree(tmp_path)
    archive, said = build_from(tree, tmp_path / "dist" / "autograder.zip")
    assert archive.read(f"labs/{LAB01.slug}/activities.py") == (tree / "labs" / LAB01.slug / "activities.py").read_bytes()
    assert any("not a git checkout" in line for line in said), said
    solve(tree, LAB01)
    with pytest.raises(BuildError, match="is solved"):
        build_from(tree, tmp_path / "dist" / "again.zip")


def test_the_readmes_local_recipe_runs_as_written(tmp_path):
    """Given the zip unpacked into ROOT/source and a submission in ROOT/submission, in a folder that has
    the course's .venv/ (as a clone does),
    When the README's command runs there exactly as written (relative ROOT and LAB_PYTHON),
    Then run_autograder grades the submission with the shipped course and writes ROOT/results/results.json."""
    readme = (REPO / "README.md").read_text()
    recipe = re.search(r"`(AUTOGRADER_ROOT=ROOT [^`]*run_autograder)`", readme)
    assert recipe, "README.md no longer has the local Gradescope recipe"
    here = tmp_path / "clone"
    python = here / ".venv" / "bin" / "python"  # the course's interpreter, where the recipe expects it
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    with zipfile.ZipFile(build_zip(tmp_path, "--labs", "01")) as z:
        z.extractall(here / "ROOT" / "source")
    shutil.copytree(LAB01.starter_dir, here / "ROOT" / "submission" / "repo-main" / "labs" / LAB01.slug, ignore=IGNORE)
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("LAB_PATH", "TEMPORAL_ADDRESS", "PYTHONPATH", "AUTOGRADER_ROOT", "LAB_PYTHON")}
    env[MARKER_ENV] = marker
    done = subprocess.run(["bash", "-c", recipe.group(1)], cwd=here, env=env, capture_output=True, text=True,
                          timeout=240)
    assert not leftovers(marker), leftovers(marker)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"with the course at {here / 'ROOT' / 'source'}" in output, output
    result = json.loads((here / "ROOT" / "results" / "results.json").read_text())
    assert result["max_score"] == MAX and result["score"] == 0, result
    assert "TODO(lab01)" in result["tests"][0]["output"], result
    folder = f"repo-main/labs/{LAB01.slug}"
    assert f"lab01: 0/{MAX} (graded {folder})" in result["output"], result  # which folder was graded
    assert f"graded {folder}" in output, output
    log = (here / "ROOT" / "results" / "logs" / "lab01.log").read_text()
    assert log.splitlines()[0] == f"lab 01: graded submission/{folder}", log[:300]


def test_a_zip_for_the_restate_lab_ships_the_npm_lock_and_one_for_lab01_does_not(tmp_path):
    """Given Lab 07 needs restate-server (npm ships it), When a zip grades Lab 07, Then it holds
    package.json, package-lock.json and setup-node.sh, which setup.sh runs; a Lab 01 zip holds no npm files."""
    with zipfile.ZipFile(build_zip(tmp_path / "a", "--labs", "07")) as archive:
        names = set(archive.namelist())
        assert {"package.json", "package-lock.json", "setup-node.sh"} <= names, sorted(names)[:20]
        assert (archive.getinfo("setup-node.sh").external_attr >> 16) & 0o111
        assert archive.read("package-lock.json") == (REPO / "package-lock.json").read_bytes()
        assert "bash setup-node.sh" in archive.read("setup.sh").decode()
    with zipfile.ZipFile(build_zip(tmp_path / "b", "--labs", "01")) as archive:
        assert not {"package.json", "package-lock.json"} & set(archive.namelist())


def _tools_only(tmp_path: Path, npm: bool) -> dict:
    """A PATH with the few tools setup-node.sh uses, and a stand-in npm that records its arguments."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("bash", "dirname", "cat"):
        (tools / name).symlink_to(shutil.which(name))
    if npm:
        (tools / "npm").write_text(f"#!{shutil.which('bash')}\necho \"$@\" > npm-args\n")
        (tools / "npm").chmod(0o755)
    return {"PATH": str(tools), "HOME": str(tmp_path)}


@pytest.mark.parametrize("npm", [True, False], ids=["npm-present", "npm-and-apt-missing"])
def test_setup_node_installs_the_locked_packages_or_says_which_labs_go_unchecked(tmp_path, npm):
    """Given an unpacked zip holding package-lock.json, When setup-node.sh runs, Then with npm it runs
    `npm ci` (no scripts) and says so; without npm or apt-get it says those labs will be NOT CHECKED and
    still exits 0 (the other labs are graded)."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "gradescope" / "setup-node.sh", source)
    (source / "package-lock.json").write_text("{}")
    done = subprocess.run([shutil.which("bash"), str(source / "setup-node.sh")], env=_tools_only(tmp_path, npm),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    if npm:
        assert (source / "npm-args").read_text().split() == ["ci", "--no-audit", "--no-fund", "--ignore-scripts"]
        assert "npm packages installed" in done.stdout, done.stdout
    else:
        assert "will be reported NOT CHECKED" in done.stderr, done.stdout + done.stderr


def test_setup_node_does_nothing_for_a_zip_without_npm_packages(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(REPO / "gradescope" / "setup-node.sh", source)
    done = subprocess.run([shutil.which("bash"), str(source / "setup-node.sh")], env=_tools_only(tmp_path, True),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (source / "npm-args").exists() and not done.stdout, done.stdout + done.stderr


def test_a_zip_for_the_restate_lab_is_refused_without_the_npm_lock(tmp_path, outside_git):
    """Given a course copy without package-lock.json, When a zip grading Lab 07 is built, Then it is refused
    with the file named (a zip that could never install restate-server is not written)."""
    from labkit.gradescope import BuildError

    tree = course_tree(tmp_path)
    (tree / "package-lock.json").unlink()
    out = tmp_path / "dist" / "autograder.zip"
    with pytest.raises(BuildError, match="package-lock.json missing"):
        build_from(tree, out, "07")
    assert not out.exists() and not out.with_suffix(".tmp").exists()
