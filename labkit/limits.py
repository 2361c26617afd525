"""Resource limits and a write sandbox for student processes (never for the course's servers).

Every program that runs student code (a worker, a graph run, a replay, a fork-server child)
gets, between fork and exec (or right after the fork server's fork):

- rlimits: RLIMIT_DATA (heap and other private writable memory; default 2048 MiB, about 12x the
  largest peak measured in the labs' reference solutions: thread stacks count too, each thread
  reserves RLIMIT_STACK's 8 MiB, so 2 GiB leaves room for ~200 threads), RLIMIT_CPU (seconds of CPU; a busy loop
  that escaped everything else still ends), RLIMIT_FSIZE (no file over 512 MiB), RLIMIT_CORE = 0.
  RLIMIT_DATA rather than RLIMIT_AS: Temporal's Rust core and glibc reserve a 64 MiB malloc arena
  per thread (a worker's address space is ~1 GiB and grows with the machine's cores), but
  reservations are not data until they are written to. RLIMIT_NPROC is not set: the kernel does
  not enforce it for root, and graders run as root (in containers, on Gradescope). A limit is
  never set above the hard limit the grader itself inherited (that would fail the start).
- Landlock, when the kernel has it and a check session asked for it (`allow_writes_under`): the
  process may write only under the session's temp dirs, /dev/shm (multiprocessing's locks and
  queues live there) and /dev/null; it may not bind a TCP port
  (ABI 4+), signal processes outside its sandbox (ABI 6+), or ptrace / read the memory, environment
  or open files (/proc/PID/fd) of any process outside it (every ABI). Landlock survives exec and
  fork, and a process cannot leave it.
- no capabilities (even as root): so it cannot raise its hard rlimits back, and Landlock's ptrace
  rule holds (CAP_SYS_PTRACE would exempt it).

Environment (read by the process that starts student code): LAB_STUDENT_MEMORY_MB,
LAB_STUDENT_CPU_S, LAB_STUDENT_FILE_MB; LAB_SANDBOX=0 turns Landlock off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field

MIB = 1 << 20
DEFAULT_MEMORY_MB = 2048
DEFAULT_CPU_S = 300
DEFAULT_FILE_MB = 512

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every architecture.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_WRITE_FILE = 1 << 1
_FS_REMOVE_DIR, _FS_REMOVE_FILE = 1 << 4, 1 << 5
_FS_MAKE = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_BIND_TCP = 1  # ABI 4
_SCOPE_SIGNAL = 2  # ABI 6
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
# capset's number differs by architecture; where we do not know it, capabilities are left alone.
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "arm64": 91, "riscv64": 91}.get(os.uname().machine)
_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _libc is not None:
    _libc.syscall.restype = ctypes.c_long
    _libc.prctl  # resolved now: looking a symbol up between fork and exec is not async-signal-safe


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 40


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (not Linux, too old, disabled)."""
    if _libc is None:
        return 0
    version = _libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(int(version), 0)


@dataclass
class StudentLimits:
    memory_mb: int = DEFAULT_MEMORY_MB
    cpu_s: int = DEFAULT_CPU_S
    file_mb: int = DEFAULT_FILE_MB
    sandbox: bool = True
    writable: list[str] = field(default_factory=list)  # empty: no Landlock (outside a check session)

    @classmethod
    def from_env(cls, env=os.environ) -> "StudentLimits":
        return cls(memory_mb=int(env.get("LAB_STUDENT_MEMORY_MB", DEFAULT_MEMORY_MB)),
                   cpu_s=int(env.get("LAB_STUDENT_CPU_S", DEFAULT_CPU_S)),
                   file_mb=int(env.get("LAB_STUDENT_FILE_MB", DEFAULT_FILE_MB)),
                   sandbox=env.get("LAB_SANDBOX", "1") not in ("0", "no", "false"))

    def rlimits(self) -> list[tuple[int, tuple[int, int]]]:
        wanted = [(resource.RLIMIT_DATA, (self.memory_mb * MIB,) * 2),
                  (resource.RLIMIT_CPU, (self.cpu_s, self.cpu_s + 5)),  # soft: SIGXCPU, hard: SIGKILL
                  (resource.RLIMIT_FSIZE, (self.file_mb * MIB,) * 2),
                  (resource.RLIMIT_CORE, (0, 0))]
        return [(which, _within_hard_limit(which, soft, hard)) for which, (soft, hard) in wanted]

    def describe(self) -> str:
        """One line for teaching messages: what a student process may use."""
        sandbox = ("writes only under the check's temp dirs, no listening TCP port"
                   if self.writable and self.sandbox and landlock_abi() else "no write sandbox")
        return (f"{self.memory_mb} MiB of memory (LAB_STUDENT_MEMORY_MB), {self.cpu_s} s of CPU, "
                f"files up to {self.file_mb} MiB, {sandbox}")


def _within_hard_limit(which: int, soft: int, hard: int) -> tuple[int, int]:
    """Lower a wanted limit to the hard limit this process already has: raising it needs
    CAP_SYS_RESOURCE, and setrlimit would fail in the child, between fork and exec."""
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    return soft, hard


_policy = StudentLimits.from_env()


def policy() -> StudentLimits:
    return _policy


def allow_writes_under(*paths: os.PathLike | str) -> None:
    """Turn the write sandbox on for student processes started from now on: they may write only
    under these folders (a check session's temp dirs)."""
    _policy.writable = sorted({os.path.realpath(p) for p in paths})


def allow_writes_anywhere() -> None:
    """No write sandbox from now on (the end of a check session)."""
    _policy.writable = []


# --- in the new process ---------------------------------------------------------------------------

def _landlock_ruleset(writable: list[str]) -> int:
    """A ruleset fd allowing writes only under `writable` (and /dev/null); -1 without Landlock."""
    abi = landlock_abi()
    if abi < 1:
        return -1
    fs = _FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE
    fs |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(fs, _NET_BIND_TCP if abi >= 4 else 0, _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    file_rights = _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)
    for path, rights in [*((p, fs) for p in writable), ("/dev/shm", fs), (os.devnull, file_rights)]:
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(rights, fd)
                if _libc.syscall(_SYS_ADD_RULE, int(ruleset), _RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
    return int(ruleset)


class Confinement:
    """Prepared in the parent (files opened, ruleset built), applied in the child with syscalls only:
    between fork and exec nothing should allocate much, take locks or open files."""

    def __init__(self, limits: StudentLimits | None = None):
        limits = limits or _policy
        self.rlimits = limits.rlimits()
        self.last_capability = _last_capability() if _libc is not None else -1
        self.no_capabilities = (_CapData * 2)()  # all zero
        use_landlock = limits.sandbox and bool(limits.writable)
        self.ruleset = _landlock_ruleset(limits.writable) if use_landlock else -1

    def apply(self) -> None:
        """In the child: set the rlimits, enter the sandbox. Raises if the sandbox cannot be entered."""
        for which, value in self.rlimits:
            resource.setrlimit(which, value)
        self._drop_capabilities()
        if self.ruleset >= 0:
            if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
            if _libc.syscall(_SYS_RESTRICT_SELF, self.ruleset, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
            os.close(self.ruleset)

    def _drop_capabilities(self) -> None:
        """Root without capabilities: it cannot raise its hard rlimits again (CAP_SYS_RESOURCE), nor
        ptrace or read /proc/PID/{mem,environ,fd} of processes outside the sandbox (CAP_SYS_PTRACE
        exempts a process from Landlock's ptrace rule), nor regain any after exec (bounding set)."""
        if self.last_capability < 0 or _SYS_CAPSET is None:
            return
        for capability in range(self.last_capability + 1):
            _libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)  # fails only without CAP_SETPCAP
        header = _CapHeader(_CAPABILITY_VERSION_3, 0)
        # Dropping every capability is always allowed; should a kernel or seccomp profile refuse it,
        # the program still runs (the limits and the sandbox hold; only root could undo the limits).
        _libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(self.no_capabilities))

    def close(self) -> None:
        """In the parent, once the child has started."""
        if self.ruleset >= 0:
            with contextlib.suppress(OSError):
                os.close(self.ruleset)
            self.ruleset = -1


def confine_this_process(limits: dict | None = None) -> None:
    """Apply a policy sent as a dict (the fork server's children, after their fork)."""
    confinement = Confinement(StudentLimits(**limits) if limits else _policy)
    try:
        confinement.apply()
    finally:
        confinement.close()


def popen_confined(argv, **kwargs) -> subprocess.Popen:
    """subprocess.Popen for a program that runs student code (a replay): limits and sandbox."""
    confinement = Confinement()
    try:
        return subprocess.Popen(argv, preexec_fn=confinement.apply, **kwargs)
    finally:
        confinement.close()


def explain(returncode: int | None, log: str) -> str:
    """A teaching sentence when a student process hit one of these limits, else ""."""
    import signal

    if "MemoryError" in log or "memory allocation of" in log:  # Python's, Rust's
        return (f"It ran out of memory: a student process may use {_policy.memory_mb} MiB "
                "(LAB_STUDENT_MEMORY_MB). Does something grow without bound (a list, a cache, a loop)?")
    if returncode == -signal.SIGXCPU:
        return f"It used up its {_policy.cpu_s} s of CPU (LAB_STUDENT_CPU_S): a busy loop?"
    if "PermissionError" in log or "Operation not permitted" in log:
        return ("Student code runs in a sandbox: it may write only in its working folder and temp dir "
                "(TMPDIR), may not listen on a TCP port, and may not signal or inspect the course's own "
                "processes.")
    return ""
