"""Crash sweep: SIGKILL a lab's processes at seeded random moments, restart, audit the invariants.

    .venv/bin/python bench/crash_sweep.py --lab 01 --trials 20 --kills 3 --seed 7
    .venv/bin/python bench/crash_sweep.py --lab 03 --trials 20 --kills 3          (a random seed, printed)
    .venv/bin/python bench/crash_sweep.py --lab 06 --trials 20 --kills 3 --seed 7  (also 02, 04, 05)
    .venv/bin/python bench/crash_sweep.py --lab 03 --path tests/variants/lab03/X  (sweep another lab folder)
    .venv/bin/python bench/crash_sweep.py --lab 01 --trials 20 --kills 3 --seed 7 --trial 12  (that trial alone)
    .venv/bin/python bench/crash_sweep.py --lab 03 --trials 1 --start-gap 0 --cold-schema
        (every thread starts at once on a fresh database: PostgresSaver.setup()'s race, docs/design.md)

The seed fixes the kill moments (seconds after each start or restart); the machine decides what
runs at those moments, so a re-run kills at the same offsets, not necessarily in the same places.
Prints one line per kill, then the report (trials, kills fired, violations, at-least-once repeats,
where the kills landed, and how many kills found no live process). Exit status 1 on a violation.
The engine is labkit/sweep.py; each lab's scenario is checks/scenario_<slug>.py, beside its check
(which shares its code). `lab sweep NN` is the students' command over the same scenarios; this is
the course's long-run driver. Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labkit import course, proc  # noqa: E402
from labkit.sweep import NoScenario, Report, load_scenario, run_sweep  # noqa: E402


def rerun_command(args: argparse.Namespace, seed: int) -> str:
    argv = [".venv/bin/python", "bench/crash_sweep.py", "--lab", args.lab, "--trials", str(args.trials),
            "--kills", str(args.kills), "--seed", str(seed)]
    if args.subjects is not None:
        argv += ["--subjects", str(args.subjects)]
    if args.trial is not None:
        argv += ["--trial", str(args.trial)]
    if args.path:
        argv += ["--path", str(args.path)]
    if args.start_gap is not None:
        argv += ["--start-gap", str(args.start_gap)]
    if args.cold_schema:
        argv.append("--cold-schema")
    return shlex.join(argv)


def sweep(lab: str, *, trials: int, kills: int, seed: int, subjects: int | None, workdir: Path,
          path: Path | None = None, command: str = "", log=print, trial: int | None = None, **options) -> Report:
    """One sweep of one lab, its servers started and stopped here (also used by tests/test_crash_sweep.py).
    subjects None: the scenario's own default; trial (1-based): only that trial of the seed."""
    if subjects is not None:
        options["subjects"] = subjects
    scenario = load_scenario(course.load().lab(lab), workdir=workdir, path=path, **options)
    return asyncio.run(run_sweep(scenario, seed=seed, trials=trials, kills=kills, command=command, log=log,
                                 only_trial=trial - 1 if trial is not None else None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", required=True,
                        help="01, 02, 05, 06 (Temporal), 03, 04 (LangGraph), 07 (Restate); "
                             "the scenario: checks/scenario_<slug>.py")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kills", type=int, default=3, help="kills per trial")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
    parser.add_argument("--trial", type=int, default=None,
                        help="run only this trial (1-based) of the seed: its kill moments come from seed and trial")
    parser.add_argument("--subjects", type=int, default=None,
                        help="workflows or threads per trial (default 5 for Lab 03, 4 otherwise; Lab 05 at most 4)")
    parser.add_argument("--path", type=Path, default=None, help="lab folder to sweep (default: the solution)")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument("--start-gap", type=float, default=None,
                        help="seconds between the starts of a trial's workflows / threads (default: the lab's)")
    parser.add_argument("--cold-schema", action="store_true",
                        help="Lab 03: let the graph processes create the checkpoint tables themselves, at once "
                             "(reproduces PostgresSaver.setup()'s race; see docs/design.md)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    with tempfile.TemporaryDirectory(prefix=f"sweep{args.lab}-") as tmp:
        try:
            report = sweep(args.lab, trials=args.trials, kills=args.kills, seed=seed, subjects=args.subjects,
                           workdir=Path(tmp), path=args.path, command=rerun_command(args, seed), trial=args.trial,
                           **({"cold_schema": True} if args.cold_schema else {}),
                           **({"start_gap_s": args.start_gap} if args.start_gap is not None else {}))
        except (NoScenario, KeyError) as err:
            print(err.args[0], file=sys.stderr)
            return 2
        finally:
            proc.reap_all()  # whatever an interrupted sweep left running
    print(report.render())
    if args.json:
        args.json.write_text(report.to_json())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
