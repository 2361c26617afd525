"""Send one REQUESTED event to the research agent and run it to the end, in this process.

    python -m lab08_inngest_steps.runner --topic "durable execution" [--max-pages 3] [--run-id ID]

No Inngest server is involved: executor.Executor drives the function the way a server would
(call the body, memoize each step, call again), in memory. The last line printed is the run's
outcome as JSON: {"status", "output", "error", "body_calls", "events"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import inngest

from .executor import Executor
from .models import REQUESTED, ResearchRequested

NOTICE = ("lab08 runs on an in-process executor (the SDK's inngest.experimental.mocked loop, with parallel "
          "steps run at once and retries per step, as a server does), not on an Inngest server.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topic", default="durable execution")
    parser.add_argument("--max-pages", type=int, default=3)
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--trace", default=os.environ.get("LAB08_TRACE"), help="JSON-lines trace of the run")
    args = parser.parse_args(argv)

    request = ResearchRequested(run_id=args.run_id or f"run-{uuid.uuid4().hex[:8]}", topic=args.topic,
                                max_pages=args.max_pages)
    print(NOTICE, flush=True)
    from .functions import research_agent  # the student's code: imported after the notice

    executor = Executor(research_agent, run_id=request.run_id, trace=Path(args.trace) if args.trace else None)
    result = asyncio.run(executor.run(inngest.Event(name=REQUESTED, data=request.model_dump())))
    sent = [r for r in executor.trace.records if r["event"] == "sent"]
    print(f"{result.status}: {result.body_calls} calls of the function body, {len(sent)} event send(s)", flush=True)
    print(json.dumps({"status": result.status, "output": result.output, "error": result.error,
                      "body_calls": result.body_calls, "events": sent}, default=str), flush=True)
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
