"""Run documents through a real Hatchet engine and write down what the engine recorded.

    HATCHET_CLIENT_TOKEN=... python -m lab09_hatchet_pipeline.server_run DOCS.json OUT.json [DOC_ID ...]

This is the course's driver for `lab check 09 --server URL` (UNTESTED in the course: no engine runs
offline; see the README, "A real server"). A worker (worker.py) must be connected to the same engine,
in the same namespace (HATCHET_CLIENT_NAMESPACE). The driver
  1. waits until that worker (LAB09_WORKER_NAME) is ACTIVE, so the workflow is registered;
  2. triggers one run per document, at once, with the document id in the run's metadata;
  3. waits for every run to end (completed or failed);
  4. replays the store task of each DOC_ID given (what a worker that died after store's commit and
     before its report would cause), and waits for that task to end again;
  5. writes, per document, the run id, whether it completed, and the engine's run details (every
     task's status and output, and the task events: each attempt's start, failure, retry, finish).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from hatchet_sdk import TriggerWorkflowOptions

from .client import OFFLINE, hatchet
from .models import Document
from .workflow import pipeline

WAIT_S = float(os.environ.get("LAB09_SERVER_WAIT_S", "600"))  # the last guard; the check watches the worker
ENDED = {"COMPLETED", "FAILED", "CANCELLED"}


def log(message: str) -> None:
    print(f"server_run: {message}", file=sys.stderr, flush=True)


def status_of(value) -> str:
    return str(getattr(value, "value", value)).upper()


async def wait_for_worker(name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        workers = (await hatchet.workers.aio_list()).rows or []
        if any(w.name.endswith(name) and status_of(w.status) == "ACTIVE" for w in workers):
            log(f"worker {name} is active")
            return
        await asyncio.sleep(0.5)
    raise SystemExit(f"no active worker named {name} after {WAIT_S:.0f} s")


async def trigger(doc: Document):
    deadline = time.monotonic() + WAIT_S
    while True:  # the worker registers the workflow as it starts: the first trigger may come before that
        try:
            return await pipeline.aio_run_no_wait(
                doc, options=TriggerWorkflowOptions(additional_metadata={"doc_id": doc.doc_id}))
        except Exception as err:
            if time.monotonic() > deadline:
                raise
            log(f"trigger of {doc.doc_id} refused ({type(err).__name__}: {err}); trying again")
            await asyncio.sleep(0.5)


async def outcome(ref) -> dict:
    try:
        return {"ok": True, "result": await ref.aio_result()}
    except Exception as err:  # the run failed: the engine's error says which task
        return {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000]}


async def details(run_id: str) -> dict:
    found = await hatchet.runs.aio_get(run_id)
    return found.model_dump(mode="json")


def named(display_name: str | None, name: str) -> bool:
    """Whether the engine's name of a task (e.g. "store" or "document-pipeline:store") is `name`."""
    return (display_name or "").split(":")[-1] == name


def task_named(run: dict, name: str) -> dict | None:
    return next((t for t in run.get("tasks", []) if named(t.get("display_name"), name)), None)


def ends_of(run: dict, name: str) -> int:
    """How many attempts of the task have ended (finished or failed), by the engine's events."""
    return sum(1 for e in run.get("task_events", []) if named(e.get("task_display_name"), name)
               and status_of(e.get("event_type")) in ("FINISHED", "FAILED"))


async def replay_store(run_id: str) -> None:
    """Run store again, as after a worker that died between its commit and its report."""
    run = await details(run_id)
    store = task_named(run, "store")
    if store is None or status_of(store.get("status")) != "COMPLETED":
        log(f"run {run_id}: no completed store task to replay")
        return
    ended_before = ends_of(run, "store")
    await hatchet.runs.aio_replay(store["task_external_id"])
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        run = await details(run_id)
        if ends_of(run, "store") > ended_before and status_of((task_named(run, "store") or {}).get("status")) in ENDED:
            return
        await asyncio.sleep(0.5)
    log(f"run {run_id}: the replayed store had not ended after {WAIT_S:.0f} s")


async def main(docs_path: str, out_path: str, replay: list[str]) -> None:
    if OFFLINE:
        raise SystemExit("no HATCHET_CLIENT_TOKEN: server_run needs a Hatchet engine (see the README).")
    docs = [Document.model_validate(d) for d in json.loads(Path(docs_path).read_text())]
    await wait_for_worker(os.environ.get("LAB09_WORKER_NAME", "lab09-worker"))
    refs = [await trigger(doc) for doc in docs]
    log("triggered " + ", ".join(f"{d.doc_id}={r.workflow_run_id}" for d, r in zip(docs, refs)))
    outcomes = await asyncio.gather(*(outcome(ref) for ref in refs))
    for doc, ref in zip(docs, refs):
        if doc.doc_id in replay:
            await replay_store(ref.workflow_run_id)
    found = {}
    for doc, ref, ended in zip(docs, refs, outcomes):
        found[doc.doc_id] = {"workflow_run_id": ref.workflow_run_id, **ended,
                             "details": await details(ref.workflow_run_id)}
    Path(out_path).write_text(json.dumps({"namespace": hatchet.namespace, "runs": found}, default=str))
    log(f"wrote {out_path}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
