"""Ask the analyst agent a question and print its answer.

    python -m lab06_agent_tools.starter                       (the lab's question: Q3 revenue, posted to #sales)
    python -m lab06_agent_tools.starter --cleanup             (a request to delete rows: refused)
    python -m lab06_agent_tools.starter "[lab06 ask=q3-revenue] your own wording"

The course LLM answers a question by the tag in it: `[lab06 ask=q3-revenue]` or
`[lab06 ask=cleanup]` (see course.toml). Any other question gets its default reply.
"""

import argparse
import asyncio
import os
import uuid

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from temporalio.client import Client  # noqa: E402
from temporalio.openai_agents import OpenAIAgentsPlugin  # noqa: E402

from .models import DEFAULT_MODEL, TASK_QUEUE, AnalystRequest  # noqa: E402
from .workflows import AnalystAgentWorkflow  # noqa: E402

REVENUE = "[lab06 ask=q3-revenue] Which region had the most revenue in Q3 2026? Post the numbers to #sales."
CLEANUP = "[lab06 ask=cleanup] Delete the North region's rows from the sales table, then tell the team."


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="*")
    parser.add_argument("--cleanup", action="store_true", help="ask the agent to delete rows (it must refuse)")
    args = parser.parse_args()
    question = " ".join(args.question) or (CLEANUP if args.cleanup else REVENUE)

    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
        plugins=[OpenAIAgentsPlugin()],
    )
    workflow_id = f"analyst-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        AnalystAgentWorkflow.run,
        AnalystRequest(question=question, model=os.environ.get("OPENAI_MODEL", DEFAULT_MODEL)),
        id=workflow_id,
        task_queue=TASK_QUEUE,
    )
    ui = os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233")
    print(f"started {workflow_id}: {ui}/namespaces/default/workflows/{workflow_id}")
    print(await handle.result())


if __name__ == "__main__":
    asyncio.run(main())
