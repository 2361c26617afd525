"""Replay one workflow history (JSON on stdin) against a module's workflow classes.

    python -m labkit.replay --root DIR --module pkg.workflows --workflow-id ID < history.json

Prints one JSON line: {"ok": ..., "error": ..., "detail": ..., "workflows": [...]}.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import traceback


def workflow_classes(module) -> list[type]:
    from temporalio.workflow import _Definition

    found: list[type] = []
    for obj in vars(module).values():  # a class bound to two names (an alias) counts once
        if isinstance(obj, type) and obj not in found and _Definition.from_class(obj) is not None:
            found.append(obj)
    return found


async def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--module", required=True)
    parser.add_argument("--workflow-id", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    try:
        module = importlib.import_module(args.module)
    except BaseException as err:  # the student's module may fail in any way
        return {"ok": False, "error": f"importing {args.module} failed: {type(err).__name__}: {err}",
                "detail": traceback.format_exc(limit=-3)}
    classes = workflow_classes(module)
    if not classes:
        return {"ok": False, "error": f"{args.module} defines no @workflow.defn class"}
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    history = WorkflowHistory.from_json(args.workflow_id, sys.stdin.read())
    names = [c.__name__ for c in classes]
    try:
        result = await Replayer(workflows=classes).replay_workflow(history, raise_on_replay_failure=False)
    except Exception as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "workflows": names}
    if result.replay_failure is not None:
        failure = result.replay_failure
        return {"ok": False, "error": f"{type(failure).__name__}: {failure}", "workflows": names}
    return {"ok": True, "workflows": names}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
