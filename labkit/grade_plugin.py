"""pytest plugin the grader adds (``-p labkit.grade_plugin``): the check report, signed.

The grader starts pytest with a fresh random key on its standard input and reads the
report from pytest's standard output, on one line that carries an HMAC of the report
under that key. The key is read here, at import, before pytest captures anything and
before any student process exists; it is never in an environment variable, a command
line or a file. So a submission cannot forge the report: lines it prints (to its own
log, or even into pytest's output) and files it writes (where it thinks the report is)
carry no valid signature and are ignored. See docs/grading.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

PREFIX = "LAB-GRADE-REPORT"
ENABLE_ENV = "LAB_GRADE_SIGNED"  # "1": read the key from stdin (the value itself is not secret)


def sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def signed_line(key: bytes, report: dict) -> str:
    payload = json.dumps(report, default=str, separators=(",", ":"))
    return f"{PREFIX} {sign(key, payload)} {payload}"


def verified_report(output: bytes | str, key: bytes) -> dict | None:
    """The last report line in `output` whose signature is valid under `key`, or None."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    for line in reversed(text.splitlines()):
        if not line.startswith(PREFIX + " "):
            continue
        try:
            _, mac, payload = line.split(" ", 2)
        except ValueError:
            continue
        if hmac.compare_digest(mac, sign(key, payload)):
            try:
                return json.loads(payload)
            except ValueError:
                return None
    return None


def _read_key() -> tuple[bytes | None, int | None]:
    if os.environ.get(ENABLE_ENV) != "1":
        return None, None
    chunks = []
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    key = b"".join(chunks).strip()
    # Our own copy of the real stdout: pytest's capture replaces fd 1 later.
    return (key or None), os.dup(1)


_KEY, _OUT = _read_key()


def pytest_sessionfinish(session, exitstatus):
    if _KEY is None:
        return
    records = getattr(session.config, "_lab_records", [])
    line = "\n" + signed_line(_KEY, {"records": records, "exitstatus": int(exitstatus)}) + "\n"
    data = line.encode()
    while data:
        written = os.write(_OUT, data)
        data = data[written:]
