"""Lab 06's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab06/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the checks
  its bug blocks say "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_*) passes every check;
- every run gives a verdict (never an internal error) within its time budget, and leaves no process
  behind (the workers, the fork server, the replay, the sink).

The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py.
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("06")
EVERY_CHECK = tuple(c.name for c in LAB.checks)

VARIANTS = [
    Variant("no_idempotency_key", changed=("activities.py",), blocked=("keys-per-call",), fails={
        "one-delivery": ("The notification to #sales was delivered 2 times", "without an Idempotency-Key header"),
    }),
    Variant("workflow_id_key", changed=("activities.py",), fails={
        "keys-per-call": ("was delivered 0 times", "is the same as the one for #"),
    }),
    Variant("write_sql_allowed", changed=("activities.py",), fails={
        "write-refused": ("The sales dataset changed: a write got through query_database", "rows per region now"),
    }),
    Variant("plain_function_tool", changed=("workflows.py",), blocked=("write-refused",), fails={
        "tools-as-activities": ("did not run as activities in the scripted order",
                                "they ran inside the workflow, not as activities"),
    }),
    Variant("llm_in_tool_activity", changed=("activities.py",), fails={
        "model-turns-once": ("called the LLM 4 more time(s), outside the agent's turns", "(after the kill)"),
    }),
    Variant("client_at_import", changed=("workflows.py",), blocked=EVERY_CHECK, fails={
        "agent-turns": ("Temporal's sandbox refused your workflow module", "Restriction state not present"),
        "crash-after-send": ("Temporal's sandbox refused your workflow module",),
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
