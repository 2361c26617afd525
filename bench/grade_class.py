"""Benchmark: `lab grade` on a class of 30 Lab 01 submissions, --jobs 2. Target: <= 3 minutes.

    .venv/bin/python bench/grade_class.py [--size 30] [--jobs 2] [--keep DIR]

The class mixes correct submissions (the solution and the differently shaped good_* variants) with
the known-bad variants of tests/variants/lab01 (each the solution with one bug), as clones
(labs/lab01_temporal_crash/). Every submission must get the verdict the self-test's table
(tests/test_lab01_selftest.py) gives its variant: the same failed checks, the rest not checked
when the scenario is blocked, full marks for the correct ones. Nothing may be left running.
The variants that hang until a 20 s wait gives up (worker_never_polls, hanging_activity) are left
out: they measure the check's waits, not the grader. The result is appended to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from labkit import course  # noqa: E402
from test_lab01_selftest import VARIANTS  # noqa: E402

LAB = course.load().lab("01")
SLOW = {"worker_never_polls", "hanging_activity"}
MARKER_ENV = "LAB_BENCH_GRADE_RUN"


def expected(variant) -> tuple[list[str], int]:
    """(failed checks in course order, how many not checked) for a variant."""
    failed = [c.name for c in LAB.checks if c.name in variant.fails]
    blocked = [c.name for c in LAB.checks if c.name in variant.blocked and c.name not in variant.fails]
    return failed, len(blocked)


def build_class(folder: Path, size: int) -> dict[str, tuple[list[str], int]]:
    """Half correct, half known-bad, interleaved; submission name -> its expected verdict."""
    good = [("solution", LAB.solution_dir, ([], 0))] + [
        (v.name, v.path(LAB), expected(v)) for v in VARIANTS if v.good]
    bad = [(v.name, v.path(LAB), expected(v)) for v in VARIANTS if not v.good and v.name not in SLOW]
    chosen = list(itertools.islice(itertools.chain.from_iterable(zip(itertools.cycle(good), itertools.cycle(bad))),
                                   size))
    verdicts = {}
    for i, (name, source, verdict) in enumerate(chosen):
        submission = folder / f"s{i:02d}-{name}"
        shutil.copytree(source, submission / "labs" / LAB.slug, ignore=shutil.ignore_patterns("__pycache__"))
        verdicts[submission.name] = verdict
    return verdicts


def leftovers(marker: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if process.info["status"] != psutil.STATUS_ZOMBIE and process.environ().get(MARKER_ENV) == marker:
                found.append(" ".join(process.info["cmdline"] or [])[:160])
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the class and the reports here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-grade-")) if args.keep is None else args.keep
    try:
        verdicts = build_class(tmp / "class", args.size)
        marker = uuid.uuid4().hex
        env = {**os.environ, MARKER_ENV: marker}
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "labkit.cli", "grade", str(tmp / "class"), "--labs", "01",
                               "--jobs", str(args.jobs), "--out", str(tmp / "out")], cwd=REPO, env=env,
                              capture_output=True, text=True)
        seconds = time.monotonic() - started
        left = leftovers(marker)
        with open(tmp / "out" / "grades.csv", newline="") as handle:
            rows = {row["submission"]: row for row in csv.DictReader(handle)}
        wrong = []
        for name, (failed, blocked) in verdicts.items():
            row = rows.get(name)
            reasons = row["failed_checks"].split("; ") if row and row["failed_checks"] else []
            got_failed = [r.split(":")[0] for r in reasons if ":" in r and "more not checked" not in r]
            got_blocked = next((int(r.split()[0]) for r in reasons if "more not checked" in r), 0)
            if row is None or (got_failed, got_blocked) != (failed, blocked) or \
                    (not failed and row["score"] != row["max"]):
                wrong.append(f"{name}: expected {failed} +{blocked} not checked, got "
                             f"{row and row['score']}/{row and row['max']} {reasons}")
        result = {"bench": "grade_class", "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "size": args.size,
                  "jobs": args.jobs, "seconds": round(seconds, 1), "target_s": 180,
                  "classified_right": len(verdicts) - len(wrong), "left_running": len(left),
                  "load_before": round(load_before, 1), "load_after": round(os.getloadavg()[0], 1),
                  "cpus": os.cpu_count(), "python": platform.python_version(), "exit": done.returncode}
        print(json.dumps(result))
        for line in wrong + left:
            print("  " + line)
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])
        with open(REPO / "bench" / "results.jsonl", "a") as handle:
            handle.write(json.dumps(result) + "\n")
        return 0 if not wrong and not left and seconds <= 180 else 1
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
