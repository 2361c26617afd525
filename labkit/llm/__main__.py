"""Serve the course LLM: python -m labkit.llm --port 8300 --ledger-dir .lab/llm --rules course.toml"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from .admin import guard
from .rules import RuleBook
from .server import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.llm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--ledger-dir", type=Path, default=Path(".lab/llm"))
    parser.add_argument("--rules", type=Path, action="append", default=[],
                        help="TOML or JSON rule file; repeat to add more (earlier files win)")
    args = parser.parse_args()
    book = RuleBook()
    for path in reversed(args.rules):
        book.prepend(RuleBook.from_file(path).rules)
    # keep-alive far above any gap between a slow client's requests (uvicorn's 5 s default races
    # a client that reuses its connection: "Server disconnected without sending a response")
    uvicorn.run(guard(create_app(args.ledger_dir, book)), host=args.host, port=args.port,
                log_level="warning", access_log=False, timeout_keep_alive=600)


if __name__ == "__main__":
    main()
