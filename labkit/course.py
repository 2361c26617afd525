"""course.toml: the single source of truth for the list of labs (like rustlings' info.toml)."""

from __future__ import annotations

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


def load(path: Path = COURSE_TOML) -> Course:
    data = tomllib.loads(path.read_text())
    labs = []
    for raw in data.get("labs", []):
        checks = [Check(**c) for c in raw.pop("checks", [])]
        labs.append(Lab(**raw, checks=checks))
    return Course(name=data["course"]["name"], labs=labs)
