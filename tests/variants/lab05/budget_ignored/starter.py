"""Start one ResearchWorkflow and print its result.

    python -m lab05_research_fanout.starter "quantum error correction" [--budget 0.0001]
"""

import argparse
import asyncio
import os
import uuid

from temporalio.client import Client

from .models import TASK_QUEUE, ResearchRequest
from .workflows import ResearchWorkflow


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab05_research_fanout.starter")
    parser.add_argument("topic", nargs="*", default=["quantum", "error", "correction"])
    parser.add_argument("--max-sources", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0, help="US dollars")
    parser.add_argument("--max-parallel", type=int, default=3)
    parser.add_argument("--heartbeat-timeout", type=float, default=5.0, help="seconds")
    args = parser.parse_args()
    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
    )
    workflow_id = f"research-{uuid.uuid4().hex[:8]}"
    request = ResearchRequest(topic=" ".join(args.topic), max_sources=args.max_sources,
                              budget_usd=args.budget, max_parallel=args.max_parallel,
                              heartbeat_timeout_s=args.heartbeat_timeout)
    handle = await client.start_workflow(ResearchWorkflow.run, request, id=workflow_id, task_queue=TASK_QUEUE)
    ui = os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233")
    print(f"started {workflow_id}: {ui}/namespaces/default/workflows/{workflow_id}")
    result = await handle.result()
    print(f"sources ({len(result.sources)}):")
    for url in result.sources:
        print(f"  {url}")
    print(f"total cost: ${result.total_cost:.6f}" + (f"  PARTIAL: {result.reason}" if result.partial else ""))
    print(f"summary: {result.summary}")


if __name__ == "__main__":
    asyncio.run(main())
