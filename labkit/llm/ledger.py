"""The ledger: every request the course LLM received, in SQLite, owned by the grader.

Each request is committed before its response is sent, so the ledger is
complete even when the calling process is SIGKILLed right after the call.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL    NOT NULL,
    caller    TEXT    NOT NULL,
    endpoint  TEXT    NOT NULL,
    model     TEXT    NOT NULL,
    prompt    TEXT    NOT NULL,
    request   TEXT    NOT NULL,
    rule      TEXT    NOT NULL,
    status    INTEGER NOT NULL,
    fault     TEXT,
    reply     TEXT,
    turn      INTEGER,
    origin    TEXT,
    usage     TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_caller ON requests (caller, rule);
"""

COURSE_KEY_PREFIX = "lab-"


def caller_of(api_key: str | None) -> str:
    """Course keys (lab-...) are recorded as they are; any other key only as a fingerprint."""
    if not api_key:
        return "anonymous"
    if api_key.startswith(COURSE_KEY_PREFIX):
        return api_key
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    at: float
    caller: str
    endpoint: str
    model: str
    prompt: str
    request: dict[str, Any]
    rule: str
    status: int
    fault: str | None
    reply: str | None
    turn: int | None = None  # which turn of the rule's script answered (0 for a one-turn rule)
    # where the request came from (labkit.attribution): {"pid", "program", "activity", "node"}, or
    # None when it carried no X-Lab-Origin header (a program not started by a check)
    origin: dict[str, Any] | None = None
    usage: dict[str, int] | None = None  # what the answer billed: prompt/completion/total/reasoning tokens

    @property
    def activity_type(self) -> str | None:
        """The Temporal activity whose attempt sent the request, if any."""
        return ((self.origin or {}).get("activity") or {}).get("type")

    @property
    def node(self) -> str | None:
        """The LangGraph node that sent the request, if any."""
        return (self.origin or {}).get("node")

    @property
    def ok(self) -> bool:
        return self.status == 200


class Ledger:
    """Read and write the ledger file. Safe to read while the server writes (WAL)."""

    FILENAME = "ledger.sqlite"

    def __init__(self, directory: Path | str):
        self.path = Path(directory) / self.FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            # a ledger from an older course: one fixed statement per column it may lack
            for column, statement in (("turn", "ALTER TABLE requests ADD COLUMN turn INTEGER"),
                                      ("origin", "ALTER TABLE requests ADD COLUMN origin TEXT"),
                                      ("usage", "ALTER TABLE requests ADD COLUMN usage TEXT")):
                if column not in columns:
                    db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def record(self, *, caller: str, endpoint: str, model: str, prompt: str,
               request: dict[str, Any], rule: str, status: int,
               fault: str | None, reply: str | None, turn: int | None = None,
               origin: dict[str, Any] | None = None, usage: dict[str, int] | None = None) -> int:
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO requests (at, caller, endpoint, model, prompt, request, rule, status, fault, reply, turn,"
                " origin, usage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), caller, endpoint, model, prompt, json.dumps(request), rule, status, fault, reply,
                 turn, json.dumps(origin) if origin is not None else None,
                 json.dumps(usage) if usage is not None else None),
            )
            return int(cursor.lastrowid)

    def count(self, *, caller: str, rule: str) -> int:
        with self._connect() as db:
            (n,) = db.execute(
                "SELECT COUNT(*) FROM requests WHERE caller = ? AND rule = ?", (caller, rule)
            ).fetchone()
        return int(n)

    def entries(self, caller: str | None = None, since_id: int = 0) -> list[LedgerEntry]:
        query = ("SELECT id, at, caller, endpoint, model, prompt, request, rule, status, fault, reply, turn,"
                 " origin, usage FROM requests WHERE id > ?")
        params: list[Any] = [since_id]
        if caller is not None:
            query += " AND caller = ?"
            params.append(caller)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return [
            LedgerEntry(id=r[0], at=r[1], caller=r[2], endpoint=r[3], model=r[4], prompt=r[5],
                        request=json.loads(r[6]), rule=r[7], status=r[8], fault=r[9], reply=r[10], turn=r[11],
                        origin=json.loads(r[12]) if r[12] else None, usage=json.loads(r[13]) if r[13] else None)
            for r in rows
        ]
