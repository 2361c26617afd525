"""Search the course's local web and read its pages (course-provided; you do not need to edit it).

The "web" is labkit's corpus server on 127.0.0.1: a handful of short documents on a
few topics, a search endpoint, and a ledger of every search and page read, which is
how the checks count what each node did. Its address comes from COURSE_WEB_URL
(`lab up` serves it on port 8310). The search results' URLs point back at the same
server, so reading a page is a plain GET of its URL.
"""

from __future__ import annotations

import functools
import os

import httpx

DEFAULT_URL = "http://127.0.0.1:8310"  # `lab up`
TIMEOUT_S = 10.0


@functools.cache
def client() -> httpx.Client:
    """One client for the process: its connections are reused from one request to the next."""
    return httpx.Client(timeout=TIMEOUT_S)


def base_url() -> str:
    return os.environ.get("COURSE_WEB_URL", DEFAULT_URL).rstrip("/")


def web_search(query: str, n: int = 5) -> list[dict]:
    """The top `n` pages for `query`: [{"url", "title", "snippet", ...}], best first."""
    response = client().get(f"{base_url()}/search", params={"q": query, "n": n})
    response.raise_for_status()
    return response.json()["results"]


def read_page(url: str) -> str:
    """The text of the page at `url` (a URL from web_search)."""
    response = client().get(url)
    response.raise_for_status()
    return response.text
