"""Upload documents and start one IngestWorkflow per document; print how each ended.

    python -m lab11_contract_ingestion.starter --count 50 --seed 7
"""

import argparse
import asyncio
import os

from temporalio.client import Client, WorkflowFailureError

from .db import ensure_schema, upload
from .documents import make_documents
from .models import TASK_QUEUE, IngestRequest
from .workflows import IngestWorkflow


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab11_contract_ingestion.starter")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    await ensure_schema()
    client = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
                                  namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"))
    handles = []
    for doc in make_documents(args.count, args.seed, prefix="T"):
        await upload(doc.doc_id, doc.title, doc.raw)
        handles.append(await client.start_workflow(IngestWorkflow.run, IngestRequest(doc.doc_id),
                                                   id=f"ingest-{doc.doc_id}", task_queue=TASK_QUEUE))
    print(f"started {len(handles)} workflows")
    for handle in handles:
        try:
            result = await handle.result()
            print(f"{handle.id}: {result.status} ({result.model}, quality checked: {result.quality_checked})")
        except WorkflowFailureError as err:
            print(f"{handle.id}: FAILED ({err.cause})")


if __name__ == "__main__":
    asyncio.run(main())
