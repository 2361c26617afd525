"""The course's local "web": a search engine and a set of pages on 127.0.0.1, with faults and a ledger.

API note
--------
Run it: ``CourseWeb(state_dir, corpus_files=[...]).start()`` (tests: the ``web`` fixture of
labkit.pytest_plugin), or ``python -m labkit.web --port 8310 --ledger-dir .lab/web --corpus FILE``.

HTTP (everything also answers under ``/c/{caller}/...``, see "caller" below):

    GET  /search?q=words&n=5     {"query", "results": [{"url", "slug", "title", "snippet", "topic"}]}
                                 ranked deterministically (title, topic and text term counts; ties by slug)
    GET  /doc/{slug}             the page's text (text/plain), streamed in chunks; 404 for an unknown slug
    GET  /_health                {"ok": true, "documents": N, "ledger": path}
    GET  /_corpus                [{"slug", "title", "topic"}]
    GET  /_ledger?caller=&kind=&slug=&since=   the ledger's entries (below), oldest first
    GET  /_behaviour             the behaviours in force
    POST /_behaviour             {"slug": "...", "caller": "..."?, "slow_ms": ..., ...} sets one page's
                                 behaviour (for that caller only when "caller" is given); {"reset": true}
                                 drops every run-time behaviour (the corpus file's own stay)

Caller: who is asking, for the ledger and the per-caller fault counters. Taken from the path prefix
``/c/{caller}/`` (the URLs a search returns keep it, so code that just follows them stays
attributed), else the ``X-Lab-Caller`` header, else the ``caller`` query parameter, else "anonymous".
Give each student / test its own: ``web.url_for(caller)`` is the base URL to hand to their code.

Behaviour of a page (``Behaviour``; in the corpus file as keys of the [[documents]] entry, or at run
time). Fetch number n of a page by a caller, counted from the ledger (so it survives restarts):
    n <= fail_first      -> HTTP fail_status (503 default; 500, 429 allowed), nothing else sent
    n <= hang_first      -> 200, the first chunk, then nothing until the client disconnects
                            (hang_first = -1, or hang = true in TOML: every fetch hangs)
    otherwise            -> 200, the whole text; with slow_ms the chunks are spread over slow_ms
    hold = true          -> 200, then one byte every chunk_ms for as long as the page's behaviour (for
                            that caller) still says hold; replace it (set_behaviour without hold) and
                            every held fetch sends the rest at once. Progress that lasts until the
                            grader has seen what it waits for; a fetch that runs out of bytes while
                            held waits, sending nothing, until it is released or the client leaves
The pseudo-page ``_search`` scripts the search endpoint the same way (slow_ms delays the answer).

Ledger: SQLite (WAL, synchronous=FULL) at ``<ledger-dir>/web.sqlite``. A row is committed when a
request arrives, before anything is sent, and completed when the answer ends, so it is intact
whatever happens to the client (SIGKILL included). Columns: id, at, caller, kind (search|fetch),
slug, query, status, fault, outcome, bytes, finished_at, results. outcome: "complete" (every
byte sent), "disconnected" (the client went away first), "failed" (an injected error), "hung"
(while a hang lasts; then "disconnected"), "started" (still being sent). Read it from Python with
``WebLedger(dir).entries(...)`` / ``.fetch_counts(caller)`` or ``CourseWeb.ledger()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sqlite3
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import proc

HOST = "127.0.0.1"
DEFAULT_CORPUS = Path(__file__).resolve().parent / "corpus" / "research.toml"
CALLER_HEADER = "X-Lab-Caller"
SEARCH = "_search"  # the pseudo-slug whose behaviour scripts /search
MAX_HANG_S = 600.0  # a hang with a client that never leaves still ends, eventually


# --- corpus and behaviours ----------------------------------------------------------------------

class Behaviour(BaseModel):
    """How one page (or the search endpoint) answers. All zero: at once, every time."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key fails loudly

    slow_ms: int = Field(0, ge=0, description="spread the body's chunks over this many ms")
    hang_first: int = Field(0, ge=-1, description="the first N fetches per caller hang (-1: all)")
    fail_first: int = Field(0, ge=0, description="the first N fetches per caller fail")
    fail_status: Literal[429, 500, 503] = 503
    chunk_ms: int = Field(100, ge=10, description="about one chunk every chunk_ms while slow or held")
    hold: bool = Field(False, description="trickle a byte per chunk_ms until the behaviour is replaced")

    def hangs(self, n: int) -> bool:
        return self.hang_first == -1 or n <= self.hang_first


@dataclass(frozen=True)
class Document:
    slug: str
    title: str
    topic: str
    text: str


BEHAVIOUR_KEYS = set(Behaviour.model_fields) | {"hang"}


def load_corpus(paths: list[Path]) -> tuple[dict[str, Document], dict[str, Behaviour]]:
    """Documents and their file-given behaviours; a later file's slug replaces an earlier one's."""
    docs: dict[str, Document] = {}
    behaviours: dict[str, Behaviour] = {}
    for path in paths:
        data = tomllib.loads(Path(path).read_text())
        for raw in data.get("documents", []):
            raw = dict(raw)
            extra = {k: raw.pop(k) for k in list(raw) if k in BEHAVIOUR_KEYS}
            unknown = set(raw) - {"slug", "title", "topic", "text"}
            if unknown:
                raise ValueError(f"{path}: document {raw.get('slug')!r} has unknown keys {sorted(unknown)}")
            doc = Document(slug=raw["slug"], title=raw["title"], topic=raw.get("topic", ""),
                           text=raw["text"].strip() + "\n")
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", doc.slug):
                raise ValueError(f"{path}: slug {doc.slug!r} must be lower-case letters, digits, . _ -")
            docs[doc.slug] = doc
            if extra.pop("hang", False):
                extra["hang_first"] = -1
            if extra:
                behaviours[doc.slug] = Behaviour.model_validate(extra)
            else:
                behaviours.pop(doc.slug, None)
    return docs, behaviours


WORD = re.compile(r"[a-z0-9]+")
STOP = {"a", "an", "and", "the", "of", "for", "to", "in", "on", "is", "how", "what", "why", "with"}


def terms(text: str) -> list[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOP]


def rank(docs: dict[str, Document], query: str, n: int) -> list[Document]:
    """Deterministic: score = 3 x title hits + 2 x topic hits + text hits; ties by slug."""
    wanted = terms(query)
    scored = []
    for doc in docs.values():
        title, topic, text = terms(doc.title), terms(doc.topic), terms(doc.text)
        score = sum(3 * title.count(t) + 2 * topic.count(t) + text.count(t) for t in wanted)
        if score > 0:
            scored.append((-score, doc.slug, doc))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [doc for _, _, doc in scored[:max(0, n)]]


def snippet(doc: Document, query: str, width: int = 160) -> str:
    text = " ".join(doc.text.split())
    lowered = text.lower()
    hits = [lowered.find(t) for t in terms(query) if lowered.find(t) >= 0]
    start = max(0, min(hits) - 40) if hits else 0
    cut = text[start:start + width]
    return ("..." if start else "") + cut + ("..." if start + width < len(text) else "")


# --- the ledger ---------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL    NOT NULL,
    caller      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    slug        TEXT,
    query       TEXT,
    status      INTEGER NOT NULL,
    fault       TEXT,
    outcome     TEXT    NOT NULL,
    bytes       INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    results     TEXT,
    origin      TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_caller ON requests (caller, kind, slug);
"""


@dataclass(frozen=True)
class WebEntry:
    id: int
    at: float
    caller: str
    kind: str  # search | fetch
    slug: str | None
    query: str | None
    status: int
    fault: str | None
    outcome: str  # complete | disconnected | failed | hung | started
    bytes: int
    finished_at: float | None
    results: list[str] = field(default_factory=list)  # a search's slugs, in rank order
    origin: dict[str, Any] | None = None  # the code that sent it (labkit.attribution), None if unknown

    @property
    def activity_type(self) -> str | None:
        return ((self.origin or {}).get("activity") or {}).get("type")

    @property
    def complete(self) -> bool:
        return self.outcome == "complete"


class WebLedger:
    """Every search and fetch the course web received. Safe to read while the server writes (WAL)."""

    FILENAME = "web.sqlite"

    def __init__(self, directory: Path | str):
        self.path = Path(directory) / self.FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            if "origin" not in {row[1] for row in db.execute("PRAGMA table_info(requests)")}:
                db.execute("ALTER TABLE requests ADD COLUMN origin TEXT")  # a ledger from an older course

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def begin(self, *, caller: str, kind: str, slug: str | None = None, query: str | None = None,
              status: int = 200, fault: str | None = None, outcome: str = "started",
              results: list[str] | None = None, origin: dict[str, Any] | None = None) -> tuple[int, int]:
        """Record a request; returns (row id, this request's number for the caller and page, from 1).

        The count and the insert are one transaction: two requests at once get different numbers.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            (seen,) = db.execute(
                "SELECT COUNT(*) FROM requests WHERE caller = ? AND kind = ? AND slug IS ?",
                (caller, kind, slug)).fetchone()
            cursor = db.execute(
                "INSERT INTO requests (at, caller, kind, slug, query, status, fault, outcome, results, origin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), caller, kind, slug, query, status, fault, outcome,
                 json.dumps(results) if results is not None else None,
                 json.dumps(origin) if origin is not None else None))
            db.execute("COMMIT")
            return int(cursor.lastrowid), int(seen) + 1

    UPDATABLE = ("status", "fault", "outcome", "bytes", "finished_at", "results")

    def update(self, row: int, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.UPDATABLE))
        if unknown:
            raise ValueError(f"the web ledger does not update {unknown}")
        if "results" in values:
            values["results"] = json.dumps(values["results"])
        # One fixed statement (no SQL built from names): a column not given keeps its value.
        params = [part for column in self.UPDATABLE for part in (column in values, values.get(column))]
        with self._connect() as db:
            db.execute("UPDATE requests SET status = CASE WHEN ? THEN ? ELSE status END, "
                       "fault = CASE WHEN ? THEN ? ELSE fault END, outcome = CASE WHEN ? THEN ? ELSE outcome END, "
                       "bytes = CASE WHEN ? THEN ? ELSE bytes END, "
                       "finished_at = CASE WHEN ? THEN ? ELSE finished_at END, "
                       "results = CASE WHEN ? THEN ? ELSE results END WHERE id = ?", (*params, row))

    def entries(self, caller: str | None = None, kind: str | None = None, slug: str | None = None,
                since_id: int = 0) -> list[WebEntry]:
        # One fixed statement: a filter given as None matches every row.
        with self._connect() as db:
            rows = db.execute("SELECT id, at, caller, kind, slug, query, status, fault, outcome, bytes, "
                              "finished_at, results, origin FROM requests WHERE id > ? AND (? IS NULL OR caller = ?) "
                              "AND (? IS NULL OR kind = ?) AND (? IS NULL OR slug = ?) ORDER BY id",
                              (since_id, caller, caller, kind, kind, slug, slug)).fetchall()
        return [WebEntry(id=r[0], at=r[1], caller=r[2], kind=r[3], slug=r[4], query=r[5], status=r[6],
                         fault=r[7], outcome=r[8], bytes=r[9], finished_at=r[10],
                         results=json.loads(r[11]) if r[11] else [], origin=json.loads(r[12]) if r[12] else None)
                for r in rows]

    def fetches(self, caller: str | None = None, slug: str | None = None) -> list[WebEntry]:
        return self.entries(caller=caller, kind="fetch", slug=slug)

    def fetch_counts(self, caller: str | None = None) -> dict[str, int]:
        """{slug: how many times it was fetched}, failed and interrupted fetches included."""
        counts: dict[str, int] = {}
        for entry in self.fetches(caller):
            counts[entry.slug] = counts.get(entry.slug, 0) + 1
        return counts


# --- the HTTP app -------------------------------------------------------------------------------

class Behaviours:
    """Behaviours in force: run-time ones (per caller, then for everyone) over the corpus file's."""

    def __init__(self, from_files: dict[str, Behaviour]):
        self.from_files = dict(from_files)
        self.runtime: dict[tuple[str | None, str], Behaviour] = {}

    def of(self, slug: str, caller: str) -> Behaviour:
        return (self.runtime.get((caller, slug)) or self.runtime.get((None, slug))
                or self.from_files.get(slug) or Behaviour())

    def as_json(self) -> dict[str, Any]:
        return {"files": {slug: b.model_dump() for slug, b in self.from_files.items()},
                "runtime": [{"caller": caller, "slug": slug, **b.model_dump()}
                            for (caller, slug), b in self.runtime.items()]}


def chunks_of(body: bytes, behaviour: Behaviour) -> tuple[list[bytes], float]:
    """The body in pieces and the pause between them: about one piece per chunk_ms while slow."""
    pieces = max(2, math.ceil(behaviour.slow_ms / behaviour.chunk_ms)) if behaviour.slow_ms else 2
    pieces = min(pieces, max(1, len(body)))
    size = math.ceil(len(body) / pieces)
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    pause = behaviour.slow_ms / 1000 / max(1, len(parts) - 1) if behaviour.slow_ms and len(parts) > 1 else 0.0
    return parts, pause


class DocStream:
    """An ASGI response that sends chunks (or hangs) and always notices the client leaving.

    It listens for http.disconnect itself rather than relying on Starlette's version-dependent
    StreamingResponse, and writes the outcome to the ledger row when it ends, however it ends.
    """

    def __init__(self, ledger: WebLedger, row: int, parts: list[bytes], pause: float, hang: bool,
                 held: Callable[[], bool] | None = None, hold_pause: float = 0.1):
        self.ledger, self.row, self.parts, self.pause, self.hang = ledger, row, parts, pause, hang
        self.held, self.hold_pause = held, hold_pause  # held(): is the page still held?

    async def __call__(self, scope, receive, send) -> None:
        sent = 0
        outcome = "disconnected"

        async def stream() -> None:
            nonlocal sent, outcome
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"cache-control", b"no-store")]})
            parts = self.parts
            if self.held is not None and self.held():
                body, at = b"".join(parts), 0
                while self.held():
                    if at < len(body) - 1:  # keep the last byte until the release
                        await send({"type": "http.response.body", "body": body[at:at + 1], "more_body": True})
                        at += 1
                        sent += 1
                    await asyncio.sleep(self.hold_pause)
                parts = [body[at:]]
            for i, part in enumerate(parts):
                if i and self.pause:
                    await asyncio.sleep(self.pause)
                await send({"type": "http.response.body", "body": part, "more_body": True})
                sent += len(part)
                if self.hang:
                    self.ledger.update(self.row, outcome="hung", bytes=sent)
                    await asyncio.sleep(MAX_HANG_S)
                    return  # the client never left: end the response without the rest
            # Every byte is out: record it before the final (empty) message ends the response, so
            # a client that has the whole page always finds "complete" in the ledger.
            outcome = "complete"
            self.ledger.update(self.row, outcome=outcome, bytes=sent, finished_at=time.time())
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        sender, watcher = asyncio.ensure_future(stream()), asyncio.ensure_future(watch())
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            if outcome != "complete":
                self.ledger.update(self.row, outcome=outcome, bytes=sent, finished_at=time.time())


def create_app(ledger_dir: Path, corpus_files: list[Path]):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    docs, from_files = load_corpus(corpus_files)
    ledger = WebLedger(ledger_dir)
    behaviours = Behaviours(from_files)

    def caller_of(request: Request) -> tuple[str, str]:
        """(caller, how the URLs given back should carry it: a path prefix or a query string)."""
        prefix = request.path_params.get("caller")
        if prefix:
            return prefix, f"/c/{quote(prefix, safe='')}"
        header = request.headers.get(CALLER_HEADER)
        if header:
            return header, ""
        param = request.query_params.get("caller")
        if param:
            return param, "?caller"
        return "anonymous", ""

    def doc_url(request: Request, slug: str, caller: str, carry: str) -> str:
        base = f"{request.url.scheme}://{request.url.netloc}"
        if carry == "?caller":
            return f"{base}/doc/{slug}?caller={quote(caller, safe='')}"
        return f"{base}{carry}/doc/{slug}"

    async def injected(behaviour: Behaviour, n: int, row: int) -> PlainTextResponse | None:
        if n <= behaviour.fail_first:
            fault = f"fail_first {n}/{behaviour.fail_first}"
            ledger.update(row, status=behaviour.fail_status, fault=fault, outcome="failed",
                          finished_at=time.time())
            return PlainTextResponse(f"injected fault ({fault})\n", status_code=behaviour.fail_status)
        return None

    def origin_of(request: Request) -> dict[str, Any] | None:
        from . import attribution

        return attribution.parse(request.headers.get(attribution.HEADER))

    async def search(request: Request):
        caller, carry = caller_of(request)
        query = request.query_params.get("q", "")
        try:
            n = int(request.query_params.get("n", "5"))
        except ValueError:
            return JSONResponse({"error": "n must be an integer"}, status_code=400)
        found = rank(docs, query, n)
        row, number = ledger.begin(caller=caller, kind="search", slug=SEARCH, query=query,
                                   results=[d.slug for d in found], origin=origin_of(request))
        behaviour = behaviours.of(SEARCH, caller)
        failed = await injected(behaviour, number, row)
        if failed is not None:
            return failed
        if behaviour.hangs(number):
            return DocStream(ledger, row, [b""], 0.0, hang=True)
        if behaviour.slow_ms:
            await asyncio.sleep(behaviour.slow_ms / 1000)
        results = [{"url": doc_url(request, d.slug, caller, carry), "slug": d.slug, "title": d.title,
                    "snippet": snippet(d, query), "topic": d.topic} for d in found]
        ledger.update(row, outcome="complete", finished_at=time.time())
        return JSONResponse({"query": query, "results": results})

    async def document(request: Request):
        caller, _ = caller_of(request)
        slug = request.path_params["slug"]
        doc = docs.get(slug)
        if doc is None:
            ledger.begin(caller=caller, kind="fetch", slug=slug, status=404, outcome="failed",
                         origin=origin_of(request))
            return PlainTextResponse(f"no page {slug!r}\n", status_code=404)
        row, number = ledger.begin(caller=caller, kind="fetch", slug=slug, origin=origin_of(request))
        behaviour = behaviours.of(slug, caller)
        failed = await injected(behaviour, number, row)
        if failed is not None:
            return failed
        parts, pause = chunks_of(doc.text.encode(), behaviour)
        held = (lambda: behaviours.of(slug, caller).hold) if behaviour.hold else None
        return DocStream(ledger, row, parts, pause, hang=behaviour.hangs(number), held=held,
                         hold_pause=behaviour.chunk_ms / 1000)

    async def health(request: Request):
        return JSONResponse({"ok": True, "documents": len(docs), "ledger": str(ledger.path)})

    async def corpus(request: Request):
        return JSONResponse([{"slug": d.slug, "title": d.title, "topic": d.topic} for d in docs.values()])

    async def read_ledger(request: Request):
        params = request.query_params
        entries = ledger.entries(caller=params.get("caller"), kind=params.get("kind"),
                                 slug=params.get("slug"), since_id=int(params.get("since", "0")))
        return JSONResponse([asdict(e) for e in entries])

    async def get_behaviour(request: Request):
        return JSONResponse(behaviours.as_json())

    async def set_behaviour(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "send a JSON object"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "send a JSON object"}, status_code=400)
        if body.get("reset"):
            behaviours.runtime.clear()
            return JSONResponse(behaviours.as_json())
        body = dict(body)
        slug = body.pop("slug", None)
        caller = body.pop("caller", None)
        if slug != SEARCH and slug not in docs:
            return JSONResponse({"error": f"no page {slug!r}; known: {sorted(docs)} or {SEARCH!r}"},
                                status_code=404)
        if body.pop("hang", False):
            body["hang_first"] = -1
        try:
            behaviours.runtime[(caller, slug)] = Behaviour.model_validate(body)
        except ValidationError as exc:
            return JSONResponse({"error": f"invalid behaviour: {exc}"}, status_code=422)
        return JSONResponse(behaviours.as_json())

    routes = []
    for prefix in ("", "/c/{caller}"):
        routes += [Route(prefix + "/search", search), Route(prefix + "/doc/{slug}", document)]
    routes += [Route("/_health", health), Route("/_corpus", corpus), Route("/_ledger", read_ledger),
               Route("/_behaviour", get_behaviour, methods=["GET"]),
               Route("/_behaviour", set_behaviour, methods=["POST"])]
    app = Starlette(routes=routes)
    app.state.ledger = ledger
    app.state.behaviours = behaviours
    return app


# --- running it ---------------------------------------------------------------------------------

class WebError(RuntimeError):
    """The course web did not start, or refused a request; the message says why."""


def _free_port() -> int:
    from .services import free_port

    return free_port()


@dataclass
class CourseWeb:
    """The course web as a separate process (like labkit.services.CourseLLM)."""

    state_dir: Path
    corpus_files: list[Path] = field(default_factory=lambda: [DEFAULT_CORPUS])
    port: int = field(default_factory=_free_port)
    detached: bool = False
    process: proc.ManagedProcess | None = None
    ready: bool = False

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url_for(self, caller: str) -> str:
        """The base URL to give one caller's code: every search and fetch through it is theirs."""
        return f"{self.base_url}/c/{quote(caller, safe='')}"

    @property
    def ledger_dir(self) -> Path:
        return Path(self.state_dir) / "web"

    def ledger(self) -> WebLedger:
        return WebLedger(self.ledger_dir)

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "labkit.web", "--host", HOST, "--port", str(self.port),
                "--ledger-dir", str(self.ledger_dir)]
        for corpus in self.corpus_files:
            argv += ["--corpus", str(corpus)]
        return argv

    def start(self, timeout: float = proc.START_HANG_S) -> CourseWeb:
        return self.launch().wait_ready(timeout)

    def launch(self) -> CourseWeb:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        kit_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [kit_root, os.environ.get("PYTHONPATH")]))}
        self.process = proc.start(self.argv(), name="course-web", log_path=Path(self.state_dir) / "web.log",
                                  env=env, detached=self.detached)
        return self

    def wait_ready(self, timeout: float = proc.START_HANG_S) -> CourseWeb:
        if self.ready:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive:
                output = self.process.output()[-2000:]
                self.process.stop()
                raise WebError(f"the course web exited at start:\n{output}")
            try:
                if httpx.get(f"{self.base_url}/_health", timeout=0.5).status_code == 200:
                    self.ready = True
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise WebError(f"the course web did not answer on port {self.port} within {timeout:.0f} s")

    def set_behaviour(self, slug: str, caller: str | None = None, **behaviour: Any) -> None:
        """Script one page (or SEARCH): slow_ms=, hang_first=, hang=True, fail_first=, fail_status=,
        hold=True (release it by setting the page's behaviour again without hold)."""
        self.wait_ready()
        response = httpx.post(f"{self.base_url}/_behaviour",
                              json={"slug": slug, "caller": caller, **behaviour}, timeout=5)
        if response.status_code != 200:
            raise WebError(f"the course web refused the behaviour ({response.status_code}): {response.text}")

    def reset_behaviours(self) -> None:
        self.wait_ready()
        httpx.post(f"{self.base_url}/_behaviour", json={"reset": True}, timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.ready = False


# Idle keep-alive connections stay open far longer than any gap between a slow client's requests:
# uvicorn's 5 s default races a process that reuses its connection (Lab 04's websearch client) and
# ends in "Server disconnected without sending a response" on a slow machine.
KEEP_ALIVE_S = 600


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.web",
                                     description="Serve the course web (search, pages, faults, ledger).")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=8310)
    parser.add_argument("--ledger-dir", type=Path, default=Path(".lab/web"))
    parser.add_argument("--corpus", type=Path, action="append", default=[],
                        help=f"TOML corpus file; repeat to add more (default: {DEFAULT_CORPUS.name})")
    args = parser.parse_args()
    import uvicorn

    app = create_app(args.ledger_dir, args.corpus or [DEFAULT_CORPUS])
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=1,  # a client still held by a hang must not block the stop
                timeout_keep_alive=KEEP_ALIVE_S)


if __name__ == "__main__":
    main()
