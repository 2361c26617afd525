"""Runs an Inngest function in this process, the way the Inngest server drives it, without a server.

The SDK's own offline harness, ``inngest.experimental.mocked.trigger`` (inngest 0.5.19), is this
loop: call the function, read the step it reports, memoize the step's result, call the function
again from the top. Its docstring invites copying it; this is that copy, changed where the mocked
one differs from a server (measured, docs/measured-facts.md "Session 4 — Inngest"):

- Parallel steps run at once. A server sends one request per step that ``ctx.group.parallel``
  planned, concurrently; ``mocked.trigger`` runs them one after another.
- Attempts are counted per step. ``retries=N`` gives *each* step N retries on a server;
  ``mocked.trigger`` counts one attempt counter for the whole run, so one step's failures spend
  another's retries.
- A step out of attempts is memoized as failed, and the function body sees ``inngest.StepError``
  where it awaited the step (it may catch it); ``mocked.trigger`` ends the run instead.

What it is not: durable. Memoized results live in this process's memory; a real server keeps them
in its state store, so the run survives the app's death. See the lab README, "A real server".

Everything it does is written to a JSON-lines trace (``LAB08_TRACE``) the autograder reads: each call
of the function body, each step attempt (start and end), each parallel dispatch, each event sent.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import time
import typing
import unittest.mock
from dataclasses import dataclass, field
from pathlib import Path

import inngest
from inngest._internal import execution_lib, middleware_lib, net, server_lib, step_lib, transforms
from inngest._internal.step_lib import step_async
from inngest._internal.step_lib.base import MemoizedError
from inngest.experimental import mocked

DEFAULT_RETRIES = 4  # Inngest's default: 4 retries, 5 attempts per step

# Which step attempt the code running in this context belongs to (None: the function body).
_current_step: contextvars.ContextVar[dict | None] = contextvars.ContextVar("lab08_step", default=None)
_invocation: contextvars.ContextVar[dict] = contextvars.ContextVar("lab08_invocation", default={})


class Trace:
    """Append-only JSON lines, one write per record (concurrent steps never interleave a line)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self.records: list[dict] = []

    def write(self, event: str, **fields: typing.Any) -> None:
        record = {"event": event, "at": time.time(), **fields}
        self.records.append(record)
        if self.path:
            line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


_trace = Trace(None)


def _attribute(step: dict | None) -> None:
    """Tell labkit.attribution (when the program runs under it) which step sends each request."""
    try:
        from labkit import attribution
    except ImportError:  # run by hand outside the course's checkout
        return
    attribution._activity.set(step)


def _observe_steps() -> None:
    """Wrap every step handler: trace its attempts and attribute its requests to it."""
    if getattr(step_async.Step.run, "_lab08", False):
        return
    original = step_async.Step.run

    async def run(self, step_id, handler, *handler_args, **kwargs):
        async def observed(*args):
            invocation = _invocation.get()
            # the attempt and run the executor (or a server) sent with this call
            request = getattr(getattr(self._execution, "_request", None), "ctx", None)
            attempt = request.attempt if request else invocation.get("attempt", 0)
            run_id = request.run_id if request else invocation.get("run_id")
            step = {"type": "inngest-step", "id": step_id, "attempt": attempt, "workflow_id": run_id, "run_id": run_id}
            token = _current_step.set(step)
            _attribute(step)
            _trace.write("step-start", step=step_id, attempt=step["attempt"], body=invocation.get("body"))
            try:
                output = await transforms.maybe_await(handler(*args))
            except BaseException as err:
                _trace.write("step-end", step=step_id, attempt=step["attempt"], outcome="failed",
                             error=f"{type(err).__name__}: {err}"[:500])
                raise
            finally:
                _current_step.reset(token)
                _attribute(None)
            _trace.write("step-end", step=step_id, attempt=step["attempt"], outcome="completed")
            return output

        return await original(self, step_id, observed, *handler_args, **kwargs)

    run._lab08 = True
    step_async.Step.run = run


def _event_record(events) -> list[dict]:
    if not isinstance(events, list):
        events = [events]
    return [{"name": getattr(e, "name", None), "data": getattr(e, "data", None)} for e in events]


def _observe_sends(forward: bool = False) -> None:
    """An event sent with the app's own client (not through a step) would reach the server once per
    call of the function body: record it here instead of failing to connect (forward=True, with a
    real server: record it and send it)."""
    if getattr(inngest.Inngest.send, "_lab08", False):
        return
    original_send, original_send_sync = inngest.Inngest.send, inngest.Inngest.send_sync

    async def send(self, events, *, skip_middleware: bool = False):
        step = _current_step.get()
        ids = _record_send(events, via="step.send_event" if skip_middleware and step else "client.send")
        return await original_send(self, events, skip_middleware=skip_middleware) if forward else ids

    def send_sync(self, events, *, skip_middleware: bool = False):
        ids = _record_send(events, via="client.send_sync")
        return original_send_sync(self, events, skip_middleware=skip_middleware) if forward else ids

    send._lab08 = True
    inngest.Inngest.send, inngest.Inngest.send_sync = send, send_sync


def observe_for_server(trace: Path | None) -> None:
    """With a real server (serve.py): the same trace and attribution, each call of the body recorded
    as the server makes it, events recorded and then sent for real. Untested here: no server offline."""
    global _trace
    _trace = Trace(trace)
    _observe_steps()
    _observe_sends(forward=True)
    if getattr(inngest.Function.call, "_lab08", False):
        return
    original_call = inngest.Function.call

    async def call(self, client, ctx, fn_id, middleware):
        _trace.write("body", n=None, target=None, attempt=ctx.attempt, run_id=ctx.run_id)
        return await original_call(self, client, ctx, fn_id, middleware)

    call._lab08 = True
    inngest.Function.call = call


def _record_send(events, via: str) -> list[str]:
    records = _event_record(events)
    step = _current_step.get()
    _trace.write("sent", via=via, step=step["id"] if step else None, events=records,
                 body=_invocation.get().get("body"))
    return [f"lab08-event-{len(_trace.records)}-{i}" for i in range(len(records))]


class RecordingClient(mocked.Inngest):
    """The client the executor hands to the function's steps: ctx.step.send_event sends through it."""

    async def send(self, events, *, skip_middleware: bool = False) -> list[str]:
        return _record_send(events, via="step.send_event")

    def send_sync(self, events, *, skip_middleware: bool = False) -> list[str]:
        return _record_send(events, via="step.send_event")


@dataclass
class RunResult:
    status: str  # "completed" | "failed"
    output: object = None
    error: str | None = None
    body_calls: int = 0
    memos: dict[str, object] = field(default_factory=dict)


class _Failed(Exception):
    pass


class Executor:
    """Drives one function run: call, memoize, call again; parallel steps at once; retries per step."""

    def __init__(self, fn: inngest.Function, *, run_id: str, trace: Path | None = None) -> None:
        global _trace
        if not fn.is_handler_async:
            raise TypeError("this executor runs async functions: `async def handler(ctx: inngest.Context)`")
        self.fn = fn
        self.run_id = run_id
        self.client = RecordingClient(app_id="lab08-executor", is_production=False)
        self.retries = DEFAULT_RETRIES if fn._opts.retries is None else fn._opts.retries
        self.memos: dict[str, object] = {}
        self.stack: list[str] = []
        self.body_calls = 0
        _trace = self.trace = Trace(trace)
        self.trace.write("function", id=fn.id, retries=self.retries)
        _observe_steps()
        _observe_sends()

    async def _call(self, event: inngest.Event, target: str | None, attempt: int,
                    target_name: str | None = None) -> execution_lib.CallResult:
        self.body_calls += 1
        body = self.body_calls
        _invocation.set({"attempt": attempt, "run_id": self.run_id, "body": body})
        self.trace.write("body", n=body, target=target_name, attempt=attempt)
        timings = net.ServerTimings()
        request = server_lib.ServerRequest(
            ctx=server_lib.ServerRequestCtx(
                attempt=attempt, disable_immediate_execution=True, max_attempts=self.retries + 1,
                run_id=self.run_id, stack=server_lib.ServerRequestCtxStack(stack=list(self.stack))),
            event=event, events=[event], steps=dict(self.memos), use_api=False)
        middleware = middleware_lib.MiddlewareManager.from_client(self.client, {}, timings)
        memos = step_lib.StepMemos.from_raw(dict(self.memos))
        ctx = execution_lib.Context(
            attempt=attempt, event=event, events=[event], group=step_lib.Group(), job_id=None,
            logger=unittest.mock.Mock(), request_id=None, run_id=self.run_id,
            step=step_lib.Step(self.client, execution_lib.ExecutionV0(memos, middleware, request, target, timings),
                               middleware, step_lib.StepIDCounter(), target))
        return await self.fn.call(self.client, ctx, self.fn.id, middleware)

    async def _run_step(self, event: inngest.Event, info: step_lib.StepInfo) -> None:
        """Every attempt of one planned step, each a call of the body that targets it."""
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            result = await self._call(event, info.id, attempt, info.display_name)
            if result.error is not None:  # the body itself failed (not the step): the run fails
                raise _Failed(f"{type(result.error).__name__}: {result.error}")
            done = next((r for r in result.multi or [] if r.step and r.step.id == info.id), None)
            if done is None:
                raise _Failed(f"the call that should run step {info.display_name!r} did not report it")
            if done.error is None:
                self.memos[info.id] = done.output
                self.stack.append(info.id)
                self.trace.write("step-done", step=info.display_name, outcome="completed", attempts=attempt + 1)
                return
            error = done.error
            if isinstance(error, (inngest.NonRetriableError,)):
                break
        self.memos[info.id] = {"error": MemoizedError.from_error(error).model_dump()}
        self.stack.append(info.id)
        self.trace.write("step-done", step=info.display_name, outcome="failed",
                         error=f"{type(error).__name__}: {error}"[:500])

    async def run(self, event: inngest.Event) -> RunResult:
        body_attempt = 0
        try:
            while True:
                result = await self._call(event, None, body_attempt)
                if result.error is not None:
                    error = result.error
                    retriable = not isinstance(error, (inngest.NonRetriableError, inngest.StepError))
                    if retriable and body_attempt < self.retries:
                        body_attempt += 1
                        continue
                    raise _Failed(f"{type(error).__name__}: {error}")
                if result.multi is None:
                    self.trace.write("completed", output=result.output, body_calls=self.body_calls)
                    return RunResult("completed", result.output, None, self.body_calls, dict(self.memos))
                planned = [r.step for r in result.multi if r.step and r.step.op is server_lib.Opcode.PLANNED]
                for r in result.multi:
                    if r.step and r.step.op is server_lib.Opcode.SLEEP:
                        self.memos[r.step.id] = None
                        self.stack.append(r.step.id)
                    elif r.step and r.step.op is not server_lib.Opcode.PLANNED:
                        raise _Failed(f"step {r.step.display_name!r} ({r.step.op.value}) needs a real server")
                if planned:
                    self.trace.write("dispatch", steps=[s.display_name for s in planned])
                    await asyncio.gather(*(self._run_step(event, s) for s in planned))
        except _Failed as failed:
            self.trace.write("failed", error=str(failed), body_calls=self.body_calls)
            return RunResult("failed", None, str(failed), self.body_calls, dict(self.memos))
