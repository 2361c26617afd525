"""Lab 06's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab06/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the checks
  its bug blocks say "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_*) passes every check;
- every run gives a verdict (never an internal error) and leaves no process behind (the workers,
  the fork server, the replay, the sink). How long a run takes is not asserted (issue 13): the same
  verdicts at a quarter of a core, see /work/team/notes or bench/README.md.

The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py.
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("06")
EVERY_CHECK = tuple(c.name for c in LAB.checks)

AFTER_THE_CRASH = ("agent-turns", "tools-as-activities", "query-reads-database", "one-delivery", "model-turns-once",
                   "history-replays")  # what a revenue run that failed after the crash keeps from being checked

VARIANTS = [
    Variant("no_idempotency_key", changed=("activities.py",), blocked=("keys-per-call",), fails={
        "one-delivery": ("The notification to #sales was delivered 2 times", "without an Idempotency-Key header"),
    }),
    Variant("workflow_id_key", changed=("activities.py",), fails={
        "keys-per-call": ("were never delivered", "the key names the workflow but not the activity"),
    }),
    # issue 14 class 6: a key from the message loses a second real alert with the same text
    Variant("content_hash_key", changed=("activities.py",), fails={
        "keys-per-call": ("were never delivered", "the key is made from the message", "which has the same text"),
    }),
    # issue 14 class 6: two runs of one script share every activity number
    Variant("activity_id_key", changed=("activities.py",), fails={
        "keys-per-call": ("were never delivered", "the key names the activity but not the workflow"),
    }),
    Variant("write_sql_allowed", changed=("activities.py",), blocked=("query-reads-database",), fails={
        "write-refused": ("The sales dataset changed: a write got through query_database", "nothing stopped them"),
    }),
    # issue 14 class 6: a blocklist on a read-write connection lets PRAGMA / CREATE ... AS / ATTACH through
    Variant("keyword_blocklist", changed=("activities.py",), blocked=("query-reads-database",), fails={
        "write-refused": ("a write got through query_database", "PRAGMA user_version 0 -> 7",
                          "list of forbidden words"),
    }),
    # issue 14 class 5: rows that do not come from the file the check wrote
    Variant("rows_from_generator", changed=("activities.py",), fails={
        "query-reads-database": ("The model was not sent what the", "finds in the dataset", "the seeded generator"),
    }),
    Variant("plain_function_tool", changed=("workflows.py",), blocked=("query-reads-database", "write-refused"), fails={
        "tools-as-activities": ("did not run as activities in the scripted order",
                                "they ran inside the workflow, not as activities"),
    }),
    Variant("llm_in_tool_activity", changed=("activities.py",), fails={
        "model-turns-once": ("outside the agent's turns (from send_notification)", "(after the kill)"),
    }),
    # issue 14 class 8: the ledger's attribution names the activity that called the model
    Variant("tool_asks_model", changed=("activities.py",), fails={
        "model-turns-once": ("outside the agent's turns (from query_database)", "query_database attempt 1"),
    }),
    # issue 14 messages: a retry policy that gives up, not "refused queries"
    Variant("send_no_retry", changed=("workflows.py",), blocked=AFTER_THE_CRASH, fails={
        "crash-after-send": ("send_notification's retry policy gave up after 1 attempt", "maximum_attempts=1"),
    }),
    # issue 14 messages: "leave the model to the plugin", not "mark the import as pass through"
    Variant("model_client_in_workflow", changed=("workflows.py",), blocked=EVERY_CHECK, fails={
        "agent-turns": ("Your workflow builds a model client", "model=request.model"),
        "crash-after-send": ("Your workflow builds a model client",),
    }),
    # issue 14 messages: "call it through activity_as_tool / execute_activity", not "pass through"
    Variant("direct_tool_call", changed=("workflows.py",), fails={
        "history-replays": ("Your workflow code calls query_database directly", "workflow.execute_activity"),
    }),
    Variant("client_at_import", changed=("workflows.py",), blocked=EVERY_CHECK, fails={
        "agent-turns": ("Temporal's sandbox refused your workflow module", "Restriction state not present"),
        "crash-after-send": ("Temporal's sandbox refused your workflow module",),
    }),
    Variant("good_alt_shape"),
    # the starter's recipe alone (a read-only file, no look at the SQL): PRAGMA query_only = OFF and
    # ATTACH run and change no data (the ATTACH creates its file in the worker's directory, not the dataset)
    Variant("good_read_only_file"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant)
