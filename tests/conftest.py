"""The project's own tests (not the checks: those have checks/conftest.py).

A self-test makes whole check runs (tests/selftest.py: run_check), each bounded by its own hang
limit, which kills a stuck run and shows what it printed last. pytest-timeout's default (pyproject:
120 s, the per-check limit of a check run) would cut such a test short first, with a stack trace of
the waiting test instead of the run's tail; so every test of a module that uses run_check gets a
pytest timeout above the run's hang limit, unless it sets its own.
"""

from __future__ import annotations

import pytest
import selftest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        uses_runs = any(getattr(module, name, None) in (selftest.run_check, selftest.run_variant)
                        for name in ("run_check", "run_variant"))
        if uses_runs and not any(m.name == "timeout" for m in item.own_markers):
            item.add_marker(pytest.mark.timeout(selftest.timeout_for_runs()))
