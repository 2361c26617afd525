"""Lab 03's self-test: its checks grade what they claim to grade.

- every check passes on solutions/lab03_langgraph_resume started with a plain exec
  (LAB_PREFORK=0) as well as forked from the warm interpreter (the default, run by
  tests/test_course_selftest.py): the fork server changes speed, not verdicts;
- each known-bad variant (tests/variants/lab03/<name>: the solution with ONE bug, marked
  BUG(<name>)) fails the checks that own the bug, with their teaching message; the checks
  listed as blocked say "not checked"; every other check passes;
- the differently shaped correct variant passes everything;
- every run gives a verdict and leaves no process behind (no wall-clock budget: issue 13).

The starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py.
"""

from __future__ import annotations

from selftest import (Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_check,
                      run_variant)

from labkit import course

LAB = course.load().lab("03")


def test_every_check_passes_on_the_solution_started_with_plain_exec(tmp_path):
    run = run_check(LAB, tmp_path, solution=True, env={"LAB_PREFORK": "0"})
    assert not run.failed() and run.returncode == 0, f"failing on the solution: {run.failed()}\n{run.describe()}"


AFTER_RUN = ("checkpoints-after-crash", "resume-runs-report-only", "llm-once-per-node", "five-checkpoints",
             "resume-again-noop", "sql-confirms")
AFTER_RESUME = ("llm-once-per-node", "five-checkpoints", "resume-again-noop")
# A run that crashed with durability other than "sync": its checkpoints are luck, so the checks of the
# resume say "not checked" and name durability (BLOCKED_SAY), whatever the crash kept this time.
AFTER_LUCK = ("resume-runs-report-only", "llm-once-per-node", "five-checkpoints", "resume-again-noop", "sql-confirms")
NO_RESUME = "Received no input for __start__"
FORK_COPY = "copies it and runs from the copy"

VARIANTS = [
    Variant("resume_original_input", changed=("cli.py",), fails={
        "resume-runs-report-only": ("The resume ran fetch and transform again", "original input instead of None"),
        "llm-once-per-node": ("fetch's LLM was called 2 time(s)", "original input instead of None"),
        "five-checkpoints": ("9 checkpoint(s)", "step 3 (input)", "started the thread over"),
        "resume-again-noop": ("Resuming a finished thread did work again", "checkpoints 9 -> 14"),
        "sql-confirms": ("finds 9 row(s) after the resume, not 5",),
        "sigkill-sync": ("The resume ran fetch and transform again",),
        "sqlite-part": ("The resume ran fetch and transform again",),
    }),
    Variant("new_thread_on_resume", changed=("cli.py",), blocked=AFTER_RESUME + ("sql-confirms",), fails={
        "resume-runs-report-only": ("The resume failed", NO_RESUME, "same thread_id"),
        "sigkill-sync": ("The resume after the SIGKILL failed", NO_RESUME),
        "sqlite-part": ("The SQLite resume failed", NO_RESUME),
    }),
    Variant("no_checkpointer", changed=("graph.py",), blocked=AFTER_RUN, fails={
        "crash-happened": ("The run failed before the crash point", "'_put_checkpoint_fut'",
                           "compile(checkpointer=saver)"),
        "sigkill-sync": ("'_put_checkpoint_fut'",),
        "sqlite-part": ("'_put_checkpoint_fut'",),
    }),
    Variant("in_memory_saver", changed=("graph.py",), blocked=AFTER_RESUME, fails={
        "checkpoints-after-crash": ("No checkpoint reached PostgreSQL after the crash", "InMemorySaver"),
        "resume-runs-report-only": ("The resume failed", NO_RESUME),
        "sql-confirms": ("finds 0 row(s) after the run, not 4",),
        "sigkill-sync": ("No checkpoint reached PostgreSQL after the SIGKILL",),
        "sqlite-part": ("holds no checkpoint table at all", "InMemorySaver"),
    }),
    Variant("setup_never_called", changed=("savers.py",), blocked=AFTER_RUN, fails={
        "crash-happened": ('UndefinedTable: relation "checkpoints" does not exist', "setup() was never called"),
        "sigkill-sync": ("setup() was never called",),
    }),
    Variant("durability_exit", changed=("graph.py",), blocked=AFTER_LUCK, fails={
        "checkpoints-after-crash": ("No checkpoint reached PostgreSQL before the crash", 'durability="exit"',
                                    "A crash is not a return"),
        "sigkill-sync": ("No checkpoint reached PostgreSQL before the crash", 'durability="exit"'),
        "sqlite-part": ("No checkpoint reached the SQLite file", 'durability="exit"'),
    }),
    Variant("default_durability", changed=("graph.py",), blocked=AFTER_LUCK, fails={
        "checkpoints-after-crash": ("the run passed no durability", 'LangGraph\'s default, "async"',
                                    'DURABILITY = "sync"'),
        "sigkill-sync": ("the run passed no durability", 'durability="sync": transform\'s checkpoint'),
        "sqlite-part": ("the run passed no durability", 'LangGraph\'s default, "async"'),
    }),
    Variant("no_autocommit", changed=("savers.py",), blocked=AFTER_RUN, fails={
        "crash-happened": ("ActiveSqlTransaction: CREATE INDEX CONCURRENTLY cannot run inside a transaction block",
                           "autocommit=True"),
        "sigkill-sync": ("ActiveSqlTransaction", "autocommit=True"),
    }),
    Variant("resume_from_checkpoint_id", changed=("cli.py",), fails={
        "five-checkpoints": ("6 checkpoint(s)", "step 3 (fork)", FORK_COPY),
        "resume-again-noop": ("Resuming a finished thread did work again", FORK_COPY),
        "sql-confirms": ("finds 6 row(s) after the resume, not 5",),
        "sigkill-sync": ("step 3 (fork)", FORK_COPY),
        "sqlite-part": ("step 3 (fork)", FORK_COPY),
    }),
    Variant("from_conn_string_direct", changed=("savers.py",), blocked=AFTER_RUN, fails={
        "crash-happened": ("_GeneratorContextManager", "returns a context manager, not a saver"),
        "sigkill-sync": ("_GeneratorContextManager",),
    }),
    Variant("transform_called_in_fetch", changed=("graph.py",), fails={
        "llm-once-per-node": ("The LLM call tagged 'transform' was made while the node 'fetch' ran",
                              "transform (sent by fetch)", "Each node calls ask("),
    }),
    Variant("resume_writes_report", changed=("cli.py",), fails={
        "llm-once-per-node": ("The LLM call tagged 'report' was made outside any graph node",),
        "five-checkpoints": ("The 5 checkpoints after the resume are not the expected steps and sources",
                             "step 3 (update)", "update_state wrote into the thread"),
        "sql-confirms": ("finds 5 rows after the resume, but not the steps and sources expected",),
        "sigkill-sync": ("step 3 (update)", "update_state wrote into the thread"),
        "sqlite-part": ("step 3 (update)",),
    }),
    # found first by the crash sweep (README); the check's resume of a run that died after fetch now sees it
    Variant("resume_durability_exit", changed=("cli.py",), fails={
        "five-checkpoints": ("The resume that ran transform and report saved only its last checkpoint",
                             "no step 2, transform's", "durability=DURABILITY"),
    }),
    Variant("good_own_connection"),
]


# What a blocked check's "not checked: ..." must name, for the variants whose blocked checks must say why.
BLOCKED_SAY = {"durability_exit": 'durability="exit"', "default_durability": "the run passed no durability"}


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run = run_variant(LAB, variant, tmp_path)
    if variant.name in BLOCKED_SAY:
        for check in variant.blocked:
            if check not in variant.fails:
                assert BLOCKED_SAY[variant.name] in run.records[check]["message"], run.records[check]["message"]


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant)
