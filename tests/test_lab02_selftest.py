"""Lab 02's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab02/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the checks
  its bug blocks say "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_*) passes every check;
- every run gives a verdict (never an internal error) and leaves no process behind; no verdict
  waits on a fixed time (issue 13): a run that waits for nothing that will come is seen as such.

The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py.
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("02")

NO_GATE = ("status-query", "approval-survives-crash", "one-row-after-approval", "signal-recorded-once",
           "reject-keeps-reason", "timeout-expires", "durable-wait", "update-acknowledged", "validator-refuses")

VARIANTS = [
    Variant("approval_ignored", changed=("workflows.py",), blocked=NO_GATE, fails={
        "waits-for-approval": ("The approve run finished before anyone decided", "before any decision was sent",
                               "rows saved: 1"),
    }),
    Variant("save_before_approval", changed=("workflows.py",), fails={
        "waits-for-approval": ("A row was saved before anyone approved it", "save_to_db had been scheduled"),
        "approval-survives-crash": ("The save did not run on the new worker",),
        "reject-keeps-reason": ("The rejected run did not end rejected - and it saved a row",),
        "timeout-expires": ("The timed-out run did not end expired with nothing saved",
                            "save_to_db scheduled 1 time(s)"),
    }),
    Variant("decision_applied_twice", changed=("workflows.py",), fails={
        "reject-keeps-reason": ("The rejected run did not end rejected", "'reviewer': 'dave-"),
        "validator-refuses": ("The validator did not refuse an unknown decision", "-> accepted"),
        # the unknown decision it let through decided the run: the status moved on to saving
        "status-query": ("The status changed after a decision the validator should have refused",),
    }),
    # No timer at all: the expire run is idle with nothing due, a state seen at once (no wall-clock slack).
    Variant("no_timeout", changed=("workflows.py",), fails={
        "timeout-expires": ("Nobody decided, and the run did not expire", "timers pending: none",
                            "'stage': 'awaiting_approval'"),
        "durable-wait": ("The approve run's wait is not one timer of 86400 s", "0 timer(s)"),
    }),
    Variant("polling_sleep", changed=("workflows.py",), fails={
        "durable-wait": ("The approve run's wait is not one timer of 86400 s", "0.5 s (fired)"),
    }),
    Variant("init_in_run", changed=("workflows.py",), fails={
        "early-signal": ("An approval that arrived before the wait was lost", "'stage': 'awaiting_approval'"),
    }),
    # Issue 14 class 6: one dict for the whole worker (the sandbox turned off so the module is shared):
    # erin's early approval approves every run; and a fresh process (the replay) has an empty dict, so
    # the recorded histories no longer replay.
    Variant("global_decision", changed=("workflows.py",), blocked=NO_GATE, fails={
        "waits-for-approval": ("The approve run finished before anyone decided", "'reviewer': 'erin-"),
        "history-replays": ("does not replay against your workflow code", "Nondeterminism"),
    }),
    # Issue 14 class 7: a status answer built once and kept; queried after each change, it goes stale.
    Variant("cached_status", changed=("workflows.py",), fails={
        "status-query": ("the status query still answers as before", "while the approved run saved",
                         "'stage': 'awaiting_approval'"),
    }),
    # Issue 14 class 7: a validator that refuses the one unknown decision its author tried ("maybe");
    # the check's unknown decisions are drawn per run, never "maybe". The first one it lets through
    # decides the run, so carol's approval is then refused as a second decision.
    Variant("validator_special_cases", changed=("workflows.py",), fails={
        "validator-refuses": ("The validator did not refuse an unknown decision", "-> accepted"),
        "update-acknowledged": ("The decide update was not accepted", "already decided"),
        "status-query": ("The status changed after a decision the validator should have refused",),
    }),
    # Issue 14 message: the idea (activities), not "mark the import as pass through".
    Variant("save_called_directly", changed=("workflows.py",), blocked=("history-replays",), fails={
        "approval-survives-crash": ("Your workflow ran a side effect itself instead of scheduling an activity",
                                    "Call it with workflow.execute_activity: side effects belong in activities"),
        "one-row-after-approval": ("Your workflow ran a side effect itself",),
        "durable-wait": ("Your workflow ran a side effect itself",),
        "update-acknowledged": ("Your workflow ran a side effect itself",),
        "early-signal": ("Your workflow ran a side effect itself",),
    }),
    Variant("good_alt_shape"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant)
