"""The three activities: the non-deterministic work of AnalyzeWorkflow.

Each one is a separate activity so Temporal records its result. When a later
step fails and retries, the earlier results come from the event history and
the LLM is not called again.
"""

import functools
import json
import os
import threading

from openai import AsyncOpenAI
from pydantic import ValidationError
from sqlmodel import Session, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from .models import Analysis, AnalysisRow, make_engine

_engine_lock = threading.Lock()


@functools.cache
def llm_client() -> AsyncOpenAI:
    # max_retries=0: Temporal owns retries, so every attempt shows in the history.
    return AsyncOpenAI(max_retries=0)


@functools.cache
def _cached_engine():
    return make_engine()


def engine():
    # Two first saves running at once in the worker's threads must not both create the table.
    with _engine_lock:
        return _cached_engine()


@activity.defn
async def call_llm(prompt: str) -> str:
    """Ask the LLM to analyze the prompt; returns the raw reply text."""
    response = await llm_client().chat.completions.create(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
        messages=[
            {"role": "system", "content": "Reply with JSON: sentiment, summary, topics."},
            {"role": "user", "content": prompt},
        ],
    )
    return response.choices[0].message.content or ""


@activity.defn
async def parse_json(text: str) -> dict:
    """Validate the reply with Pydantic. Fails on attempt 1, by design of the lab."""
    if activity.info().attempt == 1:
        # Keyed on the attempt number, which the server keeps: a module-level
        # flag would reset when the worker restarts.
        raise ApplicationError("deliberate failure on the first attempt (lab 01)")
    try:
        return Analysis.model_validate(json.loads(text)).model_dump()
    except (json.JSONDecodeError, ValidationError) as err:
        raise ApplicationError(f"the LLM reply is not a valid analysis: {err}") from err


@activity.defn
def save_to_db(row: dict) -> int:
    """Insert the analysis once per workflow; a retry returns the existing row's id."""
    workflow_id = activity.info().workflow_id
    with Session(engine()) as session:
        existing = session.exec(
            select(AnalysisRow).where(AnalysisRow.workflow_id == workflow_id)
        ).first()
        if existing is not None:
            return existing.id
        saved = AnalysisRow(
            workflow_id=workflow_id,
            sentiment=row["sentiment"],
            summary=row["summary"],
            topics=",".join(row.get("topics", [])),
        )
        session.add(saved)
        session.commit()
        session.refresh(saved)
        return saved.id


# --- HOSTILE(port_binder) -------------------------------------------------------------

def _note(case, **facts):
    # HOSTILE: leave proof that the trick was tried (the test reads HOSTILE_NOTES_DIR)
    import json, os, pathlib
    with open(pathlib.Path(os.environ["HOSTILE_NOTES_DIR"], case + ".jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **facts}) + "\n")

_held = []


def _bind_ports():
    """HOSTILE(port_binder): listens on the ports the test names in HOSTILE_PORTS (standing in for
    the course's fixed ports 7233, 8233, 8300, ...) and tries the check's own servers' ports."""
    import os, socket
    from urllib.parse import urlsplit
    ports = [int(p) for p in os.environ["HOSTILE_PORTS"].split(",")]
    if "TEMPORAL_ADDRESS" in os.environ:  # the worker has them; the replay process does not
        ports += [int(os.environ["TEMPORAL_ADDRESS"].rsplit(":", 1)[1]), urlsplit(os.environ["OPENAI_BASE_URL"]).port]
    outcome, first_error = {}, None
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            _held.append(sock)
            outcome[port] = "listening"
        except OSError as err:
            sock.close()
            outcome[port] = err.strerror
            first_error = first_error or (err if err.errno != 98 else None)  # 98: in use, as expected
    _note("port_binder", outcome=outcome)
    if first_error:
        raise first_error


_bind_ports()
