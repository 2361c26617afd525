"""The repository's promises: one setup everywhere, course.toml consistent with the files.

That every starter marks where the student works: tests/test_course_selftest.py.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from labkit import course

REPO = Path(__file__).resolve().parent.parent


def test_devcontainer_parses_and_runs_the_readme_setup():
    config = json.loads((REPO / ".devcontainer" / "devcontainer.json").read_text())
    assert config["postCreateCommand"] == "make setup", config["postCreateCommand"]
    readme = (REPO / "README.md").read_text()
    assert "make setup" in readme and "make demo" in readme and "make test" in readme
    # The services start through a script that outlives the start command (issue 19): it runs `lab up`.
    assert config["postStartCommand"] == "bash .devcontainer/start-services.sh", config["postStartCommand"]
    start_script = (REPO / ".devcontainer" / "start-services.sh").read_text()
    assert "lab up" in start_script, "start-services.sh no longer starts the course services"
    assert {7233, 8233, 8888} <= set(config["forwardPorts"])
    labels = {port: attrs["label"] for port, attrs in config["portsAttributes"].items()}
    assert {"7233", "8233", "8888"} <= set(labels) and all(labels.values())
    extensions = config["customizations"]["vscode"]["extensions"]
    assert "ms-python.python" in extensions and "ms-toolsai.jupyter" in extensions


def test_one_web_ui_port_everywhere_in_the_docs():
    docs = [REPO / "README.md", *REPO.glob("labs/*/README.md"), *REPO.glob("docs/**/*.md")]
    for doc in docs:
        for port in re.findall(r"localhost:(\d{4})\b", doc.read_text()):
            assert port in {"8233", "7233", "8300", "8310", "8888", "5433"}, f"{doc}: localhost:{port}"
    assert "8233" in (REPO / "README.md").read_text()


def test_ci_runs_make_test():
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_lab_in_course_toml_has_its_files():
    for lab in course.load().labs:
        assert lab.starter_dir.is_dir(), lab.slug
        assert lab.solution_dir.is_dir(), lab.slug
        assert lab.check_path.exists(), lab.check
        assert lab.notebook_path.exists(), lab.notebook
        assert (lab.starter_dir / "README.md").exists(), f"{lab.slug}: README.md"
        assert lab.hints, f"{lab.slug}: no hints"
        assert lab.checks and all(c.points > 0 for c in lab.checks), f"{lab.slug}: checks/points"
        for name in lab.edits:
            assert (lab.starter_dir / name).exists() and (lab.solution_dir / name).exists(), name
        starter = {p.name for p in lab.starter_dir.glob("*.py")}
        solution = {p.name for p in lab.solution_dir.glob("*.py")}
        assert starter == solution, f"{lab.slug}: starter and solution have different files"


def test_check_names_in_course_toml_match_the_checks():
    for lab in course.load().labs:
        source = lab.check_path.read_text()
        declared = set(re.findall(r'@pytest\.mark\.check\("([\w-]+)"\)', source))
        assert declared == {c.name for c in lab.checks}, (lab.slug, declared)


def test_dependencies_are_pinned_in_the_lock():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {line.split("==")[0].lower().replace("_", "-")
              for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line}
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is in pyproject.toml but not pinned in requirements.lock"
