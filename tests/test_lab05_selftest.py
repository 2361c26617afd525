"""Lab 05's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab05/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the checks
  its bug keeps from running say "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_alt_shape) passes every check;
- the solution also passes with every worker started by a plain exec (no fork server);
- every run gives a verdict (never an internal error) before its hang limit, and leaves no process
  behind. No run's duration is asserted: the check picks its heartbeat timeout for the machine.

The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py.
"""

from __future__ import annotations

from selftest import (Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_check,
                      run_variant)

from labkit import course

LAB = course.load().lab("05")

VARIANTS = [
    # The text's loop: one page after another. Everything else still works, only slower.
    Variant("sequential_loop", changed=("workflows.py",), fails={
        "parallel-fan-out": ("The pages were extracted one after another, not in parallel",
                             "at most 1 extract_content ran at once"),
    }),
    Variant("no_cap", changed=("workflows.py",), fails={
        "concurrency-cap": ("5 extract_content activities ran at once; the request's max_parallel is 2",),
    }),
    # Class 3 (one value only): a constant cap is too many for max_parallel=2 and too few for 4.
    Variant("fixed_cap", changed=("workflows.py",), fails={
        "parallel-fan-out": ("Only 3 extract_content activities ran at once in the crash run; its max_parallel is 4",
                             "not from a constant"),
        "concurrency-cap": ("3 extract_content activities ran at once; the request's max_parallel is 2",),
    }),
    # One heartbeat, then a plain GET: the held page times out although bytes kept coming, and the
    # cancelled download never hears of the cancellation (an activity learns of it from a heartbeat's answer).
    Variant("single_heartbeat", changed=("activities.py",), fails={
        "heartbeat-loop": ("timed out on its heartbeat although it was downloading all along",),
        "cancellation-honoured": ("never heard of the cancellation: it sent no heartbeat while the page downloaded",),
    }),
    # Class 9: no heartbeat at all; the heartbeat timeout (or the read timeout) still gives the stalled
    # attempt up, but not because progress stopped.
    Variant("silent_download", changed=("activities.py",), fails={
        "heartbeat-loop": ("timed out on its heartbeat although it was downloading all along",),
        "hang-detected": ("The stalled attempt was given up, but it had never heartbeat",),
        "cancellation-honoured": ("never heard of the cancellation: it sent no heartbeat while the page downloaded",),
    }),
    # Nothing checks the heartbeats: the stalled page waits for the read timeout (30 s without a heartbeat
    # timeout) and the dead worker's pages for start_to_close (60 s); both read from the history.
    Variant("no_heartbeat_timeout", changed=("workflows.py",),
            blocked=("no-refetch-after-crash", "llm-called-once", "cost-from-usage", "sources-read"), fails={
        "hang-detected": ("The stalled page was not given up by a heartbeat timeout",
                          "extract_content has no heartbeat_timeout"),
        "crash-mid-fan-out": ("The crash run cannot finish before start_to_close", "no heartbeat_timeout"),
        "retry-policy": ("extract_content was scheduled without a heartbeat_timeout",),
    }),
    # Class 4: nothing runs out of retries... until a page does.
    Variant("lost_page_fails_run", changed=("workflows.py",), blocked=("hang-detected", "sources-read", "cost-from-usage"),
            fails={
        "page-given-up": ("The hang run ended FAILED", "a page that cannot be read is left out, not a failed run"),
    }),
    # Class 5: the right number of sources, the wrong text for each URL.
    Variant("texts_misaligned", changed=("workflows.py",), fails={
        "sources-read": ("summarize request did not carry its sources' texts, in order",),
    }),
    Variant("budget_ignored", changed=("workflows.py",), fails={
        "budget-enforced": ("The tiny run spent $0.000", "on the LLM with a budget of $0.00005"),
    }),
    # Class 2: priced from the characters; the course LLM bills tokens no character rule reproduces.
    Variant("cost_from_chars", changed=("activities.py",), fails={
        "cost-from-usage": ("total_cost is", "but its LLM usage costs", "hidden reasoning"),
    }),
    # The "HTTP client's own retries": the openai client's default max_retries=2, and a retry loop
    # around the page download. Either way Temporal sees no failure.
    Variant("client_retries", changed=("activities.py",), fails={
        "temporal-owns-retries": ("The LLM's 500 was retried inside llm_summarize", "LLM answers: [500, 200]"),
    }),
    Variant("fetch_retry_loop", changed=("activities.py",), fails={
        "temporal-owns-retries": ("The 503 was retried inside extract_content", "2 fetch(es) (503, 200)"),
    }),
    # The opposite mistake: every HTTP error final. The message names non-retryable, not a retry loop.
    Variant("non_retryable_5xx", changed=("activities.py",), fails={
        "temporal-owns-retries": ("The 503 was raised as non-retryable, so Temporal gave the page up at once",
                                  "mark non_retryable only what cannot get better"),
    }),
    Variant("swallow_cancel", changed=("activities.py",), fails={
        "cancellation-honoured": ("The download went on after the workflow was cancelled",),
    }),
    Variant("good_alt_shape"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_solution_passes_without_the_fork_server(tmp_path):
    run = run_check(LAB, tmp_path, solution=True, env={"LAB_PREFORK": "0"})
    assert not run.failed() and run.returncode == 0, run.describe()


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    # each variant's __init__.py says in its docstring what the variant is
    assert_solution_plus_marked_bug(LAB, variant, ignore=("__init__.py",))
