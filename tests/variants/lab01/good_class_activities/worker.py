"""A worker registering the bound methods of one AnalysisActivities instance."""

import asyncio
import os

from openai import AsyncOpenAI
from temporalio.client import Client
from temporalio.worker import Worker

from .activities import AnalysisActivities
from .models import TASK_QUEUE, make_engine
from .workflows import AnalyzeWorkflow


async def main() -> None:
    client = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"))
    acts = AnalysisActivities(make_engine(), AsyncOpenAI(max_retries=0))
    worker = Worker(
        client,
        task_queue=TASK_QUEUE,
        workflows=[AnalyzeWorkflow],
        activities=[acts.call_llm, acts.parse_json, acts.save_to_db],
    )
    print("worker started", flush=True)
    await worker.run()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
