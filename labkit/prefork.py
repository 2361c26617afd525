"""Start `python -m <module>` programs fast, by forking them from a pre-warmed interpreter.

A check that runs many short student processes pays the same import bill each
time: ``import langgraph.graph`` alone is about a second of CPU, so lab 03's
seven processes spent most of the check importing. The fork server imports a
fixed list of *third-party* modules once (never any student code), then forks
one child per request. Each child is a separate OS process, as real as one
started with exec: its own pid and memory, its own environment, working
directory, sys.path and argv set as `python -m` would set them, the student's
package imported fresh, and an ordinary interpreter exit (atexit, finalizers,
exit status; a signal kills it like any process). The grader still owns every
child: the server runs as a ManagedProcess, each child dies with the server
(PDEATHSIG) and in its own process group, with the student limits and sandbox
(labkit.limits) the client sends; the server itself is not confined.

Set LAB_PREFORK=0 to start every program with a plain exec instead.

Protocol: one unix-socket connection per child, one JSON line each way:
  -> {"module", "args", "env", "cwd", "log", "limits"}     <- {"pid": N}     <- {"exit": status}
(status as subprocess reports it: negative for a signal).
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys

# --- the server (runs as `python -m labkit.prefork SOCKET MODULE...`; stdlib only) ---------------


def _serve(sock_path: str, preload: list[str]) -> dict | None:
    """Preload, then fork a child per request. Returns only in a child, with its request."""
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as err:  # a missing optional module only costs speed
            print(f"prefork: could not preload {name}: {err}", file=sys.stderr, flush=True)
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    base_path = [p for p in sys.path[1:] if p not in pythonpath]

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path + ".tmp")
    listener.listen(64)  # before the rename: a client that sees the path must find it listening
    os.rename(sock_path + ".tmp", sock_path)  # appears only once the preloads are done
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    buffers: dict[socket.socket, bytes] = {}
    server_pid = os.getpid()
    while True:
        for key, _ in selector.select(timeout=0.005):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                if not _from_grader(conn):  # a student process found the socket: no fork for it
                    conn.close()
                    continue
                buffers[conn] = b""
                selector.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            data = conn.recv(1 << 20)
            if not data:  # the grader hung up before asking
                selector.unregister(conn)
                buffers.pop(conn, None)
                conn.close()
                continue
            buffers[conn] += data
            if b"\n" not in buffers[conn]:
                continue
            request = json.loads(buffers.pop(conn).split(b"\n", 1)[0])
            selector.unregister(conn)
            pid = os.fork()
            if pid == 0:
                selector.close()
                listener.close()
                for other in [*children.values(), *buffers]:
                    other.close()
                _become_child(request, server_pid, base_path, conn)
                return request
            children[pid] = conn
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                try:
                    conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


def _from_grader(conn: socket.socket) -> bool:
    """Only the process that started the server (the check) may ask it for a child. A student's
    process can reach the socket (same user; Landlock does not cover connecting to a unix socket)
    and would otherwise get a child with the limits of its choosing."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # not Linux: no sandbox to escape either
    credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    peer_pid, _, _ = struct.unpack("3i", credentials)
    return peer_pid == os.getppid()


def _become_child(request: dict, server_pid: int, base_path: list[str], conn: socket.socket) -> None:
    import ctypes

    conn.close()
    os.setsid()  # own process group, as proc.start gives every program
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # die with the server
        if os.getppid() != server_pid:
            os._exit(70)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.chdir(request["cwd"])
    from labkit import limits  # stdlib only; the repo is on the server's PYTHONPATH

    limits.confine_this_process(request.get("limits"))  # student code: its limits and sandbox
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    pythonpath = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *pythonpath, *base_path]  # what `python -m` would have
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    sys.argv = [request["module"], *request["args"]]
    importlib.invalidate_caches()


# --- the client (the grader's side) --------------------------------------------------------------


class Child:
    """A program the fork server started; the same surface as proc.ManagedProcess."""

    def __init__(self, conn: socket.socket, pid: int, name: str, log_path):
        self.conn, self.pid, self.name, self.log_path = conn, pid, name, log_path
        self._buffer = b""
        self._code: int | None = None
        self.killed_with = None

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} (forked) {'running' if self.alive else 'exited'}>"

    def _poll(self, timeout: float | None = 0.0) -> int | None:
        if self._code is not None:
            return self._code
        self.conn.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                data = self.conn.recv(4096)
                if not data:
                    self._code = self._code if self._code is not None else -signal.SIGKILL
                    return self._code
                self._buffer += data
        except (BlockingIOError, socket.timeout):
            return None
        self._code = int(json.loads(self._buffer.split(b"\n", 1)[0])["exit"])
        self.conn.close()
        return self._code

    @property
    def alive(self) -> bool:
        return self._poll() is None

    @property
    def returncode(self) -> int | None:
        return self._poll()

    def wait(self, timeout: float | None = None) -> int | None:
        return self._poll(timeout)

    def output(self) -> str:
        from pathlib import Path

        return Path(self.log_path).read_text(errors="replace") if Path(self.log_path).exists() else ""

    def signal_tree(self, sig) -> None:
        # The child itself first: just after the fork it may not have its own group yet.
        for send in (os.kill, os.killpg):
            try:
                send(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self) -> None:
        self.killed_with = signal.SIGKILL
        self.signal_tree(signal.SIGKILL)
        self._poll(5)

    def stop(self, grace: float = 3.0) -> None:
        if self.alive:
            self.signal_tree(signal.SIGTERM)
            if self._poll(grace) is None:
                self.kill()


class ForkServer:
    """One pre-warmed interpreter for a check; `start()` forks a student program from it."""

    def __init__(self, workdir, preload: list[str], env: dict[str, str] | None = None):
        from pathlib import Path

        import tempfile

        self.workdir = Path(workdir)
        self.preload = list(preload)
        self.env = env
        # A unix socket path must fit in ~104 bytes; pytest's temp dirs can be longer.
        self._socket_dir = tempfile.mkdtemp(prefix="lab-fork-")
        self.socket_path = os.path.join(self._socket_dir, "sock")
        self.process = None

    def launch(self) -> ForkServer:
        from pathlib import Path

        from . import proc

        repo = str(Path(__file__).resolve().parent.parent)
        env = dict(self.env if self.env is not None else os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.process = proc.start([sys.executable, "-m", "labkit.prefork", self.socket_path, *self.preload],
                                  name="prefork", log_path=self.workdir / "prefork.log", env=env)
        return self

    def wait_ready(self, timeout: float = float(os.environ.get("LAB_START_HANG_S", "300"))) -> ForkServer:
        import time

        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket_path):
            if not self.process.alive or time.monotonic() > deadline:
                raise RuntimeError(f"the fork server did not start:\n{self.process.output()[-2000:]}")
            time.sleep(0.01)
        return self

    def start(self, module: str, args: list[str], *, name: str, log_path, env: dict[str, str],
              cwd) -> Child:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.socket_path)
        from dataclasses import asdict

        from . import limits

        request = {"module": module, "args": list(args), "env": dict(env), "cwd": str(cwd),
                   "log": str(log_path), "limits": asdict(limits.policy())}
        conn.sendall(json.dumps(request).encode() + b"\n")
        buffer = b""
        conn.settimeout(30)
        while b"\n" not in buffer:
            data = conn.recv(4096)
            if not data:
                raise RuntimeError(f"the fork server closed the connection:\n{self.process.output()[-2000:]}")
            buffer += data
        pid = int(json.loads(buffer.split(b"\n", 1)[0])["pid"])
        child = Child(conn, pid, name, log_path)
        child._buffer = buffer.split(b"\n", 1)[1]
        return child

    def stop(self) -> None:
        import shutil

        if self.process is not None:
            self.process.stop(grace=2)
            self.process = None
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def enabled() -> bool:
    return os.environ.get("LAB_PREFORK", "1") not in ("0", "no", "false") and hasattr(os, "fork")


def _run_child(module: str) -> None:
    """Run the program as `python -m module` would, then exit the way the interpreter does.

    The exit skips only the last stage, tearing down every module: in a forked child
    that touches the whole inherited heap (copy-on-write) and costs seconds.
    """
    import atexit
    import runpy
    import threading

    code = 0
    try:
        from labkit import attribution  # student code: tie its requests and attempts to it

        if attribution.enabled():
            attribution.install(module)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    # The exception and its frames are gone here: generators they held have been closed,
    # as at a normal exit. Then: join non-daemon threads, run atexit handlers, flush.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


if __name__ == "__main__":
    _request = _serve(sys.argv[1], sys.argv[2:])
    if _request is not None:  # a child: run the program exactly as `python -m module args` would
        _run_child(_request["module"])
