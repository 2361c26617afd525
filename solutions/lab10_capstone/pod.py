"""One pod of the batch: `python -m lab10_capstone.pod naive|langgraph|temporal|restate` (course-provided).

A pod is a process that works on the batch until it is done or evicted (SIGKILL). Started again,
on another host with the same store, it must carry on where the batch is, not where it began.
For Temporal the pod runs a worker and, beside it, your run_batch (which starts or finds the
batch's workflow and waits for it).

For Restate the pod serves your workflow (hypercorn, in this one process), registers itself with
restate-server and calls your run_batch, which submits the batch and waits for it.

Configuration from the environment: LAB10_QUESTIONS, LAB10_BATCH_ID, LAB10_QUESTIONS_PER_RUN,
DATABASE_URL, COURSE_WEB_URL, OPENAI_BASE_URL / OPENAI_API_KEY, TEMPORAL_ADDRESS, TEMPORAL_TASK_QUEUE,
RESTATE_INGRESS_URL, RESTATE_ADMIN_URL, LAB10_RESTATE_BIND, LAB10_RESTATE_URI.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from .models import Batch

RUNTIMES = ("naive", "langgraph", "temporal", "restate")


async def run_temporal(batch: Batch) -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    from .activities import ACTIVITIES
    from .workflows import WORKFLOWS, run_batch

    client = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
                                  namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"))
    task_queue = os.environ.get("TEMPORAL_TASK_QUEUE", "lab10-capstone")
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with Worker(client, task_queue=task_queue, workflows=WORKFLOWS, activities=ACTIVITIES,
                          activity_executor=executor):
            await run_batch(client, batch, task_queue)


async def run_restate(batch: Batch) -> None:
    import httpx
    import restate
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from .restate_batch import SERVICES, run_batch

    config = Config()
    config.bind = [os.environ.get("LAB10_RESTATE_BIND", "127.0.0.1:9081")]  # fd://N when a check hands a socket
    config.accesslog = None
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(restate.app(services=SERVICES), config, shutdown_trigger=stop.wait))
    admin = os.environ.get("RESTATE_ADMIN_URL", "http://127.0.0.1:9070")
    uri = os.environ.get("LAB10_RESTATE_URI", "http://127.0.0.1:9081")
    async with httpx.AsyncClient(timeout=30) as client:  # the deploy step: tell restate-server where we serve
        for _ in range(600):
            if serving.done():
                serving.result()  # hypercorn failed: raise its error
            response = await client.post(f"{admin}/deployments", json={"uri": uri, "force": True})
            if response.status_code in (200, 201):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"restate-server could not register {uri}: {response.status_code} {response.text[:300]}")
    await asyncio.to_thread(run_batch, os.environ.get("RESTATE_INGRESS_URL", "http://127.0.0.1:8080"), batch)
    stop.set()
    await serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=RUNTIMES)
    runtime = parser.parse_args().runtime
    batch = Batch.from_env()
    print(f"POD {os.getpid()} runtime={runtime} batch={batch.batch_id} questions={len(batch.questions)}", flush=True)
    if runtime == "naive":
        from .naive import run_batch

        run_batch(batch)
    elif runtime == "langgraph":
        from .graph_batch import run_batch

        run_batch(batch)
    elif runtime == "temporal":
        asyncio.run(run_temporal(batch))
    else:
        asyncio.run(run_restate(batch))
    print(f"DONE {os.getpid()} runtime={runtime} batch={batch.batch_id}", flush=True)
    if runtime == "temporal":
        # The Temporal SDK's native threads can still call into Python while the interpreter
        # finalizes (measured: SIGABRT "PyGILState_Release ... finalizing" after a 200-question
        # batch had finished). Everything the batch did is in the store: leave without finalizing.
        sys.stdout.flush()
        os._exit(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
