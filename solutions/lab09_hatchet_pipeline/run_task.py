"""Run ONE attempt of one task of the pipeline with the SDK's mock_run: no Hatchet server.

    python -m lab09_hatchet_pipeline.run_task TASK INPUT.json PARENTS.json RETRY_COUNT OUT.json

`Task.mock_run` / `aio_mock_run` (hatchet-sdk 1.x) builds a Context from the input, the parents'
outputs and the retry count you give it, and calls the task function once. It has no scheduler:
no DAG order, no retries, no concurrency limit. Whoever calls this program plays the engine (the
check does; so does local.py): it runs the tasks in their parents' order, hands each one its
parents' recorded outputs, and runs a failed task again with retry_count + 1 until its `retries`
are spent. OUT.json gets {"ok": true, "output": ...} or {"ok": false, "error": ...}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
import warnings
from pathlib import Path

from pydantic import BaseModel

from .models import Document

MOCK_NOTICE = "Hatchet mock_run: in-process, no Hatchet server (no scheduler, retries or concurrency here)"


def task_named(name: str):
    from .workflow import pipeline

    for task in pipeline.tasks:
        if task.name == name:
            return task
    raise SystemExit(f"the workflow has no task named {name!r} (it has {[t.name for t in pipeline.tasks]})")


async def attempt(name: str, document: Document, parents: dict, retry_count: int):
    task = task_named(name)
    with warnings.catch_warnings():  # the property is marked internal in 1.x; it says which mock to call
        warnings.simplefilter("ignore", DeprecationWarning)
        is_async = task.is_async_function
    if is_async:
        return await task.aio_mock_run(document, parent_outputs=parents, retry_count=retry_count)
    return await asyncio.to_thread(task.mock_run, document, parent_outputs=parents, retry_count=retry_count)


def main(argv: list[str]) -> int:
    name, input_path, parents_path, retry_count, out_path = argv
    print(f"{MOCK_NOTICE}: task {name}, retry_count {retry_count}", file=sys.stderr, flush=True)
    document = Document.model_validate_json(Path(input_path).read_text())
    parents = json.loads(Path(parents_path).read_text())
    try:
        output = asyncio.run(attempt(name, document, parents, int(retry_count)))
    except Exception as err:
        traceback.print_exc()
        status = getattr(err, "status_code", None)
        Path(out_path).write_text(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}"[:2000],
                                              "status_code": status}))
        return 1
    if isinstance(output, BaseModel):
        output = output.model_dump(mode="json")
    Path(out_path).write_text(json.dumps({"ok": True, "output": output}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
