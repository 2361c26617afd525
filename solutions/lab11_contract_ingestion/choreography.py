"""The pipeline as choreography: each team's consumer reacts to events on the bus, nobody is in charge.

    python -m lab11_contract_ingestion.choreography extract     (one process per team:
    python -m lab11_contract_ingestion.choreography embed        extract, embed, store, quality,
    ...                                                          notify, audit, analytics)

document.uploaded -> extract -> document.extracted -> embed -> document.embedded -> store -> document.stored
                                document.extracted -> quality -> document.checked -> notify -> document.notified
audit and analytics read every event.

Each consumer is independent, as the case study's were: it knows the events it listens to and the
one it publishes, nothing about the stages around it. The notify team reacts to the quality check,
so it has no way to know that embedding failed. And the embed team's consumer, like the case study's,
logs a failed embedding and moves on: the event is consumed, nothing is published, nothing retries,
and the uploader is still told the document is ready. That is the silent failure this lab measures.
Do not fix it here: the lab's point is to see it, then remove it with orchestration (workflows.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from psycopg import sql

from .db import connect, ensure_schema, publish
from .models import (EVENTS_CHANNEL, PRIMARY_MODEL, EmbedInputV1, ExtractInputV1, NotifyInputV1, QualityInputV1,
                     StoreInputV1)
from .stages import embed_text, extract_text, notify_user, quality_check, store_vector

SOURCE = "choreography"


async def on_uploaded(event: dict) -> None:
    extracted = await extract_text(ExtractInputV1(event["doc_id"]))
    await publish("document.extracted", extracted.doc_id, {"words": extracted.words, "text": extracted.text},
                  source=SOURCE, dedupe_key=f"extracted:{extracted.doc_id}")


async def on_extracted_embed(event: dict) -> None:
    doc_id, text = event["doc_id"], event["payload"]["text"]
    try:
        embedding = await embed_text(EmbedInputV1(doc_id, text, PRIMARY_MODEL))
    except Exception as err:  # the case study's silent failure: logged, consumed, forgotten
        print(f"embed: {doc_id} failed ({type(err).__name__}: {err}); skipping", flush=True)
        return
    await publish("document.embedded", doc_id, {"model": embedding.model, "vector": embedding.vector},
                  source=SOURCE, dedupe_key=f"embedded:{doc_id}")


async def on_embedded(event: dict) -> None:
    doc_id, payload = event["doc_id"], event["payload"]
    stored = await store_vector(StoreInputV1(doc_id, payload["model"], payload["vector"]))
    await publish("document.stored", doc_id, {"model": payload["model"], "dimensions": stored.dimensions},
                  source=SOURCE, dedupe_key=f"stored:{doc_id}")


async def on_extracted_quality(event: dict) -> None:
    doc_id, text = event["doc_id"], event["payload"]["text"]
    quality = await quality_check(QualityInputV1(doc_id, text))
    await publish("document.checked", doc_id, {"passed": quality.passed, "issues": quality.issues},
                  source=SOURCE, dedupe_key=f"checked:{doc_id}")


async def on_checked(event: dict) -> None:
    doc_id = event["doc_id"]
    await notify_user(NotifyInputV1(doc_id, "ready", "Your contract is processed and searchable."))
    await publish("document.notified", doc_id, {"status": "ready"}, source=SOURCE,
                  dedupe_key=f"notified:{doc_id}")


async def on_any_audit(event: dict) -> None:
    async with await connect() as conn:
        await conn.execute("INSERT INTO audit_log (event_id, type, doc_id, source) VALUES (%s, %s, %s, %s) "
                           "ON CONFLICT (event_id) DO NOTHING",
                           (event["id"], event["type"], event["doc_id"], event["source"]))


async def on_any_analytics(event: dict) -> None:
    async with await connect() as conn:
        await conn.execute("INSERT INTO analytics (type, count) VALUES (%s, 1) "
                           "ON CONFLICT (type) DO UPDATE SET count = analytics.count + 1", (event["type"],))


# team -> (the event types it reacts to (None: all), its handler)
TEAMS = {
    "extract": (["document.uploaded"], on_uploaded),
    "embed": (["document.extracted"], on_extracted_embed),
    "store": (["document.embedded"], on_embedded),
    "quality": (["document.extracted"], on_extracted_quality),
    "notify": (["document.checked"], on_checked),
    "audit": (None, on_any_audit),
    "analytics": (None, on_any_analytics),
}


async def drain(team: str) -> int:
    """Handle every event of the team's types it has not handled yet, in order; how many it handled.
    The offset moves after each event: a consumer that dies mid-event handles that one again."""
    types, handler = TEAMS[team]
    handled = 0
    async with await connect() as conn:
        row = await (await conn.execute("SELECT last_event_id FROM consumer_offsets WHERE consumer = %s",
                                        (team,))).fetchone()
        last = row[0] if row else 0
        while True:
            rows = await (await conn.execute(
                "SELECT id, type, doc_id, payload, source FROM events WHERE id > %s "
                "AND (%s::text[] IS NULL OR type = ANY(%s::text[])) ORDER BY id LIMIT 100",
                (last, types, types))).fetchall()
            if not rows:
                return handled
            for id_, type_, doc_id, payload, source in rows:
                await handler({"id": id_, "type": type_, "doc_id": doc_id, "payload": payload, "source": source})
                last = id_
                handled += 1
                await conn.execute("INSERT INTO consumer_offsets (consumer, last_event_id) VALUES (%s, %s) "
                                   "ON CONFLICT (consumer) DO UPDATE SET last_event_id = EXCLUDED.last_event_id",
                                   (team, last))


async def consume(team: str) -> None:
    await ensure_schema()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with await connect() as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_CHANNEL)))
        print(f"team {team} (pid {os.getpid()}) listening on {EVENTS_CHANNEL}", flush=True)
        while not stop.is_set():
            await drain(team)
            # Wake on the next announcement, or after a second anyway (a missed one costs a second).
            async for _ in listener.notifies(timeout=1.0, stop_after=1):
                pass
    print(f"team {team} stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lab11_contract_ingestion.choreography")
    parser.add_argument("team", choices=sorted(TEAMS))
    args = parser.parse_args()
    try:
        asyncio.run(consume(args.team))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
