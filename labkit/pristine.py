"""Notice writes to the files a grading run trusts: the course's checks and kit, and its Python.

Landlock (labkit.limits) refuses a student process's writes outside its temp dirs where the kernel
has it; this is the check that works everywhere, and the proof afterwards that nothing changed.
A snapshot records, for every file under the course's own folders (checks/, labkit/, course.toml,
pyproject.toml, gradescope/) and the Python installation the runs import from (site-packages, the
standard library), its size, mtime, ctime and link count. ctime changes on every write, rename or
chmod and cannot be set back with utime, so editing a file and restoring its mtime still shows. It
also changes when another program hard-links the file (uv installs packages into other venvs that
way): a change of ctime that comes with a change of the link count alone is not a write.
Site-packages folders inside the standard library's folder (the base interpreter's own, which a
venv does not import) are not walked: installing into the base Python is not a write to ours.

Not covered: bytecode caches (`__pycache__`: any Python run on the machine may add them; grading
runs write none, PYTHONDONTWRITEBYTECODE), and the rest of the disk ($HOME, /tmp), which other
programs change all the time. Landlock covers those.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

COURSE_PARTS = ("checks", "labkit", "gradescope", "course.toml", "pyproject.toml", "conftest.py")


def trusted_roots(repo: Path) -> list[Path]:
    paths = sysconfig.get_paths()
    python = {Path(paths[key]) for key in ("stdlib", "purelib", "platlib") if key in paths}
    return [repo / part for part in COURSE_PARTS] + sorted(python)


@dataclass
class Snapshot:
    files: dict[str, tuple[int, int, int, int]]  # path -> (size, mtime_ns, ctime_ns, nlink)

    @classmethod
    def take(cls, roots: list[Path]) -> "Snapshot":
        files: dict[str, tuple[int, int, int, int]] = {}
        for root in roots:
            if root.is_file():
                files[str(root)] = _stamp(root)
                continue
            for current, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if d not in ("__pycache__", "site-packages", "dist-packages")]
                for name in names:
                    path = os.path.join(current, name)
                    try:
                        files[path] = _stamp(path)
                    except OSError:  # removed while we walked
                        pass
        return cls(files)

    def changes(self, later: "Snapshot", relative_to: Path | None = None) -> list[str]:
        """What changed since this snapshot: '<path> (added|removed|changed)', sorted."""
        found = []
        for path in sorted(self.files.keys() | later.files.keys()):
            before, after = self.files.get(path), later.files.get(path)
            if before == after or _only_linked(before, after):
                continue
            how = "added" if before is None else "removed" if after is None else "changed"
            shown = path
            if relative_to is not None and path.startswith(str(relative_to) + os.sep):
                shown = os.path.relpath(path, relative_to)
            found.append(f"{shown} ({how})")
        return found


def _stamp(path) -> tuple[int, int, int, int]:
    info = os.lstat(path)
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_nlink


def _only_linked(before, after) -> bool:
    """Same size and mtime, a new ctime and another link count: a hard link made or removed."""
    return before is not None and after is not None and before[:2] == after[:2] and before[3] != after[3]
