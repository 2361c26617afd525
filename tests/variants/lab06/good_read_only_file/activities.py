"""The agent's two tools, written as ordinary Temporal activities.

query_database reads; send_notification has a side effect someone sees. Temporal runs an activity
at least once: a worker that dies after the chat service got the message but before the activity
reported back leaves the server no choice but to run it again. So the send carries an idempotency
key that is the same on every attempt (workflow id + activity id), and the chat service delivers a
key only once.
"""

import json
import sqlite3
from pathlib import Path

import httpx
from temporalio import activity

from .models import MAX_ROWS, REFUSED, database_path, notify_token, notify_url


def read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that cannot write, whatever the SQL says: SQLite opens the file read-only."""
    db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    db.execute("PRAGMA query_only = ON")
    db.row_factory = sqlite3.Row
    return db


@activity.defn
def query_database(sql: str) -> str:
    """Run one read-only SQL query (SQLite) on the sales table and return the rows as JSON."""
    # The starter's recipe and nothing more: no look at the SQL at all. The read-only file refuses
    # every write; a PRAGMA that changes only this connection, or an ATTACH, runs and changes no data.
    statement = sql.strip().rstrip(";").strip()
    db = read_only_connection(database_path())
    try:
        # sqlite3 runs one statement per execute(): "SELECT 1; DROP TABLE sales" raises
        # "You can only execute one statement at a time." before running anything, and a
        # write hidden in a SELECT-looking statement fails on the read-only connection.
        rows = db.execute(statement).fetchmany(MAX_ROWS)
    except sqlite3.Error as err:
        return f"{REFUSED} {err}"  # the model reads the reason as the tool's output
    finally:
        db.close()
    return json.dumps([dict(row) for row in rows])


@activity.defn
async def send_notification(channel: str, message: str) -> str:
    """Post a message to a team chat channel, such as #sales."""
    info = activity.info()
    # The same on every attempt of this activity, different for every other one.
    key = f"{info.workflow_id}/{info.activity_id}"
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            notify_url(),
            json={"channel": channel, "text": message},
            headers={"Authorization": f"Bearer {notify_token()}", "Idempotency-Key": key},
        )
    response.raise_for_status()
    return f"posted to {channel} (message {response.json()['id']})"
