"""Run a worker for AnalystAgentWorkflow, its two tool activities and the plugin's model activity.

    python -m lab06_agent_tools.worker        (from labs/ or solutions/)

OpenAIAgentsPlugin (from the PyPI package temporalio-openai-agents) does three things here: it
registers invoke_model_activity, which calls the model with the OpenAI client (OPENAI_BASE_URL,
OPENAI_API_KEY; no retries of its own, Temporal retries); it lets the workflow sandbox pass the
`agents` and `openai` modules through; and it swaps in a data converter that handles the Agents
SDK's pydantic types. The client that starts workflows uses the same plugin (starter.py).
"""

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

# Offline: the Agents SDK would otherwise export traces to OpenAI's servers.
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from temporalio.client import Client  # noqa: E402
from temporalio.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from .activities import query_database, send_notification  # noqa: E402
from .dataset import ensure_dataset  # noqa: E402
from .models import TASK_QUEUE  # noqa: E402
from .workflows import AnalystAgentWorkflow  # noqa: E402

MODEL_TURN_TIMEOUT = timedelta(seconds=30)


async def main() -> None:
    ensure_dataset()
    plugin = OpenAIAgentsPlugin(model_params=ModelActivityParameters(start_to_close_timeout=MODEL_TURN_TIMEOUT))
    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
        plugins=[plugin],
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=4) as executor:
        worker = Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[AnalystAgentWorkflow],
            activities=[query_database, send_notification],
            activity_executor=executor,  # query_database is a plain function
        )
        async with worker:
            print(f"worker {os.getpid()} polling task queue {TASK_QUEUE!r}", flush=True)
            await stop.wait()
    print(f"worker {os.getpid()} shut down gracefully", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
