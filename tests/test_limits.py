"""labkit.limits: what a confined student process may and may not do, and that confining it never
breaks a correct program (an inherited lower hard limit, multiprocessing's locks).

The hostile end-to-end cases are in tests/test_grading_hostile.py; these are the unit facts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labkit import limits

REPO = Path(__file__).resolve().parent.parent
needs_landlock = pytest.mark.skipif(limits.landlock_abi() < 1, reason="the kernel has no Landlock")


def confined(program: str, *, writable: Path | None = None, before: str = "") -> subprocess.CompletedProcess:
    """Run `program` in a child confined by labkit.limits, from a fresh interpreter that first runs
    `before` (e.g. lowering its own limits) and, with `writable`, turns the sandbox on."""
    parent = textwrap.dedent(f"""\
        import subprocess, sys
        {before}
        from labkit import limits
        if {str(writable) if writable else None!r}:
            limits.allow_writes_under({str(writable)!r})
        child = limits.popen_confined([sys.executable, "-c", {program!r}], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        print(child.communicate(timeout=30)[0], end="")
        sys.exit(child.returncode)
        """)
    return subprocess.run([sys.executable, "-c", parent], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_lower_hard_limit_inherited_from_the_grader_is_kept_not_refused():
    """Given a grader whose own hard RLIMIT_DATA is 3 GiB, below nothing and above the default,
    When it starts a student process with the default policy (2 GiB), Then the process starts with
    2 GiB; and Given a hard limit of 1.5 GiB, below the policy, Then it starts with 1.5 GiB (lowering
    is always allowed, raising would fail the start)."""
    for hard_mib, expected_mib in ((3072, limits.DEFAULT_MEMORY_MB), (1536, 1536)):
        done = confined("import resource; print(resource.getrlimit(resource.RLIMIT_DATA)[1] >> 20)",
                        before=f"import resource; resource.setrlimit(resource.RLIMIT_DATA, ({hard_mib} << 20,) * 2)")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip() == str(expected_mib), done.stdout


@needs_landlock
def test_a_sandboxed_process_writes_only_where_it_may(tmp_path):
    """Given the sandbox on for `allowed`, When the confined process writes there, in /dev/shm through
    a multiprocessing lock, and next to `allowed`, Then the first two work and the third is refused."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside.txt"
    allowed.mkdir()
    program = textwrap.dedent(f"""\
        import multiprocessing, pathlib
        pathlib.Path({str(allowed / "in.txt")!r}).write_text("ok")
        multiprocessing.Lock()
        try:
            pathlib.Path({str(outside)!r}).write_text("escaped")
        except PermissionError:
            print("refused")
        """)
    done = confined(program, writable=allowed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "refused" and (allowed / "in.txt").read_text() == "ok", done.stdout
    assert not outside.exists()


def test_a_confined_process_has_no_capabilities():
    """Given a confined process (even one started by root), Then its effective capabilities are none."""
    done = confined("print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])")
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout.strip(), 16) == 0, done.stdout
