"""Lab 10's self-test: the capstone's checks grade what they claim to grade.

- each known-bad variant (tests/variants/lab10/<name>: the solution's student files with ONE bug,
  marked BUG(<name>)) fails the checks that own the bug, with a message naming the idea it got
  wrong (a per-process thread id, a batch loop outside the durable boundary, a continue-as-new
  that drops the cursor, a Restate step outside the journal); every other check passes;
- the correct variant of another shape (a thread and a workflow per question) passes everything;
- every run gives a verdict and leaves no process behind (no wall-clock budget).

The solution and the starter: tests/test_course_selftest.py. How a run works: tests/selftest.py.
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("10")

VARIANTS = [
    Variant("per_process_thread_id", changed=("graph_batch.py",), fails={
        "langgraph-resumes": ("The new pod started a new thread instead of resuming the batch's",
                              "a per-process thread id", "never from the process"),
    }),
    Variant("loop_outside_boundary", changed=("graph_batch.py",), fails={
        "langgraph-resumes": ("The new pod asked finished questions again",
                              "the batch loop runs outside the durable boundary", "invoke(None, config)"),
    }),
    Variant("drops_cursor", changed=("workflows.py",), fails={
        "temporal-all-answered": ("a continue-as-new that drops the cursor", "pass the cursor"),
        "temporal-resumes": ("The batch asked questions again without any crash",
                             "a continue-as-new that drops the cursor", "new run of the same workflow"),
    }),
    Variant("summarize_outside_journal", changed=("restate_batch.py",), fails={
        "restate-resumes": ("The new pod asked finished questions again", "a step outside ctx.run is not journaled",
                            "not every await"),
    }),
    Variant("good_per_question"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant)
