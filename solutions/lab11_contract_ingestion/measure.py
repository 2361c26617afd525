"""What happened to the documents, read from the tables: the lab's measured table and its timelines.

    python -m lab11_contract_ingestion.measure        (prints the table for DATABASE_URL)

Silent failures are documents the user was told are ready that have no vector in the index. The
first operator signal of a document is its first pipeline.alert event or its 'failed' notification;
the notebook adds the failed workflows from Temporal and the faults from the course LLM's ledger.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from xml.sax.saxutils import escape

from .db import connect
from .models import FALLBACK_MODEL, QC_MIN_WORDS


@dataclass
class Measured:
    documents: int = 0
    notified_ready: int = 0
    stored: int = 0
    silent_failures: list[str] = field(default_factory=list)  # ready, not stored
    told_failed: int = 0
    alerts: int = 0
    fallback_uses: int = 0
    short_documents: int = 0
    qc_on_short: int = 0
    events: int = 0
    audited: int = 0
    # doc_id -> stage -> first time seen (uploaded, stored, ready, failed, alert)
    timeline: dict[str, dict[str, datetime]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        return [("documents uploaded", str(self.documents)),
                ("notified 'ready'", str(self.notified_ready)),
                ("actually stored", str(self.stored)),
                ("silent failures (ready, not stored)", str(len(self.silent_failures))),
                ("users told 'failed'", str(self.told_failed)),
                ("alert events", str(self.alerts)),
                ("fallback model used", str(self.fallback_uses)),
                (f"quality checks on documents under {QC_MIN_WORDS} words",
                 f"{self.qc_on_short} of {self.short_documents}"),
                ("events audited", f"{self.audited} of {self.events}")]


async def measure(doc_prefix: str = "") -> Measured:
    like = doc_prefix + "%"
    found = Measured()
    async with await connect() as conn:
        async def rows(sql: str) -> list[tuple]:
            return await (await conn.execute(sql, {"like": like})).fetchall()

        words = {d: len(" ".join(raw.split()).split())
                 for d, raw in await rows("SELECT doc_id, raw FROM documents WHERE doc_id LIKE %(like)s")}
        stored = {d: m for d, m in await rows("SELECT doc_id, model FROM document_vectors WHERE doc_id LIKE %(like)s")}
        notes = await rows("SELECT doc_id, status, sent_at FROM notifications WHERE doc_id LIKE %(like)s")
        quality = {d for (d,) in await rows("SELECT doc_id FROM quality_checks WHERE doc_id LIKE %(like)s")}
        events = await rows("SELECT id, type, doc_id, at FROM events WHERE doc_id LIKE %(like)s ORDER BY id")
        audited = {i for (i,) in await rows("SELECT event_id FROM audit_log WHERE doc_id LIKE %(like)s")}
        stored_at = await rows("SELECT doc_id, stored_at FROM document_vectors WHERE doc_id LIKE %(like)s")
    ready = {d for d, status, _ in notes if status == "ready"}
    found.documents, found.stored, found.notified_ready = len(words), len(stored), len(ready)
    found.silent_failures = sorted(ready - set(stored))
    found.told_failed = sum(1 for _, status, _ in notes if status == "failed")
    found.alerts = sum(1 for _, type_, _, _ in events if type_ == "pipeline.alert")
    found.fallback_uses = sum(1 for m in stored.values() if m == FALLBACK_MODEL)
    short = {d for d, n in words.items() if n < QC_MIN_WORDS}
    found.short_documents, found.qc_on_short = len(short), len(short & quality)
    found.events, found.audited = len(events), len(audited & {e[0] for e in events})

    def mark(doc: str, stage: str, at: datetime) -> None:
        found.timeline.setdefault(doc, {}).setdefault(stage, at)

    for _, type_, doc, at in events:
        if type_ == "document.uploaded":
            mark(doc, "uploaded", at)
        elif type_ == "pipeline.alert":
            mark(doc, "alert", at)
    for doc, at in stored_at:
        mark(doc, "stored", at)
    for doc, status, at in notes:
        mark(doc, "ready" if status == "ready" else "failed", at)
    return found


COLOURS = {"stored": "#2e7d32", "ready": "#1565c0", "alert": "#c62828", "failed": "#6a1b9a"}


def svg_timeline(found: Measured, title: str, *, width: int = 420, start: datetime | None = None,
                 span_s: float | None = None, faults: dict[str, float] | None = None) -> str:
    """One row per document (sorted by upload), a dot per stage reached; a silent failure (ready, not stored)
    is a blue dot with a red ring. `faults`: doc -> seconds after start of its first failed embedding."""
    docs = sorted(found.timeline, key=lambda d: found.timeline[d].get("uploaded", datetime.max.astimezone()))
    if not docs:
        return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='40'><text x='4' y='20'>{escape(title)}: no documents</text></svg>"
    times = [t for d in docs for t in found.timeline[d].values()]
    start = start or min(times)
    span = span_s or max(0.001, max((t - start).total_seconds() for t in times))
    row, left, top = 7, 8, 34
    height = top + row * len(docs) + 30

    def x(seconds: float) -> float:
        return left + (width - 2 * left) * min(1.0, max(0.0, seconds / span))

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
             f"font-size='11'>", f"<text x='{left}' y='14' font-weight='bold'>{escape(title)}</text>",
             f"<text x='{left}' y='27' fill='#555'>one row per document; x: seconds since the first upload (0 to "
             f"{span:.1f} s)</text>"]
    for n, doc in enumerate(docs):
        y = top + n * row + row / 2
        stages = found.timeline[doc]
        if faults and doc in faults:
            parts.append(f"<text x='{x(faults[doc]) - 3:.1f}' y='{y + 3:.1f}' fill='#c62828' font-size='9'>×</text>")
        for stage, colour in COLOURS.items():
            if stage in stages:
                cx = x((stages[stage] - start).total_seconds())
                parts.append(f"<circle cx='{cx:.1f}' cy='{y:.1f}' r='2.4' fill='{colour}'/>")
        if "ready" in stages and "stored" not in stages:
            cx = x((stages["ready"] - start).total_seconds())
            parts.append(f"<circle cx='{cx:.1f}' cy='{y:.1f}' r='4.5' fill='none' stroke='#c62828' stroke-width='1.5'/>")
    legend = [("stored", "stored"), ("ready", "told 'ready'"), ("alert", "alert"), ("failed", "told 'failed'")]
    lx = left
    for stage, label in legend:
        parts.append(f"<circle cx='{lx + 4}' cy='{height - 12}' r='3' fill='{COLOURS[stage]}'/>"
                     f"<text x='{lx + 10}' y='{height - 8}'>{label}</text>")
        lx += 92
    parts.append("</svg>")
    return "".join(parts)


async def main() -> None:
    found = await measure()
    for name, value in found.rows():
        print(f"{name:<45} {value}")
    if found.silent_failures:
        print("silent failures:", ", ".join(found.silent_failures[:10]))


if __name__ == "__main__":
    asyncio.run(main())
