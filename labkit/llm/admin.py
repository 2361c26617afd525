"""The course LLM, hardened against the code it serves: an admin token, and a ledger kept in memory.

Student code talks to the course LLM (it has OPENAI_BASE_URL), so it could also call the
admin endpoints and, say, push a rule that changes the replies a check relies on. When the
server starts with a token (the environment variable LAB_LLM_ADMIN_TOKEN, set only in the
server's own environment by ``labkit.services.CourseLLM``), every request that changes the
server (any method but GET/HEAD/OPTIONS on a path under ``/_``, e.g. ``POST /_rules``) must
carry it in the X-Lab-Admin-Token header, or gets 401. Without a token the server is open,
as before (a server a test builds in-process, say).

The ledger file lives in a temp dir that student code could find and edit (delete its second
LLM call, say). So a guarded server also keeps every row it wrote in memory and answers from
there: ``GET /_ledger`` (what ``CourseLLM.ledger()`` reads) and the per-caller fault counters
no longer look at the file, which stays the durable copy that a restarted server loads.
"""

from __future__ import annotations

import hmac
import os
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

TOKEN_ENV = "LAB_LLM_ADMIN_TOKEN"
HEADER = "X-Lab-Admin-Token"
READ_ONLY = {"GET", "HEAD", "OPTIONS"}


def needs_token(method: str, path: str) -> bool:
    return path.startswith("/_") and method.upper() not in READ_ONLY


def guard(app: FastAPI, token: str | None = None) -> FastAPI:
    """Require the admin token on the admin writes of `app` (token: the argument, else the env)."""
    if token is None:
        token = os.environ.pop(TOKEN_ENV, "")  # popped: nothing this server starts inherits it
    if not token:
        return app
    ledger = getattr(app.state, "ledger", None)
    if ledger is not None:
        keep_in_memory(ledger)

    @app.middleware("http")
    async def admin_only(request: Request, call_next):
        if needs_token(request.method, request.url.path) and \
                not hmac.compare_digest(request.headers.get(HEADER, "").encode(), token.encode()):
            return JSONResponse(status_code=401, content={"error": {
                "message": f"{request.method} {request.url.path} needs the course LLM's admin token "
                           f"(header {HEADER}); only the process that started the server has it",
                "type": "authentication_error", "param": None, "code": "admin_token_required"}})
        return await call_next(request)

    return app


def keep_in_memory(ledger) -> None:
    """Serve `ledger`'s reads and counts from the rows this process wrote (and found at start)."""
    rows = list(ledger.entries())
    counts = Counter((e.caller, e.rule) for e in rows)
    record, read = ledger.record, ledger.entries

    def recorded(**fields):
        row_id = record(**fields)
        written = [e for e in read(since_id=row_id - 1) if e.id == row_id]
        for entry in written:  # read back at once, with no await in between
            rows.append(entry)
            counts[(entry.caller, entry.rule)] += 1
        return row_id

    def entries(caller: str | None = None, since_id: int = 0):
        return [e for e in rows if e.id > since_id and (caller is None or e.caller == caller)]

    def count(*, caller: str, rule: str) -> int:
        return counts[(caller, rule)]

    ledger.record, ledger.entries, ledger.count = recorded, entries, count
