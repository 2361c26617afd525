"""Grading uses the course's own copy of every file that is not the student's (issue 14, class 1).

course.toml's `edits` name the student's files of each lab; every other file of the lab folder (the
worker, the starter, the models, Lab 03's crash and LLM helpers...) is the course's. A submission
that edits one of those is graded with the course's copy, and told so.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from labkit import course
from labkit.pytest_plugin import make_target

COURSE = course.load()


@pytest.mark.parametrize("lab", COURSE.labs, ids=[lab.slug for lab in COURSE.labs])
def test_the_starter_holds_the_course_files_unchanged(lab):
    """Given the starter a student clones, when its course files are compared with the course's
    copies, then none differs in code: the starter is what `lab check` runs for them anyway."""
    assert lab.course_files, f"{lab.slug}: every lab has files of the course's (at least __init__.py)"
    assert lab.edited_course_files(lab.starter_dir) == [], (
        f"labs/{lab.slug} and solutions/{lab.slug} differ in files that are not the student's")
    for name in lab.edits:
        assert name not in lab.course_files


def _config(path):
    options = {"--lab-path": str(path), "--solution": False}
    return SimpleNamespace(getoption=lambda name: options[name])


def test_an_edited_course_file_is_replaced_by_the_course_copy_and_named(tmp_path):
    """Given a Lab 03 submission whose crash.py no longer crashes and whose graph.py is its own,
    when the graded copy is made, then crash.py is the course's, graph.py is the student's, a file
    the student added is kept, and the note names crash.py (and only it)."""
    lab = COURSE.lab("03")
    submission = tmp_path / "submission"
    shutil.copytree(lab.solution_dir, submission)
    (submission / "crash.py").write_text("def die(*args):\n    pass  # never dies\n")
    (submission / "graph.py").write_text((submission / "graph.py").read_text() + "\n# mine\n")
    (submission / "helpers.py").write_text("VALUE = 1\n")
    (submission / "__init__.py").write_text('"""My own docstring: same code."""\n')

    target = make_target(_config(submission), lab, tmp_path / "grading")

    graded = target.root / lab.slug
    assert (graded / "crash.py").read_text() == (lab.solution_dir / "crash.py").read_text()
    assert (graded / "graph.py").read_text().endswith("# mine\n")
    assert (graded / "helpers.py").read_text() == "VALUE = 1\n"
    assert target.ignored == ("crash.py",)
    note = lab.ignored_edits_note(submission)
    assert "ignored your edits to crash.py" in note and "graph.py" in note


def test_a_course_file_that_runs_code_in_init_is_replaced(tmp_path):
    """Given a package __init__.py that patches the crash at import, when graded, then the course's
    __init__.py is used and the edit is named (a docstring alone is not an edit)."""
    lab = COURSE.lab("03")
    submission = tmp_path / "submission"
    shutil.copytree(lab.solution_dir, submission)
    (submission / "__init__.py").write_text("from . import crash\ncrash.die = lambda *a: None\n")

    target = make_target(_config(submission), lab, tmp_path / "grading")

    assert target.ignored == ("__init__.py",)
    assert "crash" not in (target.root / lab.slug / "__init__.py").read_text().split('"""')[-1]
