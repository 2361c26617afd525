"""Same verdicts on a slower machine: every lab's check on its solution and on each known-bad (and
good_) variant, run within a fraction of a core, and a table of how many verdicts came out as the
self-test expects.

    .venv/bin/python bench/slow_machine.py                      # every lab, at 0.5 and 0.25 CPU
    .venv/bin/python bench/slow_machine.py --labs 05 --cpus 0.25 --repeat 3
    .venv/bin/python bench/slow_machine.py --labs 01 --variants solution,hanging_activity --cpus 0.5

Each run is the self-test's (tests/selftest.py: run_check, the same report, the same "nothing left
running"), started under /work/shared/tools/slow-machine CPUS (a cpu cgroup: CPUS cores' worth of
CPU time for the run and everything it starts; needs root). The expected verdict of a variant is
its row in tests/test_labNN_selftest.py (VARIANTS: the checks that fail with their message
fragments, the checks "not checked"); the solution's is every check passing. `--cpus full` runs
without a limit. Runs go one at a time (--jobs N runs N at once, each in its own cgroup; the
machine's real cores are then shared). The whole table is long (73 runs per CPU
setting, several minutes each at a quarter core): run it on a quiet machine.

Prints, per lab and CPU setting: verdicts as expected (n/n), median and max time of a run; then
every run whose verdict differed, with why. --json FILE writes every run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import pytest  # noqa: E402  (pytest.fail's exception is how run_check reports a broken run)
import selftest  # noqa: E402

from labkit import course  # noqa: E402

SLOW_MACHINE = Path(os.environ.get("SLOW_MACHINE", "/work/shared/tools/slow-machine"))
if not SLOW_MACHINE.exists():
    SLOW_MACHINE = REPO.parent / "shared" / "tools" / "slow-machine"


@dataclass
class Outcome:
    lab: str
    cpus: str
    target: str  # "solution" or a variant's name
    repeat: int
    as_expected: bool
    seconds: float
    why: str = ""


def targets(lab: course.Lab, names: set[str] | None) -> list[tuple[str, selftest.Variant | None, str]]:
    """(name, variant or None for the solution, how a blocked check's message starts) of the lab."""
    found: list[tuple[str, selftest.Variant | None, str]] = [("solution", None, selftest.NOT_CHECKED)]
    try:
        module = importlib.import_module(f"test_lab{lab.id}_selftest")
    except ModuleNotFoundError:
        module = None
    not_checked = getattr(module, "BLOCKED", selftest.NOT_CHECKED) if module else selftest.NOT_CHECKED
    for variant in getattr(module, "VARIANTS", []):
        found.append((variant.name, variant, not_checked if isinstance(not_checked, str) else selftest.NOT_CHECKED))
    if names:
        found = [t for t in found if t[0] in names]
    return found


def run_one(lab: course.Lab, name: str, variant: selftest.Variant | None, not_checked: str, cpus: str,
            repeat: int) -> Outcome:
    prefix = [] if cpus == "full" else [str(SLOW_MACHINE), cpus]
    with tempfile.TemporaryDirectory(prefix=f"slow-{lab.id}-{name}-") as tmp:
        started = time.monotonic()
        try:
            if variant is None:
                run = selftest.run_check(lab, Path(tmp), solution=True, prefix=prefix)
                failed = run.failed()
                ok = not failed and run.returncode == 0
                why = "" if ok else "failing on the solution: " + "; ".join(
                    f"{c}: {run.records[c]['message'].splitlines()[0][:160] if run.records[c]['message'] else ''}"
                    for c in failed)
            else:
                run = selftest.run_check(lab, Path(tmp), lab_path=variant.path(lab), prefix=prefix,
                                         hang_limit_s=variant.limit_s)
                selftest.assert_verdict(lab, variant, run, not_checked=not_checked)
                ok, why = True, ""
            seconds = run.seconds
        except (AssertionError, pytest.fail.Exception) as err:
            ok, why, seconds = False, str(err).splitlines()[0][:300] if str(err) else repr(err), time.monotonic() - started
    return Outcome(lab.id, cpus, name, repeat, ok, round(seconds, 1), why)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", help="comma-separated lab ids (default: every lab in course.toml)")
    parser.add_argument("--cpus", default="0.5,0.25", help="comma-separated CPU limits, or 'full' (default 0.5,0.25)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each target per CPU setting (default 1)")
    parser.add_argument("--variants", help="comma-separated targets: 'solution' and/or variant names (default all)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args()

    labs = course.load().labs
    if args.labs:
        wanted = [x.strip().zfill(2) for x in args.labs.split(",")]
        labs = [lab for lab in labs if lab.id in wanted]
    cpu_settings = [c.strip() for c in args.cpus.split(",")]
    if any(c != "full" for c in cpu_settings) and not os.access(SLOW_MACHINE, os.X_OK):
        print(f"no {SLOW_MACHINE} (set SLOW_MACHINE=path/to/slow-machine)", file=sys.stderr)
        return 2
    names = {n.strip() for n in args.variants.split(",")} if args.variants else None
    if names:
        known = {name for lab in labs for name, _, _ in targets(lab, None)}
        if names - known:
            print(f"no such target in labs {','.join(lab.id for lab in labs)}: {sorted(names - known)}", file=sys.stderr)
            return 2
    plan = [(lab, name, variant, not_checked, cpus, r)
            for cpus in cpu_settings for lab in labs for name, variant, not_checked in targets(lab, names)
            for r in range(1, args.repeat + 1)]
    if not plan:
        print("nothing to run (check --labs and --variants)", file=sys.stderr)
        return 2
    print(f"{len(plan)} run(s): labs {','.join(lab.id for lab in labs)} at CPU {','.join(cpu_settings)}, "
          f"x{args.repeat}, {args.jobs} at a time", flush=True)

    outcomes: list[Outcome] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, *item) for item in plan]
        for future in concurrent.futures.as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            mark = "as expected" if outcome.as_expected else "DIFFERENT"
            print(f"  lab {outcome.lab} cpus {outcome.cpus:<5} {outcome.target:<28} run {outcome.repeat}: "
                  f"{mark:<11} {outcome.seconds:6.1f} s{'  ' + outcome.why if outcome.why else ''}", flush=True)

    print()
    print("| lab | CPUs | verdicts as expected | median s | max s |")
    print("|---|---|---|---|---|")
    for cpus in cpu_settings:
        for lab in labs:
            mine = [o for o in outcomes if o.lab == lab.id and o.cpus == cpus]
            if not mine:
                continue
            good = sum(o.as_expected for o in mine)
            times = [o.seconds for o in mine]
            print(f"| {lab.id} | {cpus} | {good}/{len(mine)} | {statistics.median(times):.1f} | {max(times):.1f} |")
    different = [o for o in outcomes if not o.as_expected]
    if different:
        print("\nverdicts that differed from the self-test's:")
        for o in sorted(different, key=lambda o: (o.cpus, o.lab, o.target, o.repeat)):
            print(f"  lab {o.lab} cpus {o.cpus} {o.target} run {o.repeat}: {o.why}")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    return 0 if not different else 1


if __name__ == "__main__":
    sys.exit(main())
