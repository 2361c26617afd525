"""Run a worker for IngestWorkflow and its activities.

    python -m lab11_contract_ingestion.worker        (from labs/ or solutions/)
"""

import asyncio
import os
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from .activities import (check_quality, embed_document, emit_event, extract_document, notify_user,
                         store_embedding)
from .db import ensure_schema
from .models import TASK_QUEUE
from .workflows import IngestWorkflow


async def main() -> None:
    await ensure_schema()
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
        workflows=[IngestWorkflow],
        activities=[extract_document, embed_document, store_embedding, check_quality, notify_user, emit_event],
        # Each activity opens one database connection: keep well under PostgreSQL's 100.
        max_concurrent_activities=20,
    )
    async with worker:
        print(f"worker {os.getpid()} polling task queue {TASK_QUEUE!r}", flush=True)
        await stop.wait()
    print(f"worker {os.getpid()} shut down gracefully", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
