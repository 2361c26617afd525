"""The long variants of the fault and hardening tests: run test files N times, count the failed runs.

    .venv/bin/python bench/repeat_tests.py [--runs 10] [FILE ...]

`make test` runs each reliability test once; a test that fails one time in twenty would pass there
most days. This runs each file in its own pytest process N times in a row and prints, per file, the
runs that passed, the median and the slowest wall time, and the first failure's summary. Default
files: the server faults (Temporal and PostgreSQL restarted mid-run, the course LLM refusing
connections) and the hostile submissions. Results are appended to bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILES = ("tests/test_server_faults.py", "tests/test_grading_hostile.py")


def run_once(test_file: str) -> tuple[bool, float, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", test_file, "-q", "-x", "--no-header", "-rf"],
                          cwd=REPO, capture_output=True, text=True)
    summary = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return done.returncode == 0, time.monotonic() - started, "\n".join(summary) or done.stdout[-1500:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("files", nargs="*", default=list(DEFAULT_FILES))
    args = parser.parse_args()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    failed_total = 0
    for test_file in args.files:
        durations, failures, loads = [], [], []
        for number in range(1, args.runs + 1):
            ok, seconds, summary = run_once(test_file)
            durations.append(seconds)
            loads.append(os.getloadavg()[0])
            if not ok:
                failures.append((number, summary))
            print(f"{test_file} run {number}/{args.runs}: {'passed' if ok else 'FAILED'} {seconds:.1f}s", flush=True)
        failed_total += len(failures)
        print(f"{test_file}: {args.runs - len(failures)}/{args.runs} runs passed; median "
              f"{statistics.median(durations):.1f}s, max {max(durations):.1f}s; load median "
              f"{statistics.median(loads):.2f}")
        for number, summary in failures[:1]:
            print(f"  first failure (run {number}):\n{summary}")
        with open(REPO / "bench" / "results.jsonl", "a") as out:
            out.write(json.dumps({"benchmark": "repeat_tests", "at": stamp, "host": platform.node(),
                                  "cpus": os.cpu_count(), "file": test_file, "runs": args.runs,
                                  "failed_runs": [n for n, _ in failures],
                                  "median_s": round(statistics.median(durations), 1),
                                  "max_s": round(max(durations), 1),
                                  "load_median": round(statistics.median(loads), 2)}) + "\n")
    return 0 if failed_total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
