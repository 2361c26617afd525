"""Replay several recorded histories against a module's workflow classes, in one separate process.

    python -m labkit.replays --root DIR --module pkg.workflows < histories.json

stdin: a JSON object {workflow_id: history_json_dict, ...}. Prints one JSON line:
{"ok": bool, "error": str, "workflows": [...], "results": {workflow_id: {"ok": bool, "error": str}}}.
One process for all histories: the student's module is imported once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReplaySetVerdict:
    ok: bool
    error: str = ""
    detail: str = ""
    workflows: list[str] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)  # workflow_id -> {"ok", "error"}

    def failures(self) -> dict[str, str]:
        return {wid: r.get("error", "") for wid, r in self.results.items() if not r.get("ok")}


class ReplaySet:
    """Start early (the import overlaps the scenario), then hand it the histories."""

    def __init__(self, *, root: Path, module: str):
        kit_root = str(Path(__file__).resolve().parent.parent)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "labkit.replays", "--root", str(root), "--module", module],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**env, "PYTHONPATH": f"{root}{os.pathsep}{kit_root}"})

    def verdict(self, histories: dict, timeout: float = 30) -> ReplaySetVerdict:
        """histories: {workflow_id: WorkflowHistory}."""
        payload = json.dumps({wid: h.to_json_dict() for wid, h in histories.items()})
        try:
            out, err = self.popen.communicate(payload, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return ReplaySetVerdict(ok=False, error=f"the replay did not finish within {timeout:.0f} s")
        try:
            return ReplaySetVerdict(**json.loads(out.strip().splitlines()[-1]))
        except (IndexError, ValueError, TypeError):
            return ReplaySetVerdict(ok=False, error="the replay process crashed", detail=(err or out)[-3000:])

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.communicate()


async def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--module", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    try:
        module = importlib.import_module(args.module)
    except BaseException as err:  # the student's module may fail in any way
        return {"ok": False, "error": f"importing {args.module} failed: {type(err).__name__}: {err}",
                "detail": traceback.format_exc(limit=-3)}
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    from .replay import workflow_classes

    classes = workflow_classes(module)
    if not classes:
        return {"ok": False, "error": f"{args.module} defines no @workflow.defn class"}
    names = [c.__name__ for c in classes]
    replayer = Replayer(workflows=classes)
    results = {}
    for workflow_id, raw in json.loads(sys.stdin.read()).items():
        history = WorkflowHistory.from_json(workflow_id, raw)
        try:
            result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        except Exception as err:
            results[workflow_id] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            continue
        failure = result.replay_failure
        results[workflow_id] = ({"ok": True} if failure is None
                                else {"ok": False, "error": f"{type(failure).__name__}: {failure}"})
    return {"ok": all(r["ok"] for r in results.values()), "workflows": names, "results": results}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
