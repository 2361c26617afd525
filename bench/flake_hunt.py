"""The flake hunt: every lab's check on its reference solution, N times in a row, with one core busy.

    .venv/bin/python bench/flake_hunt.py [--runs 50] [--labs 01,02] [--busy-core | --no-busy-core]

A check that passes only sometimes is a bug (in the lab, the check or the kit). Each lab runs through
`lab check NN --solution --repeat N`; with --busy-core (the default) a spinning process keeps one of
the machine's cores busy the whole time, as a student's editor, browser or notebook would. The load
average is sampled every 10 s. One summary line per lab is printed and appended, with the load
figures, to bench/results.jsonl. Target (issue 9): 0 failed runs in 50 of every lab on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"lab (\d+) --repeat (\d+): (\d+)/\d+ runs passed, (\d+) failed; median ([\d.]+)s, "
                     r"min ([\d.]+)s, max ([\d.]+)s")


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every `interval` s until stopped."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.stopped = interval, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stopped.wait(self.interval)


def hunt(lab: str, runs: int) -> dict:
    argv = [str(REPO / ".venv/bin/lab"), "check", lab, "--solution", "--repeat", str(runs)]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    match = SUMMARY.search(done.stdout)
    if not match:
        return {"lab": lab, "runs": runs, "error": (done.stdout + done.stderr)[-2000:], "wall_s": wall}
    _, _, passed, failed, median, low, high = match.groups()
    failures = done.stdout[match.end():].strip()
    return {"lab": lab, "runs": runs, "passed": int(passed), "failed": int(failed), "median_s": float(median),
            "min_s": float(low), "max_s": float(high), "wall_s": round(wall, 1), "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--labs", default="01,02,03,04,05,06")
    parser.add_argument("--busy-core", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    busy = None
    if args.busy_core:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    sampler = LoadSampler()
    sampler.start()
    results = []
    try:
        for lab in args.labs.split(","):
            before = len(sampler.samples)
            result = hunt(lab, args.runs)
            loads = sampler.samples[before:] or [os.getloadavg()[0]]
            result.update(busy_core=args.busy_core, load_median=round(sorted(loads)[len(loads) // 2], 2),
                          load_max=round(max(loads), 2))
            results.append(result)
            if "error" in result:
                print(f"lab {lab}: the repeat did not finish; its output ends with:\n{result['error']}")
            else:
                print(f"lab {lab}: {result['passed']}/{result['runs']} runs passed, {result['failed']} failed; "
                      f"median {result['median_s']}s (min {result['min_s']}, max {result['max_s']}); "
                      f"load median {result['load_median']}, max {result['load_max']}")
                if result["failures"]:
                    print(result["failures"])
    finally:
        sampler.stopped.set()
        if busy:
            busy.kill()
            busy.wait()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with open(REPO / "bench" / "results.jsonl", "a") as out:
        for result in results:
            out.write(json.dumps({"benchmark": "flake_hunt", "at": stamp, "host": platform.node(),
                                  "cpus": os.cpu_count(), **result}) + "\n")
    bad = sum(r.get("failed", 1) for r in results)
    print(f"flake hunt: {len(results)} labs x {args.runs} runs, {bad} failed runs"
          f"{' (one core kept busy)' if args.busy_core else ''}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
