"""The Makefile's Python probe is quiet on a machine with pyenv shims (issue 19).

pyenv puts a shim for every python3.X on PATH, installed or not; running the shim of a version that
is not installed prints "pyenv: python3.13: command not found" and fails. The probe must skip such
a shim without printing anything and pick the first Python >= 3.11 that runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIM = """#!/bin/sh
echo "pyenv: $(basename "$0"): command not found" >&2
echo "" >&2
echo "The \\`$(basename "$0")' command exists in these Python versions:" >&2
exit 127
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_pyenv_shims_of_missing_versions_print_nothing(tmp_path):
    """Given pyenv-like shims for python3.13 and python3.12 (not installed) first on PATH and a real
    Python 3.11+ as python3.11, When make evaluates PYTHON, Then it prints nothing on stderr and
    picks python3.11."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python3.13", "python3.12"):
        (shims / name).write_text(SHIM)
        (shims / name).chmod(0o755)
    (shims / "python3.11").symlink_to(sys.executable)  # this venv's Python (>= 3.11)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    done = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "show-python: ; @echo PYTHON=$(PYTHON)",
                           "show-python"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"observed on stderr: {done.stderr!r}; expected nothing"
    assert done.stdout.strip() == "PYTHON=python3.11", done.stdout
    shim_said = subprocess.run([str(shims / "python3.13"), "-c", "pass"], capture_output=True, text=True)
    assert "pyenv: python3.13: command not found" in shim_said.stderr  # the shim is as loud as pyenv's
