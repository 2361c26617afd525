"""Run the research agent, review it from another process, and travel in its history.

    python -m lab04_langgraph_hitl.cli run      --thread T [--query Q]        runs until the pause, exits
    python -m lab04_langgraph_hitl.cli show     --thread T [--checkpoint ID]  the state, and what runs next
    python -m lab04_langgraph_hitl.cli approve  --thread T [--summary TEXT]   the human's decision
    python -m lab04_langgraph_hitl.cli history  --thread T                    every checkpoint, every branch
    python -m lab04_langgraph_hitl.cli replay   --thread T --checkpoint ID    run again from a past checkpoint
    python -m lab04_langgraph_hitl.cli fork     --thread T --checkpoint ID --query Q

Every command takes --pause before|interrupt (default: $LAB04_PAUSE, else "before"): how the
graph pauses for review. Use the same one for every command on a thread. PostgreSQL at
DATABASE_URL (default: the `lab up` server); --sqlite FILE uses a SQLite file instead.
Each command is a new process: nothing survives from one to the next except what the
checkpointer saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from langchain_core.messages import HumanMessage

from . import human, timetravel
from .graph import compile_app
from .savers import open_postgres, open_sqlite

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5433/postgres"  # `lab up`
DEFAULT_QUERY = "quantum error correction"


def open_saver(args):
    if args.sqlite:
        return open_sqlite(args.sqlite)
    return open_postgres(os.environ.get("DATABASE_URL", DEFAULT_URL))


def show_state(app, config: dict) -> None:
    """The state at `config` as JSON, then where the thread stands."""
    snapshot = app.get_state(config)
    values = dict(snapshot.values)
    values["messages"] = [f"{m.type}: {m.content}" for m in values.get("messages", [])]
    print(json.dumps(values, indent=2, default=str))
    thread = config["configurable"]["thread_id"]
    if snapshot.interrupts:
        print(f"\nPAUSED inside {', '.join(snapshot.next)} at interrupt(): waiting for a decision.")
    elif snapshot.next:
        print(f"\nPAUSED before {', '.join(snapshot.next)}.")
    else:
        print("\nFINISHED: nothing left to run.")
    if "review" in snapshot.next:
        pause = " --pause interrupt" if snapshot.interrupts else ""
        print(f"Approve it from any terminal:  python -m {__package__}.cli approve --thread {thread}{pause} "
              f"[--summary 'edited text']")


def cmd_run(args, app) -> None:
    config = timetravel.thread_config(args.thread)
    app.invoke({"messages": [HumanMessage(content=args.query)]}, config)
    show_state(app, config)


def cmd_show(args, app) -> None:
    show_state(app, timetravel.thread_config(args.thread, args.checkpoint))


def cmd_approve(args, app) -> None:
    config = timetravel.thread_config(args.thread)
    waiting = app.get_state(config).next
    if "review" not in waiting:
        sys.exit(f"thread {args.thread!r} is not waiting for review (next: {list(waiting) or 'nothing'})")
    human.approve(app, config, summary=args.summary, pause=args.pause)
    show_state(app, config)


def cmd_history(args, app) -> None:
    """Every checkpoint of the thread, oldest first; a parent that is not the row above starts a branch."""
    snapshots = timetravel.history(app, args.thread)
    print(f"{'step':>4}  {'source':<6}  {'checkpoint id':<36}  {'parent':<8}  {'next':<10}  {'status':<10}  summary")
    previous = None
    for snap in snapshots:
        checkpoint = snap.config["configurable"]["checkpoint_id"]
        parent = (snap.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        parent_note = "-" if parent is None else ("above" if parent == previous else "…" + parent[-6:])
        summary = (snap.values.get("summary") or "")[:40]
        print(f"{snap.metadata.get('step'):>4}  {snap.metadata.get('source', ''):<6}  {checkpoint:<36}  "
              f"{parent_note:<8}  {','.join(snap.next) or '-':<10}  {snap.values.get('status') or '-':<10}  {summary}")
        previous = checkpoint
    print(f"{len(snapshots)} checkpoints for thread {args.thread!r}")


def cmd_replay(args, app) -> None:
    timetravel.replay(app, args.thread, args.checkpoint)
    show_state(app, timetravel.thread_config(args.thread))


def cmd_fork(args, app) -> None:
    timetravel.fork(app, args.thread, args.checkpoint, args.query)
    show_state(app, timetravel.thread_config(args.thread))


COMMANDS = {"run": cmd_run, "show": cmd_show, "approve": cmd_approve, "history": cmd_history,
            "replay": cmd_replay, "fork": cmd_fork}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in COMMANDS.items():
        sub = commands.add_parser(name)
        sub.add_argument("--thread", required=True, help="the thread id: which run")
        sub.add_argument("--pause", choices=["before", "interrupt"], default=os.environ.get("LAB04_PAUSE", "before"),
                         help="how the graph pauses for review: interrupt_before, or interrupt() in the node")
        sub.add_argument("--sqlite", metavar="FILE", help="use this SQLite file instead of PostgreSQL")
        sub.set_defaults(handler=handler)
        if name in ("run", "fork"):
            sub.add_argument("--query", default=DEFAULT_QUERY if name == "run" else None, required=name == "fork",
                             help="the question to research")
        if name in ("show", "replay", "fork"):
            sub.add_argument("--checkpoint", required=name != "show", help="a checkpoint id (see `history`)")
        if name == "approve":
            sub.add_argument("--summary", help="approve this text instead of the summary the LLM wrote")
    args = parser.parse_args(argv)
    with open_saver(args) as saver:
        args.handler(args, compile_app(saver, args.pause))


if __name__ == "__main__":
    main()
