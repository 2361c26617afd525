"""Start one AnalyzeWorkflow, print how to approve it, and wait for its result.

    python -m lab02_approval_signal.starter "The delivery was late but support was great."
    python -m lab02_approval_signal.starter --approval-timeout 60 "..."   # expire after a minute

The workflow waits at the approval gate until someone decides, from another terminal:

    lab approve <workflow-id>                       (or: python -m lab02_approval_signal.approve <workflow-id>)
    lab approve <workflow-id> --reject --reason "wrong product"
"""

import argparse
import asyncio
import os
import uuid

from temporalio.client import Client

from .models import DEFAULT_APPROVAL_TIMEOUT_S, TASK_QUEUE, AnalyzeRequest, AnalyzeResult
from .workflows import AnalyzeWorkflow


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="*")
    parser.add_argument("--approval-timeout", type=float, default=DEFAULT_APPROVAL_TIMEOUT_S,
                        help="seconds a reviewer has to decide (default: 24 h)")
    args = parser.parse_args()
    prompt = " ".join(args.prompt) or "The delivery was late, but support fixed it in minutes."

    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
        namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
    )
    workflow_id = f"analyze-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        AnalyzeWorkflow.run,
        AnalyzeRequest(prompt=prompt, approval_timeout_seconds=args.approval_timeout),
        id=workflow_id,
        task_queue=TASK_QUEUE,
    )
    ui = os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233")
    print(f"started {workflow_id}: {ui}/namespaces/default/workflows/{workflow_id}")
    print(f"approve it:  lab approve {workflow_id}")
    print(f"reject it:   lab approve {workflow_id} --reject --reason '...'")
    result: AnalyzeResult = await handle.result()
    print(f"{result.status}: row id {result.row_id}, reviewer {result.reviewer}, note {result.note!r}")


if __name__ == "__main__":
    asyncio.run(main())
