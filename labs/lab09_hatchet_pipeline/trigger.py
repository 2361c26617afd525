"""Run the pipeline on the sample documents through a real Hatchet server and print each result.

    HATCHET_CLIENT_TOKEN=... python -m lab09_hatchet_pipeline.trigger

Needs the server and a running worker (worker.py). Offline, use local.py.
"""

from __future__ import annotations

from hatchet_sdk import TriggerWorkflowOptions

from .client import OFFLINE
from .local import SAMPLES
from .workflow import pipeline


def main() -> None:
    if OFFLINE:
        raise SystemExit("no HATCHET_CLIENT_TOKEN: trigger needs a Hatchet server (see the README).")
    runs = [pipeline.run_no_wait(doc, options=TriggerWorkflowOptions(additional_metadata={"doc_id": doc.doc_id}))
            for doc in SAMPLES]
    for doc, run in zip(SAMPLES, runs):
        print(doc.doc_id, run.result())


if __name__ == "__main__":
    main()
