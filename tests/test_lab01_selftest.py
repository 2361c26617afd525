"""Lab 01's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab01/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the check that owns the bug, with its teaching message; when the bug keeps
  the crash scenario from finishing, every other check says so ("not checked: the crash scenario
  did not finish"); otherwise every other check passes;
- the differently shaped correct variants (good_*) pass every check: a grader that only accepts
  the reference's shape is wrong;
- bad input (a syntax error, a missing function, a worker that never polls, a hanging activity)
  still gets a clear verdict, with nothing left running; no verdict waits on a fixed time (issue 13).

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
        "llm-called-once": ("The LLM was called from parse_json attempt 1, not from call_llm, in run A",),
        # there is no separate call_llm step any more
        "activities-completed-once": ("are not call_llm → parse_json → save_to_db", "parse_json (completed, attempt 2)"),
    }),
    # Issue 14 class 8: called once per run, but from parse_json (its reply cached beside the database)
    Variant("llm_cached_in_parse_json", changed=("activities.py",), fails={
        "llm-called-once": ("The LLM was called from parse_json attempt 1, not from call_llm, in run A",
                            "cached on disk"),
    }),
    # parse_json's second opinion replaces the LLM's analysis: the row saved is not the one it gave
    Variant("llm_reask_in_parse_json", changed=("activities.py",), fails={
        "llm-called-once": ("The LLM was called 4 more time(s) with a prompt that is neither run's text",
                            "Return only the JSON object", "from parse_json attempt"),
        "one-row-saved": ("Run A's saved row does not hold the analysis the LLM gave it",),
    }),
    # Issue 14 class 8: the openai client's own retries hide the LLM's 500 from Temporal
    Variant("client_retries", changed=("activities.py",), fails={
        "temporal-owns-retries": ("The openai client retried the failed LLM call by itself: 2 requests in one "
                                  "call_llm attempt", "max_retries=0"),
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
    # Issue 14 message: not "mark the import as pass through"
    Variant("activity_called_directly", changed=("workflows.py",), blocked=ALL, fails={
        "crash-resume": ("Your workflow ran a side effect itself instead of scheduling an activity",
                         "Call it with workflow.execute_activity: side effects belong in activities"),
    }),
    Variant("non_idempotent_save", changed=("activities.py",), fails={
        "one-row-saved": ("save_to_db is not idempotent",
                          "failed: IntegrityError: UNIQUE constraint failed: analysis.workflow_id"),
    }),
    # Issue 14 class 8: the pre-committed row's id is drawn per run, so a constant never matches
    Variant("hardcoded_seeded_id", changed=("activities.py",), fails={
        "one-row-saved": ("save_to_db is not idempotent", "and returned 4242"),
    }),
    # Issue 14 class 5: the row is read back, content included
    Variant("summary_not_saved", changed=("activities.py",), fails={
        "one-row-saved": ("Run A's saved row does not hold the analysis the LLM gave it", "summary=''"),
    }),
    # A flag in the worker's memory, per workflow id: the restarted worker fails attempt 2 again,
    # and parse_json completes on attempt 3 (the last one maximum_attempts=3 allows).
    Variant("flag_based_failure", changed=("activities.py",), fails={
        "activities-completed-once": ("parse_json failed again on the restarted worker",
                                      "completed on attempt 3"),
    }),
    # Issue 14 class 6: the same idea in a file: the restarted worker runs as on another host
    Variant("marker_file_failure", changed=("activities.py",), fails={
        "activities-completed-once": ("parse_json failed again on the restarted worker",
                                      "completed on attempt 3", "a marker file"),
    }),
    # One bool for the whole worker: only the first of the two runs fails, the other never retries.
    Variant("global_flag_failure", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("The workflow finished without any retry", "parse_json completed on attempt 1 in workflow A"),
    }),
    # --- bad input: a clear verdict, nothing left running -------------------------------------
    Variant("syntax_error", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("Your worker exited before it started polling: SyntaxError",),
    }),
    Variant("missing_function", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("Your worker exited before it started polling: ImportError: cannot import name "
                         "'save_to_db'",),
    }),
    # activities.py blocks at import: the worker never polls; the harness finds where and kills it.
    Variant("worker_never_polls", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("The worker never started: your module activities.py did not finish importing",
                         "while not os.path.exists(\"ready\")"),
    }),
    # call_llm never returns: the server's start_to_close_timeout (30 s) says so, at any speed.
    Variant("hanging_activity", changed=("activities.py",), blocked=ALL, fails={
        "crash-resume": ("call_llm attempt 1 of workflow B timed out: it never returned",),
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
