"""The agent's two tools, written as ordinary Temporal activities.

query_database reads; send_notification has a side effect someone sees. Temporal runs an activity
at least once: a worker that dies after the chat service got the message but before the activity
reported back leaves the server no choice but to run it again.
"""

import json
import sqlite3
from pathlib import Path

import httpx
from temporalio import activity

from .models import MAX_ROWS, REFUSED, database_path, notify_token, notify_url


@activity.defn
def query_database(sql: str) -> str:
    """Run one read-only SQL query (SQLite) on the sales table and return the rows as JSON."""
    # TODO(lab06): run `sql` on the dataset at database_path() so that it can never write.
    #   - Open the file read-only: sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True),
    #     and set db.row_factory = sqlite3.Row so each row turns into a dict.
    #   - Run one statement with db.execute(...) (it refuses a second one) and keep at most MAX_ROWS rows.
    #   - Return json.dumps([dict(row) for row in rows]): the model reads the tool's return value.
    #   - On sqlite3.Error (a write, a second statement, a typo) do not raise: return
    #     f"{REFUSED} <the reason>" so the model can tell the user why.
    raise NotImplementedError("TODO(lab06): query_database: run one read-only query and refuse anything else")


@activity.defn
async def send_notification(channel: str, message: str) -> str:
    """Post a message to a team chat channel, such as #sales."""
    # TODO(lab06): this send is not safe to run twice, and Temporal may run it twice: after a
    # crash between the post and the activity's completion. Send an "Idempotency-Key" header that
    # is the same on every attempt of this activity and different for every other activity
    # (activity.info() has what you need). The chat service delivers each key only once.
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            notify_url(),
            json={"channel": channel, "text": message},
            headers={"Authorization": f"Bearer {notify_token()}"},
        )
    response.raise_for_status()
    return f"posted to {channel} (message {response.json()['id']})"
