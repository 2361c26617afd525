"""Lab 08's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab08/<name>: the solution's student files with ONE bug,
  marked BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the
  checks its bug keeps from running say "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_alt_shape) passes every check;
- every run gives a verdict before its hang limit and leaves no process behind.
The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py. Lab 08 runs on the course's in-process executor (no server).
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("08")
ALL = tuple(c.name for c in LAB.checks)

VARIANTS = [
    # The lesson the text omits: the body re-runs for every step, so a call outside step.run repeats.
    Variant("side_effect_outside_step", changed=("functions.py",), fails={
        "side-effects-in-steps": ("Side effects ran outside step.run, once per call of the function body",
                                  "Memoization covers step results only"),
    }),
    # The text's "parallel fan-out": a loop that awaits each page's step.
    Variant("sequential_loop", changed=("functions.py",), fails={
        "parallel-fan-out": ("The fan-out is sequential: 1 of",),
    }),
    # Planned together, but a sync download holds the event loop: only one page at a time.
    Variant("blocking_fetch", changed=("steps.py",), fails={
        "parallel-fan-out": ("The page steps were planned together, but only 1 of",
                             "a blocking call inside an async step holds the event loop"),
    }),
    # Non-deterministic body: a step id from uuid4 is new on every call, the planned step is never found.
    Variant("uuid_step_ids", changed=("functions.py",), blocked=ALL, fails={
        "runs-to-completion": ("A step id changed between calls of the function body",
                               "never from uuid, random or the clock"),
    }),
    # The event sent with the app's client in the body: not memoized.
    Variant("client_send_outside_step", changed=("functions.py",), fails={
        "event-sent-once": ("was sent with client.send in the function body, outside any step",
                            "nothing memoizes it"),
    }),
    # A try/except inside the step turns the 503 into an empty page: no retry.
    Variant("swallowed_retry", changed=("steps.py",), fails={
        "failed-step-retried": ("swallowed inside the step",),
        # the page that never answers "succeeded" empty, so the report lists a page it never read
        "event-payload": ("The event's data is not this run's report: sources differ",),
    }),
    # The OpenAI client retries the 500 itself, inside one step attempt.
    Variant("client_retries", changed=("steps.py",), fails={
        "failed-step-retried": ("The LLM summarize was retried inside one step attempt",),
    }),
    # Pages and the LLM call in one step: the LLM's 500 repeats every download.
    Variant("one_big_step", changed=("functions.py",), fails={
        "steps-memoized": ("A finished side effect happened again", "step 'read-and-summarize' attempts 0, 1, 2"),
        "parallel-fan-out": ("Every page was fetched inside one step ('read-and-summarize')",),
    }),
    # The classic late-binding lambda in the parallel group: every step fetches the last page.
    Variant("late_binding_lambda", changed=("functions.py",), blocked=("failed-step-retried",), fails={
        "steps-memoized": ("steps named", "the parallel group's lambdas all used the loop's last URL", "was never fetched"),
        "event-payload": ("sources differ",),  # the last page, once per step, listed as the pages read
    }),
    # Class 4: a page that never answers exhausts its step's retries; its StepError must not end the run.
    Variant("given_up_page_fails_run", changed=("functions.py",), blocked=ALL, fails={
        "runs-to-completion": ("A page that never answers ran out of retries, and its failure ended the whole run",
                               "inngest.StepError"),
    }),
    # The payload: content compared with what the check knows (run id drawn per run).
    Variant("payload_without_run_id", changed=("functions.py",), fails={
        "event-payload": ("The event's data is not this run's report: run_id differ",),
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
    # each variant's __init__.py says in its docstring what the variant is
    assert_solution_plus_marked_bug(LAB, variant, ignore=("__init__.py",))
