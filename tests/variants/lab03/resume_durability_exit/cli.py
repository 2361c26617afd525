"""Run, crash, resume and inspect the graph from the command line.

    python -m lab03_langgraph_resume.cli run     --thread T [--crash-after transform] [--crash-with exit|kill]
    python -m lab03_langgraph_resume.cli resume  --thread T
    python -m lab03_langgraph_resume.cli history --thread T

PostgreSQL at DATABASE_URL (default: the `lab up` server); add --sqlite FILE to
use a SQLite file instead (part 2). Each command is a new process: nothing
survives from one to the next except what the checkpointer saved.
"""

from __future__ import annotations

import argparse
import json
import os

from . import crash
from .graph import DURABILITY, compile_app
from .savers import open_postgres, open_sqlite

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5433/postgres"  # `lab up`
DEFAULT_TOPIC = "durable execution for LLM agents"


def open_saver(args):
    if args.sqlite:
        return open_sqlite(args.sqlite)
    return open_postgres(os.environ.get("DATABASE_URL", DEFAULT_URL))


def thread_config(thread: str) -> dict:
    return {"configurable": {"thread_id": thread}}


def show(state) -> None:
    print(json.dumps(state, indent=2, default=str))


def cmd_run(args) -> None:
    with open_saver(args) as saver:
        app = compile_app(saver)
        final = crash.run(app, {"topic": args.topic}, thread_config(args.thread), durability=DURABILITY,
                          crash_after=args.crash_after, crash_with=args.crash_with)
        show(final)


def cmd_resume(args) -> None:
    with open_saver(args) as saver:
        app = compile_app(saver)
        # None means "no new input: continue from the thread's last checkpoint".
        final = app.invoke(None, thread_config(args.thread), durability="exit")  # BUG(resume_durability_exit): the run's mode is "sync"
        show(final)


def cmd_history(args) -> None:
    """Every checkpoint of the thread, oldest first: step, source, id, and the node(s) that wrote it."""
    with open_saver(args) as saver:
        tuples = list(saver.list(thread_config(args.thread)))[::-1]
        print(f"{'step':>4}  {'source':<6}  {'checkpoint id':<36}  written by")
        seen_before: dict = {}
        for item in tuples:
            # versions_seen[node] changes in the checkpoint right after that node ran
            seen = item.checkpoint.get("versions_seen", {})
            wrote = sorted(node for node in seen if seen[node] != seen_before.get(node)
                           and node not in ("__input__", "__interrupt__"))
            seen_before = seen
            print(f"{item.metadata.get('step'):>4}  {item.metadata.get('source', ''):<6}  "
                  f"{item.checkpoint['id']:<36}  {', '.join(wrote) or '(the input)'}")
        print(f"{len(tuples)} checkpoints for thread {args.thread!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab03_langgraph_resume.cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("run", cmd_run), ("resume", cmd_resume), ("history", cmd_history)):
        sub = commands.add_parser(name)
        sub.add_argument("--thread", required=True, help="the thread id: which run to save / resume")
        sub.add_argument("--sqlite", metavar="FILE", help="use this SQLite file instead of PostgreSQL")
        sub.set_defaults(handler=handler)
        if name == "run":
            sub.add_argument("--topic", default=DEFAULT_TOPIC)
            sub.add_argument("--crash-after", metavar="NODE", help="die right after this node (e.g. transform)")
            sub.add_argument("--crash-with", choices=["exit", "kill"], default="exit",
                             help="exit: sys.exit(1); kill: SIGKILL itself")
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
