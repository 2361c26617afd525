"""Run a worker for AnalyzeWorkflow and its three activities.

    python -m lab01_temporal_crash.worker        (from labs/ or solutions/)

Stop it with Ctrl-C for a graceful shutdown, or kill -9 it to simulate a crash.
"""

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from .activities import call_llm, parse_json, save_to_db
from .models import TASK_QUEUE
from .workflows import AnalyzeWorkflow


async def main() -> None:
    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=4) as executor:
        worker = Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[AnalyzeWorkflow],
            activities=[call_llm, parse_json, save_to_db],
            activity_executor=executor,  # save_to_db is a plain function
        )
        async with worker:
            print(f"worker {os.getpid()} polling task queue {TASK_QUEUE!r}", flush=True)
            await stop.wait()
    print(f"worker {os.getpid()} shut down gracefully", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
