"""Without the Restate server (no Node.js, no `npm ci`), Lab 07 is reported NOT CHECKED, never failed or passed.

The kit reads LAB_RESTATE_SERVER: `none` hides the binary, as on a machine without Node.js. The
mechanism is general (labkit.services.unavailable for each course.toml `services` name, applied by
the pytest plugin), so no check and no lab-specific branch in labkit decides it.
"""

from __future__ import annotations

from selftest import run_check

from labkit import course, restate

LAB = course.load().lab("07")


def test_every_check_is_not_checked_with_the_reason_when_restate_server_is_missing(tmp_path):
    """Given the reference solution and no restate-server on this machine (hidden),
    When Lab 07's check runs,
    Then every check is NOT CHECKED, each saying the server is missing and what to install,
    And the run is sound: a verdict, exit status 1, nothing left running (run_check asserts it)."""
    run = run_check(LAB, tmp_path, solution=True, env={restate.BINARY_ENV: "none"})
    assert run.returncode == 1, run.describe()
    for name, record in run.records.items():
        assert record["outcome"] == "failed" and record["blocked"], f"{name}: {record}\n{run.describe()}"
        assert record["message"].startswith("not checked: the Restate server is hidden"), record["message"]
        assert "Node.js" in record["message"] and "make setup" in record["message"], record["message"]
