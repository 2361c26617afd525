"""A Gantt chart of page downloads, from the course web's fetch ledger (labkit.web).

The Temporal history keeps only the last attempt of each activity; the web's ledger keeps every
fetch, with when it began, when it ended and how (complete, disconnected, failed, hung). So this
picture shows what a history cannot: the stalled first attempt of a page, the downloads a SIGKILL
cut off, the fetches that were never repeated.

    from labkit.gantt import svg
    picture = svg(web.ledger().fetches(caller), marks=[(killed_at, "kill -9")], title="crash run")
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Sequence
from xml.sax.saxutils import escape

from .web import WebEntry

COLOURS = {"complete": "#16a34a", "disconnected": "#dc2626", "failed": "#d97706", "hung": "#9333ea",
           "started": "#2563eb"}
LEGEND = [("complete", "downloaded"), ("disconnected", "cut off (client went away)"),
          ("failed", "error answer"), ("started", "still downloading")]


def _seconds(at: float | datetime) -> float:
    return at.timestamp() if isinstance(at, datetime) else float(at)


def rows(entries: Iterable[WebEntry]) -> list[tuple[str, WebEntry]]:
    """One row per fetch, labelled "slug" or "slug (2)" for a page's second fetch, in start order."""
    seen: dict[str, int] = {}
    found = []
    for entry in sorted((e for e in entries if e.kind == "fetch"), key=lambda e: e.at):
        seen[entry.slug] = seen.get(entry.slug, 0) + 1
        found.append((entry.slug + (f" ({seen[entry.slug]})" if seen[entry.slug] > 1 else ""), entry))
    return found


def svg(entries: Iterable[WebEntry], *, marks: Sequence[tuple[float | datetime, str]] = (), title: str = "",
        now: float | None = None, width: int = 860,
        legend: Sequence[tuple[str, str]] = LEGEND, words: bool = False) -> str:
    """A self-contained SVG: a bar per fetch (colour = how it ended), a vertical line per mark.
    `legend`: (outcome, what it means here) pairs, for bars that are not page downloads (labkit.sweep);
    `words`: each bar's tooltip says its outcome in the legend's words, without the download's bytes."""
    found = rows(entries)
    if not found:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="30"><text x="8" y="20" ' \
               f'font-family="sans-serif" font-size="12">no fetches</text></svg>'
    ends = [e.finished_at or now or e.at for _, e in found]
    t0 = min([e.at for _, e in found] + [_seconds(m) for m, _ in marks])
    t1 = max(ends + [_seconds(m) for m, _ in marks])
    span = max(t1 - t0, 0.5)
    left, right, top, row_h = 230, 20, 34 if title else 14, 20
    plot = width - left - right
    height = top + row_h * len(found) + 52

    def x(at: float) -> float:
        return left + plot * (at - t0) / span

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="8" y="20" font-size="13" font-weight="bold">{escape(title)}</text>')
    step = next(s for s in (0.25, 0.5, 1, 2, 5, 10, 30, 60) if span / s <= 12)
    tick = 0.0
    bottom = top + row_h * len(found)
    while tick <= span + 1e-9:
        tx = x(t0 + tick)
        out.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{bottom}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{tx:.1f}" y="{bottom + 13}" text-anchor="middle" fill="#6b7280">{tick:g}s</text>')
        tick += step
    for i, (label, entry) in enumerate(found):
        y = top + i * row_h
        end = entry.finished_at or now or t1
        colour = COLOURS.get(entry.outcome, "#6b7280")
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
        tip = (f"{entry.slug}: {dict(legend).get(entry.outcome, entry.outcome)}, {end - entry.at:.2f} s" if words else
               f"{entry.slug}: {entry.outcome}, {entry.bytes} bytes, {end - entry.at:.2f} s"
               + (f", HTTP {entry.status}" if entry.status != 200 else ""))
        out.append(f'<rect x="{x(entry.at):.1f}" y="{y + 4}" width="{max(x(end) - x(entry.at), 2):.1f}" '
                   f'height="{row_h - 8}" rx="2" fill="{colour}"><title>{escape(tip)}</title></rect>')
    for at, label in marks:
        mx = x(_seconds(at))
        out.append(f'<line x1="{mx:.1f}" y1="{top - 4}" x2="{mx:.1f}" y2="{bottom}" stroke="#111827" '
                   f'stroke-width="2" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{mx + 4:.1f}" y="{top - 6}" font-weight="bold">{escape(label)}</text>')
    lx = left
    for outcome, text in legend:
        out.append(f'<rect x="{lx}" y="{bottom + 24}" width="12" height="10" fill="{COLOURS[outcome]}"/>')
        out.append(f'<text x="{lx + 16}" y="{bottom + 33}">{escape(text)}</text>')
        lx += 30 + 6 * len(text)
    out.append("</svg>")
    return "\n".join(out)


def table(entries: Iterable[WebEntry]) -> str:
    """The same fetches as text: start offset, duration, outcome, bytes."""
    found = rows(entries)
    if not found:
        return "no fetches"
    t0 = min(e.at for _, e in found)
    lines = [f"{'fetch':<40} {'start':>7} {'took':>7}  {'outcome':<13} {'bytes':>6}"]
    for label, e in found:
        took = f"{e.finished_at - e.at:6.2f}s" if e.finished_at else "   ... "
        lines.append(f"{label:<40} {e.at - t0:6.2f}s {took}  {e.outcome:<13} {e.bytes:>6}"
                     + (f"  HTTP {e.status}" if e.status != 200 else ""))
    return "\n".join(lines)
