"""The worker, shaped differently: the tools' instance's methods are the activities."""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from temporalio.client import Client  # noqa: E402
from temporalio.openai_agents import OpenAIAgentsPlugin  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from .activities import AnalystTools  # noqa: E402
from .dataset import ensure_dataset  # noqa: E402
from .models import TASK_QUEUE  # noqa: E402
from .workflows import Analyst  # noqa: E402


async def main() -> None:
    ensure_dataset()
    client = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
                                  plugins=[OpenAIAgentsPlugin()])
    tools = AnalystTools()
    with ThreadPoolExecutor(max_workers=8) as pool:
        await Worker(client, task_queue=TASK_QUEUE, workflows=[Analyst],
                     activities=[tools.query_database, tools.send_notification], activity_executor=pool).run()


if __name__ == "__main__":
    asyncio.run(main())
