"""Replay several recorded histories against a module's workflow classes, in one separate process.

    python -m labkit.replays --root DIR --module pkg.workflows [--plugin module:factory] < histories.json

stdin: a JSON object {workflow_id: history_json_dict, ...}. Prints one JSON line:
{"ok": bool, "error": str, "workflows": [...], "results": {workflow_id: {"ok": bool, "error": str}}}.
One process for all histories: the student's module is imported once.
--plugin names a worker plugin the workflows need to replay (e.g. the OpenAI Agents SDK's
``temporalio.openai_agents:OpenAIAgentsPlugin``, which passes `agents` through the sandbox and
brings its data converter): called with no arguments, it gives a plugin (or a list of them).
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

from labkit import limits


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

    def __init__(self, *, root: Path, module: str, plugin: str | None = None,
                 env: dict[str, str] | None = None):
        kit_root = str(Path(__file__).resolve().parent.parent)
        base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        argv = [sys.executable, "-m", "labkit.replays", "--root", str(root), "--module", module]
        if plugin:
            argv += ["--plugin", plugin]
        self.popen = limits.popen_confined(  # it imports the student's workflows
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**base, **(env or {}), "PYTHONPATH": f"{root}{os.pathsep}{kit_root}"})

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
    parser.add_argument("--plugin", default=None, help="module:factory giving the worker plugin(s) to replay with")
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
    plugins = []
    if args.plugin:
        module_name, _, factory = args.plugin.partition(":")
        made = getattr(importlib.import_module(module_name), factory)()
        plugins = list(made) if isinstance(made, (list, tuple)) else [made]
    replayer = Replayer(workflows=classes, plugins=plugins)
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
