"""A student's progress and hint counters, kept under .lab/ (never committed; LAB_STATE_DIR moves it).

.lab/backups/ holds what `lab reset` replaced.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .course import REPO

STATE_DIR = Path(os.environ.get("LAB_STATE_DIR", REPO / ".lab"))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


@dataclass
class Progress:
    path: Path = STATE_DIR / "progress.json"
    labs: dict = field(default_factory=dict)

    @classmethod
    def load(cls) -> Progress:
        found = cls()
        found.labs = _read(found.path)
        return found

    def passed(self, lab_id: str) -> bool:
        return bool(self.labs.get(lab_id, {}).get("passed"))

    def record(self, lab_id: str, passed: bool, score: int, max_score: int) -> None:
        best = max(score, int(self.labs.get(lab_id, {}).get("best", 0)))
        self.labs[lab_id] = {"passed": passed or self.passed(lab_id), "last": passed,
                             "score": score, "best": best, "max": max_score, "at": time.time()}
        _write(self.path, self.labs)

    def forget(self, lab_id: str) -> None:
        """The lab's record goes (after `lab reset`: the files that earned it are gone)."""
        if self.labs.pop(lab_id, None) is not None:
            _write(self.path, self.labs)


@dataclass
class Hints:
    path: Path = STATE_DIR / "hints.json"
    shown: dict = field(default_factory=dict)

    @classmethod
    def load(cls) -> Hints:
        found = cls()
        found.shown = _read(found.path)
        return found

    def next(self, lab_id: str, available: int) -> int:
        """How many hints to show now: one more than last time, up to all of them."""
        count = min(available, int(self.shown.get(lab_id, 0)) + 1)
        self.shown[lab_id] = count
        _write(self.path, self.shown)
        return count
