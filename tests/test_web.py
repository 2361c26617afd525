"""labkit.web, the course's local web: search, pages, scripted faults and the fetch ledger.

Tested as labs use it: a real server process on a free port, real HTTP clients. One server serves
most tests; each test is its own caller, so fault counters and ledgers never mix. Tests that
restart the server or need their own corpus start their own.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from labkit import proc
from labkit.web import DEFAULT_CORPUS, SEARCH, CourseWeb, WebError, WebLedger, load_corpus, rank

DOCS, _ = load_corpus([DEFAULT_CORPUS])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    web = CourseWeb(tmp_path_factory.mktemp("web")).start()
    yield web
    web.stop()


@pytest.fixture
def caller() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_corpus_has_topics_the_labs_search():
    topics = {doc.topic for doc in DOCS.values()}
    assert "quantum error correction" in topics
    assert len(DOCS) >= 12 and len(topics) >= 3
    assert sum(doc.topic == "quantum error correction" for doc in DOCS.values()) >= 5


def test_search_ranks_deterministically(server, caller):
    base = server.url_for(caller)
    first = httpx.get(f"{base}/search", params={"q": "quantum error correction", "n": 5}).json()
    again = httpx.get(f"{base}/search", params={"q": "quantum error correction", "n": 5}).json()
    assert first == again
    assert [r["slug"] for r in first["results"]] == [d.slug for d in rank(DOCS, "quantum error correction", 5)]
    assert len(first["results"]) == 5
    assert {r["topic"] for r in first["results"]} == {"quantum error correction"}
    for result in first["results"]:
        assert set(result) >= {"url", "title", "snippet"}
        assert result["url"] == f"{base}/doc/{result['slug']}"  # the caller travels with the URL
    assert httpx.get(f"{base}/search", params={"q": "heat", "n": 2}).json()["results"][0]["topic"] == \
        "urban heat islands"
    assert len(httpx.get(f"{base}/search", params={"q": "heat", "n": 2}).json()["results"]) == 2
    assert httpx.get(f"{base}/search", params={"q": "zzzz"}).json()["results"] == []


def test_doc_serves_the_text_and_404s(server, caller):
    base = server.url_for(caller)
    slug = "qec-surface-code"
    response = httpx.get(f"{base}/doc/{slug}")
    assert response.status_code == 200
    assert response.text == DOCS[slug].text
    assert httpx.get(f"{base}/doc/no-such-page").status_code == 404
    assert httpx.get(f"{server.base_url}/doc/{slug}").text == DOCS[slug].text  # no caller: anonymous


def test_caller_from_path_header_or_query(server, caller):
    httpx.get(f"{server.url_for(caller + '-p')}/doc/qec-decoders")
    httpx.get(f"{server.base_url}/doc/qec-decoders", headers={"X-Lab-Caller": caller + "-h"})
    found = httpx.get(f"{server.base_url}/search", params={"q": "decoder", "caller": caller + "-q"}).json()
    assert found["results"][0]["url"].endswith(f"/doc/qec-decoders?caller={caller}-q")
    httpx.get(found["results"][0]["url"])
    ledger = server.ledger()
    assert [e.slug for e in ledger.fetches(caller + "-p")] == ["qec-decoders"]
    assert [e.slug for e in ledger.fetches(caller + "-h")] == ["qec-decoders"]
    assert [e.kind for e in ledger.entries(caller + "-q")] == ["search", "fetch"]


def test_a_held_page_trickles_until_released_then_completes(server, caller):
    """Given a page held for a caller, when it is fetched, then bytes keep coming (as many as the
    reader waits for: the hold is a state, not a duration) until the behaviour is replaced, and the
    page then completes whole, recorded as complete in the ledger."""
    server.set_behaviour("qec-decoders", caller=caller, hold=True, chunk_ms=50)
    chunks = 0
    body = b""
    with httpx.stream("GET", f"{server.url_for(caller)}/doc/qec-decoders", timeout=60) as response:
        for chunk in response.iter_bytes():
            body += chunk
            chunks += 1
            if chunks == 20:  # still trickling after 20 pieces: release it
                server.set_behaviour("qec-decoders", caller=caller)
    page = httpx.get(f"{server.base_url}/doc/qec-decoders", timeout=30).content  # another caller: whole at once
    assert chunks > 20 and body == page
    (fetch,) = server.ledger().fetches(caller, "qec-decoders")
    assert fetch.complete and fetch.bytes == len(page)


def test_slow_page_trickles(server, caller):
    """A slow page sends its bytes spread over slow_ms (lower bounds the server guarantees); the
    margins against the unslowed fetch are seconds wide, so a slow machine does not change them."""
    server.set_behaviour("qec-decoders", caller=caller, slow_ms=3000)
    start = time.monotonic()
    arrivals = []
    with httpx.stream("GET", f"{server.url_for(caller)}/doc/qec-decoders") as response:
        for chunk in response.iter_bytes():
            arrivals.append(time.monotonic() - start)
    assert arrivals[-1] >= 2.9
    # the first bytes come long before the last: progress a client can report
    assert arrivals[-1] - arrivals[0] >= 2.5
    assert len(arrivals) >= 5
    fast = time.monotonic()
    httpx.get(f"{server.base_url}/doc/qec-decoders")  # another caller: not slowed
    assert time.monotonic() - fast < arrivals[-1] - 1.5, "another caller's fetch was slowed too"


def test_fail_first_then_work_per_caller(server, caller):
    server.set_behaviour("qec-logical-gates", caller=caller, fail_first=2, fail_status=500)
    url = f"{server.url_for(caller)}/doc/qec-logical-gates"
    assert [httpx.get(url).status_code for _ in range(3)] == [500, 500, 200]
    assert httpx.get(f"{server.url_for(caller + '-other')}/doc/qec-logical-gates").status_code == 200
    entries = server.ledger().fetches(caller)
    assert [(e.status, e.outcome) for e in entries] == [(500, "failed"), (500, "failed"), (200, "complete")]
    assert entries[0].fault == "fail_first 1/2"


def test_hang_until_client_leaves_then_work(server, caller):
    server.set_behaviour("qec-surface-code", caller=caller, hang_first=1)
    url = f"{server.url_for(caller)}/doc/qec-surface-code"
    got = b""
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=1.0)) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                got += chunk
    assert 0 < len(got) < len(DOCS["qec-surface-code"].text)  # some bytes, then nothing
    assert httpx.get(url).text == DOCS["qec-surface-code"].text  # the second fetch works
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        first = server.ledger().fetches(caller)[0]
        if first.outcome == "disconnected":
            break
        time.sleep(0.05)
    assert first.outcome == "disconnected" and first.bytes == len(got) and first.finished_at


def test_search_can_be_scripted(server, caller):
    server.set_behaviour(SEARCH, caller=caller, fail_first=1)
    url = f"{server.url_for(caller)}/search"
    assert httpx.get(url, params={"q": "trees"}).status_code == 503
    assert httpx.get(url, params={"q": "trees"}).json()["results"][0]["slug"] == "heat-islands-street-trees"


def test_behaviour_for_everyone_and_reset(tmp_path):
    web = CourseWeb(tmp_path).start()
    try:
        web.set_behaviour("qec-decoders", fail_first=1)
        assert httpx.get(f"{web.url_for('a')}/doc/qec-decoders").status_code == 503
        assert httpx.get(f"{web.url_for('b')}/doc/qec-decoders").status_code == 503
        web.reset_behaviours()
        assert httpx.get(f"{web.url_for('c')}/doc/qec-decoders").status_code == 200
        with pytest.raises(WebError, match="invalid behaviour"):
            web.set_behaviour("qec-decoders", slow_msec=10)
        with pytest.raises(WebError, match="no page"):
            web.set_behaviour("no-such-page", slow_ms=10)
    finally:
        web.stop()


def test_ledger_over_http(server, caller):
    httpx.get(f"{server.url_for(caller)}/doc/heat-islands-causes")
    rows = httpx.get(f"{server.base_url}/_ledger", params={"caller": caller}).json()
    assert [(r["kind"], r["slug"], r["outcome"]) for r in rows] == [("fetch", "heat-islands-causes", "complete")]
    assert rows[0]["at"] <= rows[0]["finished_at"]


CLIENT = textwrap.dedent("""
    import sys, httpx
    with httpx.stream("GET", sys.argv[1], timeout=60) as response:
        for chunk in response.iter_bytes():
            print("chunk", len(chunk), flush=True)
""")


def test_ledger_intact_when_the_client_is_sigkilled(server, caller, tmp_path):
    server.set_behaviour("qec-threshold-experiments", caller=caller, slow_ms=5000)
    client = proc.start([sys.executable, "-c", CLIENT, f"{server.url_for(caller)}/doc/qec-threshold-experiments"],
                        name="client", log_path=tmp_path / "client.log")
    try:
        deadline = time.monotonic() + 20
        while "chunk" not in client.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "chunk" in client.output(), client.output()
        client.kill()
        assert client.returncode == -signal.SIGKILL
    finally:
        client.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        (entry,) = WebLedger(server.ledger_dir).fetches(caller)  # a fresh reader, as a grader would
        if entry.outcome == "disconnected":
            break
        time.sleep(0.05)
    assert entry.outcome == "disconnected"
    assert 0 < entry.bytes < len(DOCS["qec-threshold-experiments"].text)


def test_counters_survive_a_restart_and_corpus_files_add_pages(tmp_path):
    extra = tmp_path / "extra.toml"
    extra.write_text(textwrap.dedent('''
        [[documents]]
        slug = "lab-only"
        title = "A page only this lab serves"
        topic = "testing"
        text = "Hello from a lab's own corpus."
        fail_first = 1

        [[documents]]
        slug = "always-hangs"
        title = "Never finishes"
        topic = "testing"
        text = "You will not read this to the end."
        hang = true
    '''))
    web = CourseWeb(tmp_path / "state", corpus_files=[DEFAULT_CORPUS, extra]).start()
    try:
        url = f"{web.url_for('me')}/doc/lab-only"
        assert httpx.get(url).status_code == 503
        assert httpx.get(f"{web.url_for('me')}/doc/qec-decoders").status_code == 200  # the default corpus too
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{web.url_for('me')}/doc/always-hangs", timeout=httpx.Timeout(5, read=0.5))
        pid = web.process.pid
        web.stop()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        web = CourseWeb(tmp_path / "state", corpus_files=[DEFAULT_CORPUS, extra]).start()
        url = f"{web.url_for('me')}/doc/lab-only"
        assert httpx.get(url).text == "Hello from a lab's own corpus.\n"  # fetch 2 of this caller
        assert httpx.get(f"{web.url_for('other')}/doc/lab-only").status_code == 503
    finally:
        web.stop()


def test_binds_localhost_only(server):
    listening = {(c.laddr.ip, c.laddr.port) for p in server.process.tree()
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", server.port)}


def test_a_bad_corpus_file_is_refused_at_start(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[documents]]\nslug = "x"\ntitle = "t"\ntext = "t"\nslowms = 3\n')
    with pytest.raises(WebError, match="unknown keys"):
        CourseWeb(tmp_path, corpus_files=[bad]).start()


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "labkit.web", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and "--corpus" in out.stdout
