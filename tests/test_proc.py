"""labkit.proc: student code runs as real process trees, and every tree is reaped.

Each test starts small Python programs (children that spawn grandchildren, programs that
handle or ignore SIGINT, a port holder) and checks with psutil, from outside, that nothing
survives. "Survives" means still running: a killed grandchild can stay a zombie until its new
parent (init) reaps it, and some container inits never do; a zombie runs nothing and holds no port.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from procs import running, wait_until
from labkit import proc
from labkit.services import HOST, port_open

LINUX = sys.platform.startswith("linux")
REPO = Path(__file__).resolve().parent.parent


def script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


@pytest.fixture
def started(tmp_path, monkeypatch):
    """Start managed processes in a registry of the test's own; whatever is left is reaped."""
    monkeypatch.setattr(proc, "_live", {})  # reap_all() in a test must not touch anyone else's processes
    mine: list[proc.ManagedProcess] = []

    def start(argv, name="child", **kwargs) -> proc.ManagedProcess:
        managed = proc.start(argv, name=name, log_path=tmp_path / f"{name}.log", **kwargs)
        mine.append(managed)
        return managed

    try:
        yield start
    finally:
        pids = [p.pid for m in mine for p in m.tree()]
        for managed in mine:
            managed.kill()
        assert not [pid for pid in pids if running(pid)]


def wait_for_output(managed: proc.ManagedProcess, text: str, timeout: float = 10) -> None:
    assert wait_until(lambda: text in managed.log_path.read_text(errors="replace"), timeout), (
        f"{managed.name} never printed {text!r}; output so far:\n{managed.log_path.read_text()}")


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]

TREE = f"""
    import subprocess, sys, time
    sleeper = {SLEEPER!r}
    # a grandchild with a child of its own, and a grandchild that left the process group
    subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen({SLEEPER!r}); time.sleep(60)"])
    subprocess.Popen(sleeper, start_new_session=True)
    print("spawned", flush=True)
    time.sleep(60)
"""


def test_kill_reaps_the_whole_tree(tmp_path, started):
    child = started(script(tmp_path, "tree", TREE), name="tree")
    assert wait_until(lambda: len(child.tree()) == 4, timeout=10), child.tree()
    pids = [p.pid for p in child.tree()]
    assert len({psutil.Process(pid).ppid() for pid in pids}) == 3  # really three generations

    child.kill()  # no grace period: killed_with below says SIGKILL, not a SIGTERM that was waited out
    survivors = [pid for pid in pids if running(pid)]
    assert not survivors, f"kill() left {survivors} running"
    assert not child.alive and child.returncode == -signal.SIGKILL
    assert child.killed_with == signal.SIGKILL
    assert child not in proc.live()


def test_output_stays_readable_after_the_process_is_reaped(tmp_path, started):
    child = started(script(tmp_path, "talker", """
        import time
        print("hello from the child", flush=True)
        time.sleep(60)
    """), name="talker")
    wait_for_output(child, "hello from the child")
    child.kill()
    assert "hello from the child" in child.output()  # a check's failure message shows it
    assert child.tree() == []  # reaped: its pid is not ours to signal any more
    child.kill()  # killing or stopping twice is harmless
    child.stop()
    assert child.returncode == -signal.SIGKILL


def test_interrupt_is_graceful_when_the_program_handles_sigint(tmp_path, started):
    child = started(script(tmp_path, "polite", """
        import sys, time
        print("ready", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("shutting down gracefully", flush=True)
            sys.exit(0)
    """), name="polite")
    wait_for_output(child, "ready")
    assert child.interrupt(timeout=10) == 0  # exit status 0: it stopped on SIGINT, no fallback to SIGKILL
    assert "shutting down gracefully" in child.output()
    assert child.killed_with == signal.SIGINT
    assert not running(child.pid)


def test_interrupt_falls_back_to_sigkill_when_sigint_is_ignored(tmp_path, started):
    child = started(script(tmp_path, "stubborn", """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"])
        print("ready", flush=True)
        time.sleep(60)
    """), name="stubborn")
    wait_for_output(child, "ready")
    assert wait_until(lambda: len(child.tree()) == 2, timeout=10)
    pids = [p.pid for p in child.tree()]
    started_at = time.monotonic()
    assert child.interrupt(timeout=1) == -signal.SIGKILL
    elapsed = time.monotonic() - started_at
    assert elapsed >= 1, f"interrupt(timeout=1) gave up after {elapsed:.1f} s, before its timeout"
    assert child.killed_with == signal.SIGKILL
    assert not [pid for pid in pids if running(pid)]


def test_reap_all_stops_everything_registered(tmp_path, started):
    plain = started(SLEEPER, name="plain")
    tree = started(script(tmp_path, "tree", TREE), name="tree")
    deaf = started(script(tmp_path, "deaf", """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """), name="deaf")
    wait_for_output(deaf, "ready")
    assert wait_until(lambda: len(tree.tree()) == 4, timeout=10)
    pids = [p.pid for m in (plain, tree, deaf) for p in m.tree()]
    assert set(proc.live()) == {plain, tree, deaf}

    reaped = proc.reap_all(grace=0.5)
    assert sorted(reaped) == sorted(f"<{name} pid={m.pid} running>" for name, m in
                                    (("plain", plain), ("tree", tree), ("deaf", deaf)))
    assert proc.live() == []
    assert not [pid for pid in pids if running(pid)]
    assert deaf.returncode == -signal.SIGKILL  # it ignored SIGTERM, so the grace ran out
    assert proc.reap_all() == []


# A parent program that starts a child through labkit.proc. The child records a SIGTERM (a
# graceful reap by the parent); a SIGKILL (PDEATHSIG) leaves no trace.
PARENT = f"""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {str(REPO)!r})
    from labkit import proc

    log, marker, mode, child_script = sys.argv[1:]
    child = proc.start([sys.executable, child_script, marker], name="child", log_path=Path(log))
    while "ready" not in child.log_path.read_text():
        time.sleep(0.01)
    print(child.pid, flush=True)
    if mode == "exit":
        sys.exit(0)
    time.sleep(60)
"""

CHILD = """
    import signal, sys, time
    from pathlib import Path

    def on_term(signum, frame):
        Path(sys.argv[1]).write_text("SIGTERM")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def parent_program(tmp_path):
    """Run PARENT as a plain subprocess (not through labkit.proc); parent and child always killed."""
    spawned: list[tuple[subprocess.Popen, psutil.Process | None]] = []
    path = tmp_path / "parent.py"
    path.write_text(textwrap.dedent(PARENT))
    child_script = tmp_path / "child.py"
    child_script.write_text(textwrap.dedent(CHILD))

    def run(mode: str) -> tuple[subprocess.Popen, int, Path]:
        marker = tmp_path / f"{mode}.marker"
        parent = subprocess.Popen([sys.executable, str(path), str(tmp_path / f"{mode}.log"), str(marker), mode,
                                   str(child_script)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        spawned.append((parent, None))
        line = parent.stdout.readline().decode()
        assert line.strip().isdigit(), f"the parent program failed: {line}{parent.stdout.read().decode()}"
        child_pid = int(line)
        try:
            spawned[-1] = (parent, psutil.Process(child_pid))
        except psutil.NoSuchProcess:
            pass
        return parent, child_pid, marker

    try:
        yield run
    finally:
        for parent, child in spawned:
            if parent.poll() is None:
                parent.kill()
            parent.wait(10)
            parent.stdout.close()
            if child is not None:
                try:
                    child.kill()  # psutil checks it is still the same process, not a reused pid
                except psutil.NoSuchProcess:
                    pass


@pytest.mark.skipif(not LINUX, reason="PDEATHSIG (prctl PR_SET_PDEATHSIG) exists on Linux only")
def test_a_sigkilled_parent_leaves_no_child_behind(parent_program):
    parent, child_pid, marker = parent_program("sleep")
    assert running(child_pid) and psutil.Process(child_pid).ppid() == parent.pid
    parent.send_signal(signal.SIGKILL)
    assert parent.wait(10) == -signal.SIGKILL
    assert wait_until(lambda: not running(child_pid), timeout=5), (
        f"child {child_pid} outlived its SIGKILLed parent")
    assert not marker.exists()  # it was the kernel's SIGKILL, not a reap by the parent


def test_a_parent_that_exits_reaps_its_children_at_exit(parent_program):
    parent, child_pid, marker = parent_program("exit")
    assert parent.wait(10) == 0
    assert not running(child_pid)
    assert marker.read_text() == "SIGTERM"  # reaped gracefully by reap_all() at interpreter exit


def test_a_sigterm_to_the_parent_reaps_its_children(parent_program):
    parent, child_pid, marker = parent_program("sleep")
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(10) == 128 + signal.SIGTERM
    assert not running(child_pid)
    assert marker.read_text() == "SIGTERM"


PORT_HOLDER = """
    import socket, subprocess, sys, time
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    # a grandchild inherits the listening socket: killing only the child would leak the port
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=[sock.fileno()])
    print("port", sock.getsockname()[1], flush=True)
    time.sleep(60)
"""


def test_a_port_bound_by_a_killed_child_is_free_afterwards(tmp_path, started):
    child = started(script(tmp_path, "holder", PORT_HOLDER), name="holder")
    wait_for_output(child, "port ")
    port = int(child.output().split("port ")[1].split()[0])
    assert wait_until(lambda: len(child.tree()) == 2, timeout=10)
    holders = {p.pid for p in child.tree() for c in p.net_connections(kind="inet")
               if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert holders == {p.pid for p in child.tree()}  # child and grandchild both hold it

    child.kill()
    assert not port_open(port)
    with socket.socket() as sock:  # no SO_REUSEADDR: nothing may hold the port at all
        sock.bind((HOST, port))
        sock.listen()
