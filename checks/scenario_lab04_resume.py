"""The operator's resume after a crash, for the Lab 04 sweep: continue a thread from its latest
checkpoint with no new input (LangGraph's `invoke(None, config)`), with the lab's own graph and saver.

    python -m sweep_resume <lab package> <thread> <pause>     (copied next to the graded lab folder)

Lab 04's CLI has no resume command, and neither of its commands is one: `run` starts over with a
new input, and `replay --checkpoint <latest>` writes a *fork* checkpoint (a new step number) and,
from a thread paused before review, runs review without the human. Never run this on a paused
thread: `invoke(None)` continues past an interrupt_before breakpoint (the sweep checks first).
"""

import importlib
import os
import sys


def main() -> None:
    package, thread, pause = sys.argv[1:4]
    graph = importlib.import_module(f"{package}.graph")
    savers = importlib.import_module(f"{package}.savers")
    with savers.open_postgres(os.environ["DATABASE_URL"]) as saver:
        graph.compile_app(saver, pause).invoke(None, {"configurable": {"thread_id": thread}})


if __name__ == "__main__":
    main()
