"""Without the Restate server (no Node.js, no `npm ci`), labkit.restate says why and starts nothing."""

from __future__ import annotations

import pytest

from labkit import proc, restate


@pytest.mark.parametrize("value", ["none", "/nonexistent/restate-server"])
def test_a_hidden_or_missing_binary_is_reported_with_what_to_install(monkeypatch, tmp_path, value):
    """Given LAB_RESTATE_SERVER hiding the binary (as on a machine without Node.js) or naming none,
    When the kit is asked for the server,
    Then unavailable() gives a reason that says what to install, start() raises RestateUnavailable,
    And no process was started."""
    monkeypatch.setenv(restate.BINARY_ENV, value)
    reason = restate.unavailable()
    assert reason and "Node.js" in reason and "make setup" in reason, reason
    before = set(p.pid for p in proc.live())
    with pytest.raises(restate.RestateUnavailable):
        restate.RestateServer(tmp_path / "restate").start()
    assert set(p.pid for p in proc.live()) == before


def test_the_npm_package_suffix_names_this_platform():
    """Given this machine, Then the npm package suffix is <os>-<arch> as @restatedev publishes them."""
    system, arch = restate._npm_platform().split("-")
    assert system in ("linux", "darwin") and arch in ("x64", "arm64")
