"""Tie every request a student process makes, and every activity attempt it runs, to the code that made it.

A check must know not only *how many* LLM calls a run made, but *which code* made each one: an LLM
call made from parse_json (its reply cached on disk) must not pass as call_llm's one call; an
activity attempt that timed out while waiting on a worker-wide semaphore must be visible although
Temporal's history keeps only an activity's last attempt. The course's servers cannot see that from
a request alone, so every student program a check starts runs under this module:

    python -m labkit.attribution <module> [args...]      (what `python -m <module> args` would do)

which installs two hooks before the program's first line runs:

- every HTTP request sent with httpx (the openai client, page downloads) carries the header
  ``X-Lab-Origin``: JSON ``{"pid", "program", "activity", "node", "thread"[, "hatchet"]}``, where ``activity``
  is the Temporal activity attempt running in that context (``{"type", "id", "attempt",
  "workflow_id", "run_id"}``) or null, ``node`` the LangGraph node running in that context and
  ``thread`` its graph run's thread_id, or null, ``hatchet`` the Hatchet task attempt a worker runs
  in that context (``{"task", "workflow", "retry_count", "step_run_id", "workflow_run_id"}``), absent outside one. The
  course LLM, the course web and the notification sink record it beside each request.
- when ``LAB_ATTEMPT_LOG`` names a file, every Temporal activity attempt of a worker is appended to
  it as two JSON lines: a ``start`` when the attempt begins in the worker and an ``end`` with its
  outcome (completed, failed, cancelled). An attempt with no ``end`` was cut short by the process's
  death. `read_attempts()` pairs them.

The hooks observe; they change nothing the program does. Set ``LAB_ATTRIBUTION=0`` to start
programs without them. A program that goes out of its way to strip the header is hostile, not a
mistake; the grader's other defences (docs/grading.md) are for that.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = "X-Lab-Origin"
ATTEMPT_LOG_ENV = "LAB_ATTEMPT_LOG"
ENABLE_ENV = "LAB_ATTRIBUTION"

_activity: contextvars.ContextVar[dict | None] = contextvars.ContextVar("lab_activity", default=None)
_program = ""


def enabled(env: dict | None = None) -> bool:
    return (env if env is not None else os.environ).get(ENABLE_ENV, "1") != "0"


def wrap_argv(argv: list[str], env: dict | None = None) -> list[str]:
    """`python -m module args` -> `python -m labkit.attribution module args` (other argv unchanged)."""
    if enabled(env) and len(argv) >= 3 and argv[1] == "-m" and argv[2] != __name__:
        return [argv[0], "-m", __name__, *argv[2:]]
    return list(argv)


# --- the origin of a request ---------------------------------------------------------------------

def _langgraph_run() -> tuple[str | None, str | None]:
    """The LangGraph node running in this context and its thread id, or (None, None)."""
    if "langgraph" not in sys.modules:
        return None, None
    try:
        from langgraph.config import get_config

        config = get_config()
    except Exception:  # outside a graph run (no runnable context)
        return None, None
    thread = (config.get("configurable") or {}).get("thread_id")
    return config.get("metadata", {}).get("langgraph_node"), None if thread is None else str(thread)


def _hatchet_task() -> dict | None:
    """The Hatchet task attempt running in this context on a worker, or None.

    hatchet-sdk 1.x's worker sets context variables around each task attempt (and copies them into
    the thread of a sync task): the task's Context (task and workflow names) and its retry count,
    step run id and workflow run id. Read only when the SDK is already imported; mock_run sets none."""
    variables = sys.modules.get("hatchet_sdk.runnables.contextvars")
    if variables is None:
        return None
    try:
        context = variables.ctx_hatchet_context.get()
        step_run_id = variables.ctx_step_run_id.get()
        if context is None and step_run_id is None:
            return None
        return {"task": getattr(context, "task_name", None), "workflow": getattr(context, "workflow_name", None),
                "retry_count": variables.ctx_task_retry_count.get(), "step_run_id": step_run_id,
                "workflow_run_id": variables.ctx_workflow_run_id.get()}
    except Exception:  # another SDK version: no attribution rather than a broken request
        return None


def origin() -> dict[str, Any]:
    """Where the calling code runs: the process, its program, the activity attempt, the graph node
    and the graph's thread id (with a checkpointer: which thread the request belongs to), and the
    Hatchet task attempt (when a Hatchet worker runs it)."""
    node, thread = _langgraph_run()
    found = {"pid": os.getpid(), "program": _program, "activity": _activity.get(), "node": node, "thread": thread}
    hatchet = _hatchet_task()
    if hatchet is not None:
        found["hatchet"] = hatchet
    return found


def parse(header: str | None) -> dict | None:
    """The origin a server received (None when the request carried no valid header)."""
    if not header:
        return None
    try:
        value = json.loads(header)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _patch_httpx() -> None:
    import importlib

    def stamp(request) -> None:
        try:
            request.headers[HEADER] = json.dumps(origin(), separators=(",", ":"))
        except Exception:  # never let the observer break the program
            pass

    def patch(httpx) -> None:
        sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

        def send(self, request, *args, **kwargs):
            stamp(request)
            return sync_send(self, request, *args, **kwargs)

        async def asend(self, request, *args, **kwargs):
            stamp(request)
            return await async_send(self, request, *args, **kwargs)

        httpx.Client.send, httpx.AsyncClient.send = send, asend

    # The openai client (3.x) sends through httpx2, a fork of httpx with its own classes.
    for name in ("httpx", "httpx2"):
        try:
            patch(importlib.import_module(name))
        except ImportError:
            continue


# --- activity attempts ---------------------------------------------------------------------------

def _append(path: str, record: dict) -> None:
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)  # one write of one line: lines of concurrent attempts never interleave
    finally:
        os.close(fd)


def _patch_temporal(log_path: str) -> None:
    import asyncio

    import temporalio.worker
    from temporalio import activity
    from temporalio.exceptions import CancelledError as TemporalCancelled

    class AttemptRecorder(temporalio.worker.ActivityInboundInterceptor):
        async def execute_activity(self, input):
            info = activity.info()
            attempt = {"type": info.activity_type, "id": info.activity_id, "attempt": info.attempt,
                       "workflow_id": info.workflow_id, "run_id": info.workflow_run_id}
            base = {"pid": os.getpid(), "workflow_id": info.workflow_id, "run_id": info.workflow_run_id,
                    "activity_id": info.activity_id, "activity_type": info.activity_type,
                    "attempt": info.attempt}
            _append(log_path, {"event": "start", **base, "at": time.time()})
            token = _activity.set(attempt)  # copied into the thread of a sync activity
            outcome, error = "completed", None
            try:
                return await self.next.execute_activity(input)
            except (asyncio.CancelledError, TemporalCancelled) as err:
                outcome, error = "cancelled", f"{type(err).__name__}: {err}"
                raise
            except BaseException as err:
                outcome, error = "failed", f"{type(err).__name__}: {err}"
                raise
            finally:
                _activity.reset(token)
                _append(log_path, {"event": "end", **base, "at": time.time(), "outcome": outcome,
                                   "error": (error or "")[:500] or None})

    class Recorder(temporalio.worker.Interceptor):
        def intercept_activity(self, next):
            return AttemptRecorder(next)

    original = temporalio.worker.Worker.__init__

    def init(self, *args, **kwargs):
        kwargs["interceptors"] = [*(kwargs.get("interceptors") or ()), Recorder()]
        original(self, *args, **kwargs)

    temporalio.worker.Worker.__init__ = init


def install(program: str) -> None:
    """Install the hooks in this process (idempotent per process)."""
    global _program
    if _program:
        return
    _program = program
    _patch_httpx()
    log_path = os.environ.get(ATTEMPT_LOG_ENV)
    if log_path:
        _patch_temporal(log_path)


# --- reading the record (the grader's side) ------------------------------------------------------

@dataclass
class Attempt:
    """One activity attempt as the worker ran it."""

    pid: int
    workflow_id: str
    run_id: str
    activity_id: str
    activity_type: str
    attempt: int
    started: float
    ended: float | None = None  # None: the process died (or is still running) mid-attempt
    outcome: str | None = None  # completed | failed | cancelled | None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.ended is not None


def read_attempts(path: Path | str) -> list[Attempt]:
    """Every attempt the log holds, in the order they started."""
    path = Path(path)
    if not path.exists():
        return []
    attempts: list[Attempt] = []
    open_ones: dict[tuple, Attempt] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill mid-write
            continue
        key = (record.get("pid"), record.get("run_id"), record.get("activity_id"), record.get("attempt"))
        if record.get("event") == "start":
            attempt = Attempt(pid=record["pid"], workflow_id=record["workflow_id"], run_id=record["run_id"],
                              activity_id=record["activity_id"], activity_type=record["activity_type"],
                              attempt=record["attempt"], started=record["at"])
            attempts.append(attempt)
            open_ones[key] = attempt
        elif record.get("event") == "end" and key in open_ones:
            attempt = open_ones.pop(key)
            attempt.ended, attempt.outcome, attempt.error = record["at"], record.get("outcome"), record.get("error")
    return attempts


# --- the runner ----------------------------------------------------------------------------------

def main() -> None:
    import runpy

    if len(sys.argv) < 2:
        print("usage: python -m labkit.attribution MODULE [ARGS...]", file=sys.stderr)
        raise SystemExit(2)
    module, args = sys.argv[1], sys.argv[2:]
    install(module)
    sys.argv = [module, *args]  # run_module puts the module's file name in argv[0], as -m does
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    from labkit import attribution  # the hooks' state lives in the importable module, not in __main__

    attribution.main()
