"""Embedding vectors for the course LLM's /v1/embeddings: deterministic, per model, float32-exact.

A vector is a pure function of (model, text, dimensions): the same text always gets the same vector
from the same model, and another model gives another vector, so a check can recompute what any
stored vector should be and tell which model made it. The values are float32 numbers (what the
openai client decodes from its default base64 encoding), of unit length like real embeddings.
They carry no meaning: similar texts do not get similar vectors.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct

DEFAULT_DIMENSIONS = 1536  # text-embedding-3-small's default


def _float32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def vector(model: str, text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The embedding the course LLM answers for `text` with `model`: unit length, float32 values."""
    raw: list[float] = []
    block = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(f"{model}\x00{block}\x00{text}".encode()).digest()
        raw.extend(n / 2**31 - 1.0 for n in struct.unpack("<8I", digest))
        block += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [_float32(x / norm) for x in raw]


def to_base64(values: list[float]) -> str:
    """The `encoding_format="base64"` form: little-endian float32 bytes, base64 (what the openai client
    asks for when the caller names no format)."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def input_texts(value) -> list[str]:
    """The request's `input` as texts: a string, a list of strings, or token arrays (kept as their digits)."""
    if isinstance(value, str):
        return [value]
    items = list(value or [])
    if items and all(isinstance(t, int) for t in items):
        return [" ".join(map(str, items))]
    return [item if isinstance(item, str) else " ".join(map(str, item or [])) for item in items]
