"""Start one AnalyzeWorkflow and wait for its result (the saved row's id).

    python -m lab01_temporal_crash.starter "The delivery was late but support was great."
"""

import asyncio
import os
import sys
import uuid

from temporalio.client import Client

from .models import TASK_QUEUE, AnalyzeRequest
from .workflows import AnalyzeWorkflow


async def main() -> None:
    prompt = " ".join(sys.argv[1:]) or "The delivery was late, but support fixed it in minutes."
    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
    )
    workflow_id = f"analyze-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        AnalyzeWorkflow.run, AnalyzeRequest(prompt=prompt), id=workflow_id, task_queue=TASK_QUEUE
    )
    ui = os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233")
    print(f"started {workflow_id}: {ui}/namespaces/default/workflows/{workflow_id}")
    print(f"saved row id: {await handle.result()}")


if __name__ == "__main__":
    asyncio.run(main())
