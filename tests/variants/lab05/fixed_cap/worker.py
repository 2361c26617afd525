"""Run a worker for ResearchWorkflow and its three activities.

    python -m lab05_research_fanout.worker        (from labs/ or solutions/)

Stop it with Ctrl-C for a graceful shutdown, or kill -9 it to simulate a crash.
"""

import asyncio
import os
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from .activities import extract_content, llm_summarize, search_web
from .models import TASK_QUEUE
from .workflows import ResearchWorkflow


async def main() -> None:
    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[ResearchWorkflow],
        activities=[search_web, extract_content, llm_summarize],
        # The SDK sends at most one heartbeat per 80% of heartbeat_timeout (1.6 s of 2 s):
        # too little margin on a busy machine. Send them at least every 0.5 s.
        max_heartbeat_throttle_interval=timedelta(seconds=0.5),
    )
    async with worker:
        print(f"worker {os.getpid()} polling task queue {TASK_QUEUE!r}", flush=True)
        await stop.wait()
    print(f"worker {os.getpid()} shut down gracefully", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
