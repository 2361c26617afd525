"""The capstone at full size: 200 questions, one eviction per runtime, the table and the picture.

    .venv/bin/python bench/capstone.py                        # 200 questions, once, into docs/capstone/
    .venv/bin/python bench/capstone.py --repeat 3 --out /tmp/capstone --questions 200 --seed 7

It runs Lab 10's own check (checks/test_lab10_capstone.py) on the reference solution with
LAB10_QUESTIONS_N questions and LAB10_REPORT_DIR set, so the numbers come from the same code that
grades students; `make test` runs the same check with 20. The time scale is LAB10_TIME_SCALE
(default 0.001: the text's 12 s LLM call takes 12 ms, its 2 s fetch 2 ms). With --repeat N, each
metric's median over the runs is printed and written to <out>/capstone-median.md, with the wall
time of each run (the floor: the LLM's and web's scaled latencies alone, N x 14 ms per pass).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "checks" / "test_lab10_capstone.py"


def one_run(questions: int, out: Path, seed: int | None, scale: float) -> tuple[dict, float, int]:
    env = dict(os.environ, LAB10_QUESTIONS_N=str(questions), LAB10_REPORT_DIR=str(out),
               LAB10_TIME_SCALE=str(scale))
    if seed is not None:
        env["LAB10_SEED"] = str(seed)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", str(CHECK), "--solution", "-q", "-s",
                           "-p", "no:cacheprovider"], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        print(done.stdout[-4000:] + done.stderr[-2000:])
        raise SystemExit(f"the check failed on the solution (exit {done.returncode})")
    return json.loads((out / "capstone.json").read_text()), wall, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="the first run's seed (then seed+1, ...)")
    parser.add_argument("--scale", type=float, default=float(os.environ.get("LAB10_TIME_SCALE", "0.001")))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "capstone")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results, walls = [], []
    for i in range(args.repeat):
        seed = None if args.seed is None else args.seed + i
        target = args.out if args.repeat == 1 else args.out / f"run{i + 1}"
        target.mkdir(parents=True, exist_ok=True)
        result, wall, _ = one_run(args.questions, target, seed, args.scale)
        results.append(result)
        walls.append(wall)
        print(f"run {i + 1}/{args.repeat}: seed {result['seed']}, {wall:.1f} s")
        print((target / "capstone.md").read_text())
    floor = args.questions * 14.0 * args.scale
    lines = [f"Median of {args.repeat} run(s), {args.questions} questions, time scale x{args.scale:g} "
             f"(wall time per run: median {statistics.median(walls):.1f} s, runs {', '.join(f'{w:.0f}' for w in walls)} s; "
             f"floor: one pass's scaled latencies, {floor:.1f} s per runtime and pod)", "",
             "| metric | " + " | ".join(results[0]["runs"]) + " |", "|---|" + "---:|" * len(results[0]["runs"])]
    for metric in next(iter(results[0]["runs"].values())):
        cells = [statistics.median(r["runs"][rt][metric] for r in results) for rt in results[0]["runs"]]
        lines.append(f"| {metric} | " + " | ".join(f"{c:g}" for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    (args.out / "capstone-median.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
