"""The agent's tools as methods of one class, built once; its bound methods are the activities.

Shaped differently from the reference on purpose: a class instead of functions, SQLite's own
authorizer as the read-only guard, a blocking HTTP client (the worker runs it in a thread pool),
rows as columns + values, and a hashed idempotency key.
"""

import hashlib
import json
import sqlite3
from pathlib import Path

import httpx
from temporalio import activity

from .models import MAX_ROWS, REFUSED, database_path, notify_token, notify_url

READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}


def _only_reads(action, *_):
    return sqlite3.SQLITE_OK if action in READS else sqlite3.SQLITE_DENY


class AnalystTools:
    def __init__(self, db_path: Path | None = None, url: str | None = None, token: str | None = None):
        self.db_path = Path(db_path or database_path())
        self.url, self.token = url or notify_url(), token or notify_token()

    @activity.defn(name="query_database")
    def query_database(self, sql: str) -> str:
        """Run one read-only SQL query (SQLite) on the sales table and return the rows as JSON."""
        db = sqlite3.connect(self.db_path)
        db.set_authorizer(_only_reads)  # SQLite asks before each action: anything but reading is denied
        try:
            cursor = db.execute(sql)
            columns = [c[0] for c in cursor.description or []]
            return json.dumps({"columns": columns, "rows": cursor.fetchmany(MAX_ROWS)})
        except (sqlite3.Error, sqlite3.Warning) as err:
            return f"{REFUSED} {err} (this tool only reads, one statement at a time)"
        finally:
            db.close()

    @activity.defn(name="send_notification")
    def send_notification(self, channel: str, message: str) -> str:
        """Post a message to a team chat channel, such as #sales."""
        info = activity.info()
        key = hashlib.sha256(f"{info.workflow_id}:{info.activity_id}".encode()).hexdigest()
        response = httpx.post(self.url, json={"channel": channel, "text": message}, timeout=10,
                              headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": key})
        response.raise_for_status()
        return f"{channel}: delivered as message {response.json()['id']}"


# The course's worker registers `query_database` and `send_notification` from this module: one
# instance's bound methods, under those names.
_tools = AnalystTools()
query_database = _tools.query_database
send_notification = _tools.send_notification
