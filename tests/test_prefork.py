"""labkit.prefork: programs forked from a warm interpreter behave like `python -m` programs.

Exit statuses (including a signal), environment, working directory, argv and sys.path, a
normal interpreter exit (generators closed, threads joined, atexit run, in that order), no
state carried from one child to the next, and no child outliving the server.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time

import psutil
import pytest

from labkit import prefork

PROGRAMS = {
    "exits": "import sys; sys.exit(int(sys.argv[1]))",
    "raises": "raise RuntimeError('boom')",
    "killed": "import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
    "where": textwrap.dedent("""\
        import json, os, sys
        print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "path0": sys.path[0],
                          "env": os.environ.get("WHERE_VAR"), "main": __name__, "pid": os.getpid()}))
        """),
    "state": textwrap.dedent("""\
        import pkg_state.counter as c
        c.n += 1
        print("n", c.n)
        """),
    "shutdown": textwrap.dedent("""\
        import atexit, sys, threading, time
        from concurrent.futures import ThreadPoolExecutor
        atexit.register(lambda: print("atexit", flush=True))
        def gen():
            with ThreadPoolExecutor(2) as pool:
                try:
                    pool.submit(time.sleep, 0.2).add_done_callback(lambda f: print("work done", flush=True))
                    yield 1
                finally:
                    print("generator closed", flush=True)
        for _ in gen():
            sys.exit(1)
        """),
    "sleeps": "import time; time.sleep(60)",
}


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefork")
    (root / "pkg_state").mkdir()
    (root / "pkg_state" / "__init__.py").write_text("")
    (root / "pkg_state" / "counter.py").write_text("n = 0\n")
    for name, source in PROGRAMS.items():
        (root / f"prog_{name}.py").write_text(source)
    server = prefork.ForkServer(root, ["json", "concurrent.futures"])
    try:
        server.launch().wait_ready()
        server.root = root
        yield server
    finally:
        server.stop()


def run(forks, name, *args, env_extra=None, timeout=20):
    env = {**os.environ, "PYTHONPATH": str(forks.root), **(env_extra or {})}
    log = forks.root / f"{name}-{time.monotonic_ns()}.log"
    child = forks.start(f"prog_{name}", list(args), name=name, log_path=log, env=env, cwd=forks.root)
    code = child.wait(timeout)
    return child, code, child.output()


def test_exit_statuses_are_the_programs(forks):
    assert run(forks, "exits", "0")[1] == 0
    assert run(forks, "exits", "3")[1] == 3
    _, code, log = run(forks, "raises")
    assert code == 1 and "RuntimeError: boom" in log and "Traceback" in log
    _, code, log = run(forks, "killed")
    assert code == -9 and "before" in log


def test_environment_cwd_argv_and_path_are_set_as_python_m_would(forks, tmp_path):
    import json

    env = {**os.environ, "PYTHONPATH": str(forks.root), "WHERE_VAR": "here"}
    child = forks.start("prog_where", ["a", "b"], name="where", log_path=tmp_path / "w.log", env=env,
                        cwd=tmp_path)
    assert child.wait(20) == 0
    seen = json.loads(child.output().strip().splitlines()[-1])
    assert seen["argv"] == ["a", "b"] and seen["env"] == "here" and seen["main"] == "__main__"
    assert seen["cwd"] == str(tmp_path) and seen["path0"] == str(tmp_path)
    assert seen["pid"] not in (os.getpid(), forks.process.pid)


def test_no_state_carries_over_between_children(forks):
    assert run(forks, "state")[2].strip() == "n 1"
    assert run(forks, "state")[2].strip() == "n 1"


def test_exit_closes_generators_joins_threads_then_runs_atexit(forks):
    _, code, log = run(forks, "shutdown")
    assert code == 1
    assert [line for line in log.splitlines() if line] == ["generator closed", "work done", "atexit"]
    # the same program, started with a plain exec, prints the same lines
    import subprocess

    plain = subprocess.run([sys.executable, str(forks.root / "prog_shutdown.py")], capture_output=True,
                           text=True, timeout=30)
    assert plain.returncode == 1 and [line for line in plain.stdout.splitlines() if line] == [
        "generator closed", "work done", "atexit"]


def test_children_die_with_the_server(tmp_path):
    (tmp_path / "prog_sleeps.py").write_text(PROGRAMS["sleeps"])
    server = prefork.ForkServer(tmp_path, []).launch().wait_ready()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    child = server.start("prog_sleeps", [], name="sleeps", log_path=tmp_path / "s.log", env=env, cwd=tmp_path)
    assert psutil.pid_exists(child.pid)
    server.stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child {child.pid} outlived the fork server")


def test_kill_stops_a_child(forks):
    env = {**os.environ, "PYTHONPATH": str(forks.root)}
    child = forks.start("prog_sleeps", [], name="sleeps", log_path=forks.root / "k.log", env=env,
                        cwd=forks.root)
    assert child.alive
    child.kill()
    assert child.returncode == -9 and not child.alive


def test_only_the_process_that_started_the_server_gets_a_child(forks):
    """Given a fork server started by this process,
    When another process (a student's, which can reach the socket) asks it for a child with limits
      of its own choosing,
    Then the server hangs up without forking, and still serves this process afterwards."""
    ask = textwrap.dedent(f"""\
        import json, socket
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect({forks.socket_path!r})
        try:
            conn.sendall(json.dumps({{"module": "prog_exits", "args": ["0"], "env": {{}}, "cwd": {str(forks.root)!r},
                                      "log": "/dev/null", "limits": {{"sandbox": False}}}}).encode() + b"\\n")
            conn.settimeout(10)
            print("answer", conn.recv(4096))
        except (ConnectionResetError, BrokenPipeError):  # it hung up before or while we spoke
            print("answer", b"")
        """)
    import subprocess

    done = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "answer b''", f"observed {done.stdout!r}; expected the server to hang up"
    _, code, _ = run(forks, "exits", "0")
    assert code == 0
