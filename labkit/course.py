"""course.toml: the single source of truth for the list of labs (like rustlings' info.toml)."""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COURSE_TOML = REPO / "course.toml"


@dataclass(frozen=True)
class Check:
    name: str
    points: int
    concept: str = ""


@dataclass(frozen=True)
class Lab:
    id: str
    slug: str
    title: str
    section: str
    edits: list[str]
    check: str
    notebook: str
    services: list[str]
    hints: list[str]
    checks: list[Check] = field(default_factory=list)
    summary: str = ""

    @property
    def starter_dir(self) -> Path:
        return REPO / "labs" / self.slug

    @property
    def solution_dir(self) -> Path:
        return REPO / "solutions" / self.slug

    @property
    def course_files(self) -> list[str]:
        """The lab folder's files that are the course's, not the student's: every file of the
        reference folder except the `edits` and README.md. Grading always uses the course's copy."""
        if not self.solution_dir.is_dir():
            return []
        return sorted(p.name for p in self.solution_dir.iterdir()
                      if p.is_file() and p.name not in self.edits and p.name != "README.md"
                      and not p.name.endswith((".pyc", ".pyo")))

    def edited_course_files(self, folder: Path) -> list[str]:
        """The course's files that `folder` (a submission's copy of the lab) holds changed: the
        grader ignores those edits and says so."""
        changed = []
        for name in self.course_files:
            mine = Path(folder) / name
            if mine.is_file() and not same_code(mine, self.solution_dir / name):
                changed.append(name)
        return changed

    def ignored_edits_note(self, folder: Path) -> str:
        """One line for the student when `folder` changed files of the course's, else ""."""
        changed = self.edited_course_files(folder)
        if not changed:
            return ""
        return (f"note: ignored your edits to {', '.join(changed)}: "
                f"{'it is' if len(changed) == 1 else 'they are'} the course's, and the check runs the "
                f"course's copy. Your files in lab {self.id}: {', '.join(self.edits)} (and any file you add).")

    @property
    def check_path(self) -> Path:
        return REPO / self.check

    @property
    def notebook_path(self) -> Path:
        return REPO / self.notebook

    @property
    def max_points(self) -> int:
        return sum(check.points for check in self.checks)


@dataclass(frozen=True)
class Course:
    name: str
    labs: list[Lab]

    def lab(self, key: str) -> Lab:
        """Find a lab by id ("01", "1") or slug."""
        wanted = key.strip().lower()
        for lab in self.labs:
            if wanted in (lab.id, lab.slug, lab.id.lstrip("0")) or lab.slug.startswith(wanted):
                return lab
        known = ", ".join(f"{lab.id} ({lab.slug})" for lab in self.labs)
        raise KeyError(f"no lab {key!r} in course.toml; the labs are: {known}")


def shown(path: Path) -> str:
    """A path as a student reads it: relative to the course's folder when inside it."""
    path = Path(path)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def same_code(a: Path, b: Path) -> bool:
    """The two files hold the same program: equal bytes or, for Python, the same syntax tree once
    the module docstring is set aside (a lab folder's __init__.py says "starter" or "solution")."""
    first, second = a.read_bytes(), b.read_bytes()
    if first == second:
        return True
    if a.suffix != ".py":
        return False
    try:
        trees = [ast.parse(text) for text in (first, second)]
    except (SyntaxError, ValueError):
        return False
    for tree in trees:
        if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant) \
                and isinstance(tree.body[0].value.value, str):
            tree.body.pop(0)
    return ast.dump(trees[0]) == ast.dump(trees[1])


def load(path: Path = COURSE_TOML) -> Course:
    data = tomllib.loads(path.read_text())
    labs = []
    for raw in data.get("labs", []):
        checks = [Check(**c) for c in raw.pop("checks", [])]
        labs.append(Lab(**raw, checks=checks))
    return Course(name=data["course"]["name"], labs=labs)
