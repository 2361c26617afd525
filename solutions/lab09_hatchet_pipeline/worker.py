"""A Hatchet worker for the pipeline: needs a real Hatchet server (see the README, "A real server").

    HATCHET_CLIENT_TOKEN=... python -m lab09_hatchet_pipeline.worker

Registers the workflow (what describe.py prints) and runs its tasks as the engine schedules them:
in parents' order, retried with backoff, at most MAX_RUNS_PER_PROVIDER documents per provider at once.
"""

from __future__ import annotations

import os

from .client import OFFLINE, hatchet
from .workflow import pipeline


def main() -> None:
    if OFFLINE:
        raise SystemExit("no HATCHET_CLIENT_TOKEN: a worker needs a Hatchet server (see the README). "
                         "Offline, run `python -m lab09_hatchet_pipeline.local` (mock_run) instead.")
    worker = hatchet.worker(os.environ.get("LAB09_WORKER_NAME", "lab09-worker"),
                            slots=int(os.environ.get("LAB09_WORKER_SLOTS", "10")), workflows=[pipeline])
    worker.start()


if __name__ == "__main__":
    main()
