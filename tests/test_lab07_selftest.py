"""Lab 07's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab07/<name>: the solution's chat.py with ONE bug, marked
  BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the checks
  its bug blocks say "not checked: ..."; every other check passes;
- the differently shaped correct variants (good_*) pass every check;
- every run gives a verdict and leaves no process behind (the services, restate-server, the sink).

The solution, the starter and the TODO markers: tests/test_course_selftest.py. Without the Restate
server (no Node.js) every Lab 07 check is NOT CHECKED: tests/test_lab07_not_checked.py.
"""

from __future__ import annotations

import pytest
from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course, restate

LAB = course.load().lab("07")
EVERY_CHECK = tuple(c.name for c in LAB.checks)
NEEDS_RESTATE = pytest.mark.skipif(restate.unavailable() is not None, reason=str(restate.unavailable()))

VARIANTS = [
    Variant("llm_outside_run", changed=("chat.py",), fails={
        "llm-journaled": ("The model call that had finished before the crash was made again after the restart",
                          "2 requests for A1's first model turn", "not every await"),
        "journal-confirms": ("does not show the three steps as ctx.run entries", "Run entries: ['tool post_message']"),
        # the second kill (B1's post held): the model is asked again, its new call id makes a new key
        "tool-journaled": ("the model call before it was made again, and the post went out twice",
                           "requests for B1's first model turn", "not every await"),
    }),
    Variant("tool_outside_run", changed=("chat.py",), fails={
        "tool-journaled": ("The post to the team chat ran again after the restart", "2 posts to",
                           "the idempotency key stopped the duplicate"),
        "journal-confirms": ("Run entries: ['llm 1', 'llm 2']",),
    }),
    Variant("module_global", changed=("chat.py",), fails={
        "journal-confirms": ("Restate stores no state for session", "a variable of the process is gone"),
        "conversation-in-state": ("Restate stores no conversation for the session",),
        "history-shared": ("history answered with a conversation that was not stored yet",),
    }),
    Variant("fresh_list", changed=("chat.py",), fails={
        "conversation-in-state": ("holds only the latest question: each ask started from an empty list",
                                  "await ctx.get(\"conversation\""),
    }),
    Variant("set_before_loop", changed=("chat.py",), fails={
        "journal-confirms": ("stored state lacks the final reply, the post's result",),
        "conversation-in-state": ("holds the questions but not the model's replies", "call it after the loop"),
    }),
    Variant("history_exclusive", changed=("chat.py",), fails={
        "history-shared": ("history waited for the running ask", "status of the history call while C1 ran: pending",
                           "kind=\"shared\""),
    }),
    Variant("run_name_clock", changed=("chat.py",), blocked=EVERY_CHECK, fails={
        "crash-resume": ("A1's ask cannot finish: its retry does not match its journal", "Journal mismatch",
                         "named from the clock"),
    }),
    # Found first by the crash sweep (seed 2026): the check's first kill lands after the post was journaled,
    # so the check now also kills while the chat holds B1's post ("why one kill is not a proof": the README).
    Variant("uuid_key", changed=("chat.py",), fails={
        "tool-journaled": ("B1's post, retried after the crash, went out under a new Idempotency-Key",
                           "2 delivered", "the key must be the same on every attempt of one tool call"),
    }),
    Variant("good_helpers"),
    Variant("good_run_api"),
]


@NEEDS_RESTATE
@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant)
