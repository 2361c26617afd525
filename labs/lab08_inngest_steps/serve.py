"""Serve the research agent to a real Inngest server, as a web app would (not used by `lab check 08`
unless it is given --server; untested in this course: the dev server cannot be installed offline).

    python -m lab08_inngest_steps.serve --port 8000          # the app, on 127.0.0.1
    npx inngest-cli@latest dev -u http://127.0.0.1:8000/api/inngest   # the dev server, UI on :8288

The dev server calls POST /api/inngest once per step; the app answers with the step's result, and the
server keeps the results (durably) and calls again. Send `lab08/research.requested` from the dev
server's UI or with inngest_client.send(...). INNGEST_DEV / INNGEST_BASE_URL point the SDK at a server
elsewhere than http://127.0.0.1:8288.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import fastapi
import inngest.fast_api
import uvicorn

from .client import inngest_client
from .executor import observe_for_server

NOTICE = "lab08 serves its function to a real Inngest server (serve.py), not the in-process executor."


def create_app(port: int) -> fastapi.FastAPI:
    from .functions import research_agent  # the student's code

    app = fastapi.FastAPI(title="lab08 research agent")
    inngest.fast_api.serve(app, inngest_client, [research_agent], serve_origin=f"http://127.0.0.1:{port}",
                           serve_path="/api/inngest")
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("LAB08_PORT", "8000")))
    parser.add_argument("--trace", default=os.environ.get("LAB08_TRACE"), help="JSON-lines trace of every call")
    args = parser.parse_args()
    print(NOTICE, flush=True)
    observe_for_server(Path(args.trace) if args.trace else None)
    uvicorn.run(create_app(args.port), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
