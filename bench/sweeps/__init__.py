"""Crash-sweep scenarios, one module per lab: what labkit.sweep kills, restarts and audits.

labkit.sweep is the lab-independent engine; the lab-specific parts live here (how to start the
lab's workflows or threads, how to count its rows, how ledger entries map to logical calls).
"""

from __future__ import annotations

SCENARIOS = {"01": "lab01", "02": "lab02", "03": "lab03", "04": "lab04", "05": "lab05", "06": "lab06", "07": "lab07"}


def load(lab: str, **options):
    """The scenario for `lab`, e.g. load("01", workdir=..., subjects=4)."""
    import importlib

    if lab not in SCENARIOS:
        raise SystemExit(f"no crash sweep for lab {lab}: choose one of {', '.join(SCENARIOS)}")
    return importlib.import_module(f"{__name__}.{SCENARIOS[lab]}").Sweep(**options)
