"""Lab 04's self-test: its checks grade what they claim to grade.

- every check passes on solutions/lab04_langgraph_hitl started with a plain exec (LAB_PREFORK=0)
  as well as forked from the warm interpreter (the default, run by tests/test_course_selftest.py):
  the fork server changes speed, not verdicts;
- each known-bad variant (tests/variants/lab04/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the checks that own the bug, with their teaching message; the checks listed
  as blocked say "not checked"; every other check passes;
- the differently shaped correct variant passes everything;
- every run gives a verdict and leaves no process behind (no wall-clock budget: issue 13).

The starter and the TODO markers: tests/test_course_selftest.py. How a run works: tests/selftest.py.
"""

from __future__ import annotations

from selftest import (Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_check,
                      run_variant)

from labkit import course

LAB = course.load().lab("04")

AFTER_MAIN_RUN = ("decision-in-new-process", "replay-reruns-summarize", "fork-makes-a-branch", "sql-confirms")
FORK_NOT_A_BRANCH = {
    "fork-makes-a-branch": ("The fork did not branch from the checkpoint after search",
                            "continued the thread instead of branching", "update_state(past_config, values)"),
    "sql-confirms": ("does not have three children",),
}


def test_every_check_passes_on_the_solution_started_with_plain_exec(tmp_path):
    run = run_check(LAB, tmp_path, solution=True, env={"LAB_PREFORK": "0"})
    assert not run.failed() and run.returncode == 0, f"failing on the solution: {run.failed()}\n{run.describe()}"


VARIANTS = [
    Variant("decision_from_input", changed=("graph.py",), blocked=AFTER_MAIN_RUN, fails={
        "pauses-before-review": ("The first run failed: EOFError", "input()", "from another process"),
        "edited-summary-wins": ("EOFError", "input()"),
    }),
    Variant("resume_original_input", changed=("human.py",), fails={
        "decision-in-new-process": ("The decision started the thread over", "['summarize']", "step 3 (input)",
                                    "invoke(None, config)"),
        "edited-summary-wins": ("The edited decision re-ran work that was already done", "['summarize']"),
    }),
    Variant("no_checkpointer", changed=("graph.py",), blocked=AFTER_MAIN_RUN + ("command-resume-edits",), fails={
        "pauses-before-review": ("The first run failed: ValueError: No checkpointer set",
                                 "compile(checkpointer=checkpointer"),
        "edited-summary-wins": ("No checkpointer set",),
        "interrupt-pauses": ("No checkpointer set",),
    }),
    Variant("interrupt_resume_none", changed=("human.py",), fails={
        "command-resume-edits": ("After the decision the thread is still paused at interrupt()",
                                 "resume values saved: 0", "Command(resume=decision)"),
    }),
    Variant("replay_passes_input", changed=("timetravel.py",), fails={
        "replay-reruns-summarize": ("The replay started over from a new input", "searches during the replay: "
                                    "['quantum error correction']", "step 2 (input)", "invoke(None, config)"),
    }),
    Variant("fork_new_input", changed=("timetravel.py",), fails=FORK_NOT_A_BRANCH),
    Variant("fork_on_latest", changed=("timetravel.py",), fails=FORK_NOT_A_BRANCH),
    Variant("edit_after_review", changed=("human.py",), fails={
        "edited-summary-wins": ("The finished thread does not hold the approved answer", "1 AI message(s), the last "
                                "'Quantum error correction", "before review reads it"),
    }),
    Variant("drops_question", changed=("graph.py",), fails={
        "decision-in-new-process": ("The finished thread lost the human's question", "add_messages reducer"),
        "edited-summary-wins": ("The finished thread lost the human's question",),
        "command-resume-edits": ("The finished thread lost the human's question", "wipes out the question"),
    }),
    Variant("replay_via_update", changed=("timetravel.py",), fails={
        "replay-reruns-summarize": ("The replay wrote a state update: that is how a fork starts, not a replay",
                                    "step 2 (update)", "exactly 2 new checkpoints: step 2 (fork), step 3 (loop)"),
    }),
    Variant("polls_for_decision", changed=("graph.py",), blocked=AFTER_MAIN_RUN, fails={
        "pauses-before-review": ("never finished", "waits for something that never comes",
                                 "a loop that waits in the process", "interrupt_before"),
        "edited-summary-wins": ("never finished", "waits for something that never comes"),
    }),
    Variant("good_command_update"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant)
