"""Run the pipeline on a few documents, offline, in this process: the SDK's mock_run, no server.

    python -m lab09_hatchet_pipeline.local

This program plays a (very small) Hatchet engine so you can watch the DAG without a server: it
runs each document's tasks in their parents' order, gives each task its parents' outputs, and runs
a task that raised again, alone, with retry_count + 1, until the task's `retries` are spent. No
backoff waits, no concurrency limit: a real engine does those (see the README). The LLM is the
course LLM (`lab up`, or OPENAI_BASE_URL).
"""

from __future__ import annotations

import asyncio
import os
import warnings

from .models import Document
from .workflow import pipeline

SAMPLES = [
    Document(doc_id="doc-001", provider="openai", title="Invoice 4471",
             body="Invoice 4471 for 12 chairs, due on 30 June, payable to Oak & Co."),
    Document(doc_id="doc-002", provider="anthropic", title="Late delivery",
             body="The parcel arrived two weeks late and the box was crushed. I want a refund."),
    Document(doc_id="doc-003", provider="openai", title="Lease",
             body="The tenant leases the flat for 24 months from 1 May; rent is due monthly."),
]


def ordered_tasks() -> list:
    """The tasks in an order where every task comes after its parents."""
    done: list = []
    remaining = list(pipeline.tasks)
    while remaining:
        ready = [t for t in remaining if all(p in done for p in t.parents)]
        if not ready:
            raise SystemExit("the tasks' parents form a cycle")
        done += ready
        remaining = [t for t in remaining if t not in ready]
    return done


async def run_task(task, document: Document, parents: dict, retry_count: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        is_async = task.is_async_function
    if is_async:
        return await task.aio_mock_run(document, parent_outputs=parents, retry_count=retry_count)
    return await asyncio.to_thread(task.mock_run, document, parent_outputs=parents, retry_count=retry_count)


async def run_document(document: Document) -> dict:
    outputs: dict[str, dict] = {}
    for task in ordered_tasks():
        parents = {p.name: outputs[p.name] for p in task.parents}
        for retry_count in range(task.retries + 1):
            try:
                result = await run_task(task, document, parents, retry_count)
            except Exception as err:
                print(f"  {document.doc_id} {task.name} attempt {retry_count + 1}: failed: {type(err).__name__}: {err}")
                if retry_count == task.retries:
                    print(f"  {document.doc_id}: FAILED in {task.name} ({task.retries} retries spent)")
                    return outputs
                continue
            outputs[task.name] = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
            print(f"  {document.doc_id} {task.name} attempt {retry_count + 1}: {str(outputs[task.name])[:100]}")
            break
    return outputs


async def main() -> None:
    print("Running on Hatchet's in-process mock_run, not on a Hatchet server.")
    os.environ.setdefault("OPENAI_API_KEY", "lab09-local")
    for document in SAMPLES:
        await run_document(document)


if __name__ == "__main__":
    asyncio.run(main())
