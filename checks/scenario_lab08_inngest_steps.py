"""Lab 08 has no crash sweep, on purpose; importing this module says why (`lab sweep 08`, bench/crash_sweep.py).

A crash sweep (labkit.sweep) kills a lab's processes at random moments, restarts them, and audits that
what was durably recorded is not done again: each LLM call once, except the calls a kill caught in
flight. That needs a record that outlives the killed process. Lab 08 runs on the course's in-process
executor (executor.py, a copy of inngest.experimental.mocked's loop): the memoized step results live in
the memory of the one process a kill ends. After a restart the run starts over and every step runs
again, by design, so every call would be "repeated" and the audit would only restate that the memo is
in memory. What the lab proves within one process (a failed step retried alone, the body called again
per step, one completion event) is `lab check 08`'s. With a real Inngest server the memo is the
server's and a kill of the app would be worth sweeping; that needs the server (`lab check 08 --server
URL`), and a sweep against it is not built.
"""

from __future__ import annotations

from labkit.sweep import NoScenario

# Printed by `lab sweep 08` inside Rich markup: no square brackets in it.
WHY = ("lab 08 has no crash sweep, on purpose: it runs on the course's in-process executor, whose memo of step "
       "results lives in the memory of the one process a kill would end. After a restart the run starts over "
       "and every step runs again, by design: there is nothing durable for a sweep to audit. What the lab "
       "proves within one process (a failed step retried alone, the body re-run per step, one event) is "
       "tested by `lab check 08`; on a real Inngest server the memo is the server's "
       "(`lab check 08 --server URL`)")

raise NoScenario(WHY)
