"""Made-up contracts for the pipeline: a seed decides how many words each has.

    python -m lab11_contract_ingestion.documents --count 50 --seed 7    (prints their ids and sizes)
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

CLAUSES = (
    "The term of this agreement is twelve months from the effective date.",
    "Payment is due within thirty days of each invoice.",
    "Either party may terminate with sixty days written notice.",
    "The supplier keeps all intellectual property in its tools.",
    "Confidential information stays confidential for five years.",
    "Liability is limited to the fees paid in the last twelve months.",
    "Disputes go to arbitration in the city of the buyer.",
    "Signed by both parties on the date written below.",
)
FILLER = ("services", "delivery", "schedule", "acceptance", "warranty", "renewal", "notice", "invoice",
          "annex", "party", "obligation", "insurance", "audit", "records", "pricing", "support")


@dataclass
class Document:
    doc_id: str
    title: str
    raw: str  # the upload as it arrives: line wraps and page breaks the extract stage removes
    words: int


def contract(doc_id: str, words: int, rng: random.Random) -> Document:
    """A contract of exactly `words` words (after whitespace is normalized) that starts with its reference."""
    head = f"Contract reference: {doc_id}."
    body: list[str] = head.split()
    clauses = list(CLAUSES)
    rng.shuffle(clauses)
    for clause in clauses:
        body += clause.split()
    while len(body) < words:
        body.append(rng.choice(FILLER))
    body = body[:words]
    lines = [" ".join(body[i:i + 12]) for i in range(0, len(body), 12)]
    raw = "\n".join(line + ("\n\f" if n % 5 == 4 else "") for n, line in enumerate(lines))
    return Document(doc_id=doc_id, title=f"Contract {doc_id}", raw=raw, words=len(body))


def make_documents(count: int, seed: int, *, prefix: str = "C") -> list[Document]:
    rng = random.Random(seed)
    return [contract(f"{prefix}-{seed}-{n:03d}", rng.randint(30, 260), rng) for n in range(count)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m lab11_contract_ingestion.documents")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for doc in make_documents(args.count, args.seed):
        print(f"{doc.doc_id}  {doc.words:4d} words")
