"""Lab 01's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab01/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the check that owns the bug, with its teaching message; when the bug keeps
  the crash scenario from finishing, every other check says so ("not checked: the crash scenario
  did not finish"); otherwise every other check passes;
- the differently shaped correct variants (good_*) pass every check: a grader that only accepts
  the reference's shape is wrong;
- bad input (a syntax error, a missing function, a worker that never polls, a hanging activity)
  still gets a clear verdict, in time, with nothing left running.

The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py.
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("01")
ALL = tuple(c.name for c in LAB.checks)  # blocked=ALL: the scenario did not finish, nothing else ran
BLOCKED = "not checked: the crash scenario did not finish"

VARIANTS = [
    # --- the concepts: each lands on the check that teaches it --------------------------------
    Variant("llm_in_parse_json", changed=("activities.py", "workflows.py"), fails={
        "llm-called-once": ("call_llm reached the LLM 2 times in run A",),
        # there is no separate call_llm step any more
        "activities-completed-once": ("are not call_llm → parse_json → save_to_db", "parse_json (completed, attempt 2)"),
    }),
    Variant("llm_reask_in_parse_json", changed=("activities.py",), fails={
        "llm-called-once": ("The LLM was called 4 more time(s) with a prompt that is neither run's text",
                            "Return only the JSON object"),
    }),
    Variant("no_retry_policy", changed=("workflows.py",), fails={
        "retry-policy": ("call_llm was scheduled with a different retry policy",
                         "maximum_attempts=0, initial_interval_s=1, backoff_coefficient=2"),
    }),
    Variant("other_retry_policy", changed=("workflows.py",), fails={
        "retry-policy": ("call_llm was scheduled with a different retry policy",
                         "maximum_attempts=5, initial_interval_s=2, backoff_coefficient=2"),
    }),
    Variant("no_deliberate_failure", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("The workflow finished without any retry", "parse_json completed on attempt 1"),
    }),
    Variant("nondeterministic_workflow", changed=("workflows.py",), blocked=ALL, fails={
        "crash-resume": ("Your workflow code failed inside the worker", "[TMPRL1100] Nondeterminism error",
                         "Activity id of scheduled event 'call_llm-"),
    }),
    Variant("non_idempotent_save", changed=("activities.py",), fails={
        "one-row-saved": ("save_to_db is not idempotent",
                          "failed: IntegrityError: UNIQUE constraint failed: analysis.workflow_id"),
    }),
    # A flag in the worker's memory, per workflow id: the restarted worker fails attempt 2 again,
    # and parse_json completes on attempt 3 (the last one maximum_attempts=3 allows).
    Variant("flag_based_failure", changed=("activities.py",), fails={
        "activities-completed-once": ("parse_json failed again on the restarted worker",
                                      "completed on attempt 3"),
    }),
    # One bool for the whole worker: only the first of the two runs fails, the other never retries.
    Variant("global_flag_failure", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("The workflow finished without any retry", "parse_json completed on attempt 1"),
    }),
    # --- bad input: a clear verdict, in time, nothing left running ----------------------------
    Variant("syntax_error", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("Your worker exited before it started polling: SyntaxError",),
    }),
    Variant("missing_function", changed=("worker.py",), blocked=ALL, fails={
        "crash-resume": ("Your worker exited before it started polling: ImportError: cannot import name "
                         "'save_analysis'",),
    }),
    # The worker's blocked event loop never runs its SIGTERM handler: the harness must SIGKILL it.
    Variant("worker_never_polls", changed=("worker.py",), blocked=ALL, budget_s=60, fails={
        "crash-resume": ("Your worker did not start polling within 20 s", "the process is still running"),
    }),
    Variant("hanging_activity", changed=("activities.py",), blocked=ALL, budget_s=60, fails={
        "crash-resume": ("parse_json never reached its retry backoff within 20 s", "call_llm attempt 1 (started)"),
    }),
    # --- correct, and shaped differently from the reference -----------------------------------
    Variant("good_class_activities"),
    Variant("good_start_activity"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path, not_checked=BLOCKED)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    # each variant's __init__.py says in its docstring what the variant is
    assert_solution_plus_marked_bug(LAB, variant, ignore=("__init__.py",))
