"""The notification sink: a stand-in for a chat service, with a durable record of every delivery.

    python -m labkit.sink --port 8320 --state-dir .lab/sink

`POST /api/messages` with JSON ``{"channel": "#sales", "text": "..."}`` delivers a message, and
answers ``{"ok": true, "id": N, "channel": ..., "ts": ...}``. Like the real services it stands in
for (Stripe, Slack's client_msg_id, most payment and messaging APIs) it honours an
``Idempotency-Key`` header: a second request with a key it has seen (for the same caller) is not
delivered again; it gets the first delivery's answer, with ``Idempotent-Replayed: true``. A request
without a key is always delivered. The caller is the bearer token (``Authorization: Bearer lab-...``),
so two students or two checks never share keys or counts.

Every request is an *attempt*; a delivered message is a *delivery*. Both are committed to SQLite
(WAL, synchronous=FULL) before the answer is sent, so the record survives a caller that is
SIGKILLed mid-request, and the grader reads it from outside (`SinkStore`, ``GET /_deliveries``).

A *hold* (``POST /_hold``) makes the sink record a matching delivery and then hold back its answer
until it is released (``POST /_release``), a delay passes, or the caller hangs up. That is the
window a check needs: the side effect has happened, and the caller has not heard about it yet.
A hold given ``kill_pid`` also SIGKILLs that process (and its process group) the moment it has
recorded the delivery: the crash lands inside the window, with no race between a check noticing
the delivery and the caller's own timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from . import attribution, proc

HOST = "127.0.0.1"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
COURSE_TOKEN_PREFIX = "lab-"
DEFAULT_HOLD_S = 60.0  # a hold nobody releases ends by itself: nothing waits forever

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL    NOT NULL,
    caller    TEXT    NOT NULL,
    channel   TEXT    NOT NULL,
    text      TEXT    NOT NULL,
    key       TEXT,
    response  TEXT    NOT NULL,
    UNIQUE (caller, key)
);
CREATE TABLE IF NOT EXISTS attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           REAL    NOT NULL,
    caller       TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    key          TEXT,
    outcome      TEXT    NOT NULL,   -- delivered | duplicate | refused
    delivery_id  INTEGER,
    held         INTEGER NOT NULL DEFAULT 0,
    answered_at  REAL,               -- when the answer was sent (NULL: not yet, or never)
    caller_gone  INTEGER NOT NULL DEFAULT 0,  -- the caller hung up before the answer
    origin       TEXT                -- the code that sent it (labkit.attribution), JSON
);
CREATE INDEX IF NOT EXISTS attempts_by_caller ON attempts (caller);
"""


def caller_of(token: str | None) -> str:
    """Course tokens (lab-...) are recorded as they are; any other token only as a fingerprint."""
    if not token:
        return "anonymous"
    if token.startswith(COURSE_TOKEN_PREFIX):
        return token
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Delivery:
    id: int
    at: float
    caller: str
    channel: str
    text: str
    key: str | None
    response: dict[str, Any]


@dataclass(frozen=True)
class Attempt:
    id: int
    at: float
    caller: str
    channel: str
    text: str
    key: str | None
    outcome: str
    delivery_id: int | None
    held: bool
    answered_at: float | None
    caller_gone: bool
    origin: dict[str, Any] | None = None  # the code that sent it (labkit.attribution), None if unknown

    @property
    def activity_type(self) -> str | None:
        return ((self.origin or {}).get("activity") or {}).get("type")


class SinkStore:
    """The sink's SQLite file: written by the server, read by graders. Safe to read while it writes."""

    FILENAME = "sink.sqlite"

    def __init__(self, directory: Path | str):
        self.path = Path(directory) / self.FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            if "origin" not in {row[1] for row in db.execute("PRAGMA table_info(attempts)")}:
                db.execute("ALTER TABLE attempts ADD COLUMN origin TEXT")  # a record from an older course

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def deliver(self, *, caller: str, channel: str, text: str, key: str | None,
                origin: dict[str, Any] | None = None) -> tuple[Attempt, dict, bool]:
        """Record an attempt; deliver unless its key was seen. (attempt, answer, replayed)."""
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the lookup and the insert are one step
            try:
                existing = None
                if key is not None:
                    existing = db.execute("SELECT id, response FROM deliveries WHERE caller = ? AND key = ?",
                                          (caller, key)).fetchone()
                if existing is not None:
                    delivery_id, answer, replayed = existing[0], json.loads(existing[1]), True
                    outcome = "duplicate"
                else:
                    cursor = db.execute(
                        "INSERT INTO deliveries (at, caller, channel, text, key, response) VALUES (?, ?, ?, ?, ?, '')",
                        (now, caller, channel, text, key))
                    delivery_id = int(cursor.lastrowid)
                    answer = {"ok": True, "id": delivery_id, "channel": channel, "ts": f"{now:.6f}"}
                    db.execute("UPDATE deliveries SET response = ? WHERE id = ?", (json.dumps(answer), delivery_id))
                    replayed, outcome = False, "delivered"
                cursor = db.execute(
                    "INSERT INTO attempts (at, caller, channel, text, key, outcome, delivery_id, origin) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (now, caller, channel, text, key, outcome, delivery_id,
                                                        json.dumps(origin) if origin is not None else None))
                attempt_id = int(cursor.lastrowid)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.attempt(attempt_id), answer, replayed

    def refuse(self, *, caller: str, channel: str, text: str, key: str | None,
               origin: dict[str, Any] | None = None) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO attempts (at, caller, channel, text, key, outcome, answered_at, origin) "
                       "VALUES (?, ?, ?, ?, ?, 'refused', ?, ?)", (time.time(), caller, channel, text, key, time.time(),
                                                                   json.dumps(origin) if origin is not None else None))

    def mark(self, attempt_id: int, *, held: bool | None = None, answered: bool = False,
             caller_gone: bool = False) -> None:
        with self._connect() as db:
            if held is not None:
                db.execute("UPDATE attempts SET held = ? WHERE id = ?", (int(held), attempt_id))
            if answered:
                db.execute("UPDATE attempts SET answered_at = ? WHERE id = ?", (time.time(), attempt_id))
            if caller_gone:
                db.execute("UPDATE attempts SET caller_gone = 1 WHERE id = ?", (attempt_id,))

    def attempt(self, attempt_id: int) -> Attempt:
        (found,) = self.attempts(attempt_id=attempt_id)
        return found

    def attempts(self, caller: str | None = None, since_id: int = 0, *,
                 attempt_id: int | None = None) -> list[Attempt]:
        # One fixed statement: a filter given as None matches every row (no SQL built from values).
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, at, caller, channel, text, key, outcome, delivery_id, held, answered_at, caller_gone, origin "
                "FROM attempts WHERE id > ? AND (? IS NULL OR caller = ?) AND (? IS NULL OR id = ?) ORDER BY id",
                (since_id, caller, caller, attempt_id, attempt_id)).fetchall()
        return [Attempt(id=r[0], at=r[1], caller=r[2], channel=r[3], text=r[4], key=r[5], outcome=r[6],
                        delivery_id=r[7], held=bool(r[8]), answered_at=r[9], caller_gone=bool(r[10]),
                        origin=json.loads(r[11]) if r[11] else None)
                for r in rows]

    def deliveries(self, caller: str | None = None, since_id: int = 0) -> list[Delivery]:
        query = "SELECT id, at, caller, channel, text, key, response FROM deliveries WHERE id > ?"
        params: list[Any] = [since_id]
        if caller is not None:
            query += " AND caller = ?"
            params.append(caller)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return [Delivery(id=r[0], at=r[1], caller=r[2], channel=r[3], text=r[4], key=r[5],
                         response=json.loads(r[6]) if r[6] else {}) for r in rows]


# --- the server ----------------------------------------------------------------------------------

@dataclass
class Hold:
    """Hold back the answer to the next `times` matching deliveries (recorded first, answered later)."""

    id: int
    caller: str | None = None  # None: any caller
    channel: str | None = None  # None: any channel
    match: str | None = None  # regex searched in the message text
    times: int = 1
    release_after_s: float = DEFAULT_HOLD_S
    kill_pid: int | None = None  # SIGKILL this process (and its group) once the delivery is recorded
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, caller: str, channel: str, text: str) -> bool:
        return (self.times > 0 and (self.caller is None or self.caller == caller)
                and (self.channel is None or self.channel == channel)
                and (self.match is None or re.search(self.match, text, re.S) is not None))


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"ok": False, "error": message})


def create_app(state_dir: Path) -> FastAPI:
    app = FastAPI(title="notification sink", docs_url=None, redoc_url=None)
    store = SinkStore(state_dir)
    holds: list[Hold] = []

    @app.get("/_health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "store": str(store.path)}

    @app.get("/_deliveries")
    async def read_deliveries(caller: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        return [asdict(d) for d in store.deliveries(caller=caller, since_id=since)]

    @app.get("/_attempts")
    async def read_attempts(caller: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        return [asdict(a) for a in store.attempts(caller=caller, since_id=since)]

    @app.post("/_hold")
    async def add_hold(body: dict[str, Any]) -> dict[str, Any]:
        unknown = set(body) - {"caller", "channel", "match", "times", "release_after_s", "kill_pid"}
        if unknown:
            return error(422, f"unknown hold field(s): {', '.join(sorted(unknown))}")
        hold = Hold(id=len(holds) + 1, caller=body.get("caller"), channel=body.get("channel"), match=body.get("match"),
                    times=int(body.get("times", 1)), release_after_s=float(body.get("release_after_s", DEFAULT_HOLD_S)),
                    kill_pid=int(body["kill_pid"]) if body.get("kill_pid") else None)
        holds.append(hold)
        return {"hold": hold.id}

    @app.post("/_release")
    async def release(body: dict[str, Any] | None = None) -> dict[str, Any]:
        chosen = (body or {}).get("hold")
        released = []
        for hold in holds:
            if chosen is None or hold.id == chosen:
                hold.times = 0
                hold.released.set()
                released.append(hold.id)
        return {"released": released}

    @app.post("/api/messages")
    async def post_message(request: Request, authorization: str | None = Header(None),
                           idempotency_key: str | None = Header(None, alias=IDEMPOTENCY_HEADER)):
        caller = caller_of((authorization or "").removeprefix("Bearer ").strip() or None)
        try:
            body = await request.json()
        except ValueError:
            body = None
        channel = body.get("channel") if isinstance(body, dict) else None
        text = body.get("text") if isinstance(body, dict) else None
        key = idempotency_key.strip() if idempotency_key and idempotency_key.strip() else None
        origin = attribution.parse(request.headers.get(attribution.HEADER))
        if not isinstance(channel, str) or not channel or not isinstance(text, str):
            store.refuse(caller=caller, channel=str(channel or ""), text=str(text or ""), key=key, origin=origin)
            return error(400, 'send JSON {"channel": "#name", "text": "the message"}')
        attempt, answer, replayed = store.deliver(caller=caller, channel=channel, text=text, key=key, origin=origin)
        if not replayed:
            hold = next((h for h in holds if h.matches(caller, channel, text)), None)
            if hold is not None:
                hold.times -= 1
                store.mark(attempt.id, held=True)
                if hold.kill_pid:
                    kill_now(hold.kill_pid)
                if await held_until_released(request, hold):
                    store.mark(attempt.id, caller_gone=True)
                    return JSONResponse(answer)  # nobody is listening any more
        store.mark(attempt.id, answered=True)
        headers = {REPLAYED_HEADER: "true"} if replayed else {}
        return JSONResponse(answer, headers=headers)

    return app


def kill_now(pid: int) -> None:
    """SIGKILL a process and its process group (a worker forked into a group of its own)."""
    for send in (os.kill, os.killpg):
        try:
            send(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


async def held_until_released(request: Request, hold: Hold) -> bool:
    """Wait for the release or the delay; True when the caller hung up meanwhile."""
    deadline = time.monotonic() + hold.release_after_s
    while time.monotonic() < deadline and not hold.released.is_set():
        try:
            await asyncio.wait_for(hold.released.wait(), timeout=0.05)
        except asyncio.TimeoutError:
            pass
        if await request.is_disconnected():
            return True
    return await request.is_disconnected()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m labkit.sink", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=8320)
    parser.add_argument("--state-dir", type=Path, default=Path(".lab/sink"))
    args = parser.parse_args()
    uvicorn.run(create_app(args.state_dir), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=600)  # far above any gap between a slow client's requests (default 5 s)


# --- the service, for checks and notebooks -------------------------------------------------------

@dataclass
class NotificationSink:
    """The sink as a process of its own on 127.0.0.1, like the course LLM."""

    state_dir: Path
    port: int = 0
    detached: bool = False
    process: proc.ManagedProcess | None = None
    ready: bool = False

    def __post_init__(self) -> None:
        if not self.port:
            from .services import free_port

            self.port = free_port()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/api/messages"

    @property
    def store_dir(self) -> Path:
        return Path(self.state_dir).resolve() / "sink"

    def store(self) -> SinkStore:
        return SinkStore(self.store_dir)

    def start(self, timeout: float = proc.START_HANG_S) -> NotificationSink:
        return self.launch().wait_ready(timeout)

    def launch(self) -> NotificationSink:
        argv = [sys.executable, "-m", "labkit.sink", "--host", HOST, "--port", str(self.port),
                "--state-dir", str(self.store_dir)]
        kit_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [kit_root, os.environ.get("PYTHONPATH")]))}
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        self.process = proc.start(argv, name="notification-sink", log_path=Path(self.state_dir) / "sink.log",
                                  env=env, detached=self.detached)
        return self

    def wait_ready(self, timeout: float = proc.START_HANG_S) -> NotificationSink:
        from .services import ServiceError

        if self.ready:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive:
                output = self.process.output()[-2000:]
                self.process.stop()
                raise ServiceError(f"the notification sink exited at start:\n{output}")
            try:
                health = httpx.get(f"{self.base_url}/_health", timeout=0.5)
                # Ours, not another sink that already holds the port.
                if health.status_code == 200 and health.json().get("store") == str(self.store_dir / SinkStore.FILENAME):
                    self.ready = True
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"the notification sink did not answer on port {self.port} within {timeout:.0f} s")

    def hold(self, *, caller: str | None = None, channel: str | None = None, match: str | None = None,
             times: int = 1, release_after_s: float = DEFAULT_HOLD_S, kill_pid: int | None = None) -> int:
        """Hold back the answer to the next `times` matching deliveries; the hold's id. `kill_pid`:
        SIGKILL that process (and its group) as soon as a held delivery is recorded."""
        body: dict[str, Any] = {"times": times, "release_after_s": release_after_s}
        for name, value in (("caller", caller), ("channel", channel), ("match", match), ("kill_pid", kill_pid)):
            if value is not None:
                body[name] = value
        response = httpx.post(f"{self.wait_ready().base_url}/_hold", json=body, timeout=5)
        response.raise_for_status()
        return int(response.json()["hold"])

    def release(self, hold: int | None = None) -> None:
        httpx.post(f"{self.base_url}/_release", json={} if hold is None else {"hold": hold},
                   timeout=5).raise_for_status()

    def deliveries(self, caller: str | None = None, since_id: int = 0) -> list[Delivery]:
        return self.store().deliveries(caller=caller, since_id=since_id)

    def attempts(self, caller: str | None = None, since_id: int = 0) -> list[Attempt]:
        return self.store().attempts(caller=caller, since_id=since_id)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


if __name__ == "__main__":
    main()
