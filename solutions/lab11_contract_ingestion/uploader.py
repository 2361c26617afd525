"""Upload documents: the choreographed pipeline starts from the document.uploaded events this publishes.

    python -m lab11_contract_ingestion.uploader --count 50 --seed 7
"""

import argparse
import asyncio

from .db import ensure_schema, upload
from .documents import make_documents


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab11_contract_ingestion.uploader")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    await ensure_schema()
    for doc in make_documents(args.count, args.seed):
        await upload(doc.doc_id, doc.title, doc.raw)
    print(f"uploaded {args.count} documents (seed {args.seed})")


if __name__ == "__main__":
    asyncio.run(main())
