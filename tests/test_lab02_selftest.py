"""Lab 02's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab02/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the checks
  its bug blocks say "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_*) passes every check;
- every run gives a verdict (never an internal error) within its time budget, and leaves no process
  behind.

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
        "reject-keeps-reason": ("The rejected run did not end rejected", "'reviewer': 'dave'"),
        "validator-refuses": ("The validator did not refuse an unknown decision", "decide('maybe', carol) -> accepted"),
    }),
    Variant("no_timeout", changed=("workflows.py",), budget_s=60, fails={
        "timeout-expires": ("did not expire within 10 s of its 2 s approval timeout", "'stage': 'awaiting_approval'"),
        "durable-wait": ("The approve run's wait is not one timer of 86400 s", "0 timer(s)"),
    }),
    Variant("polling_sleep", changed=("workflows.py",), fails={
        "durable-wait": ("The approve run's wait is not one timer of 86400 s", "0.5 s (fired)"),
    }),
    Variant("init_in_run", changed=("workflows.py",), budget_s=60, fails={
        "early-signal": ("An approval that arrived before the wait was lost", "'stage': 'awaiting_approval'"),
    }),
    # One dict for the whole worker: erin's early approval approves every run; and a fresh process
    # (the replay) has an empty dict, so the recorded histories no longer replay.
    Variant("global_decision", changed=("models.py", "workflows.py"), blocked=NO_GATE, fails={
        "waits-for-approval": ("The approve run finished before anyone decided", "'reviewer': 'erin'"),
        "history-replays": ("does not replay against your workflow code", "Nondeterminism"),
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
