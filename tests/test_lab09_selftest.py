"""Lab 09's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab09/<name>: the solution's workflow.py with ONE bug,
  marked BUG(<name>)) fails the check that owns its bug, with that check's teaching message; the
  checks its bug blocks say "not checked: ..."; every other check passes;
- the differently shaped correct variant (good_*) passes every check;
- every run gives a verdict and leaves no process behind (the fork server, the task attempts, the
  course LLM). How long a run takes is not asserted (docs/design.md, "Time").

The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py. Lab 09 runs on hatchet-sdk's mock_run (no Hatchet server): see the lab's README.
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("09")
CHANGED = ("workflow.py",)
EVERY_CHECK = tuple(c.name for c in LAB.checks)

VARIANTS = [
    # the openai client's default max_retries=2 retries the 429 inside one attempt
    Variant("client_retries", changed=CHANGED, fails={
        "retry-on-429": ("the 429 was retried inside the attempt, not by Hatchet", "max_retries=0"),
    }),
    # a 429 caught and turned into a default label (issue 14 class 4: exhaust the retries)
    Variant("swallows_429", changed=CHANGED, fails={
        "retry-on-429": ("returned although the LLM answered it 429: the error was swallowed",),
        "exhausted-fails": ("although the LLM answered every request 429", "A fallback label hides the outage"),
    }),
    Variant("no_retries", changed=CHANGED, fails={
        "retry-on-429": ("classify declares no retries", "retries=0 in the registration"),
    }),
    # issue 14 class 5: read the content: the vector must be the one of the parent's facts
    Variant("embed_from_input", changed=CHANGED, fails={
        "inputs-from-parents": ("embed's vector is not the embedding of extract's facts",
                                "embed ignored its parent's output"),
    }),
    # issue 14 class 8: the ledger ties extract's prompt to the classify attempt that sent it
    Variant("classify_reextracts", changed=CHANGED, fails={
        "earlier-calls-once": ("sent extract's prompt: it re-did extract's work", "ctx.task_output(extract)"),
    }),
    Variant("insert_always", changed=CHANGED, fails={
        "store-idempotent": ("store failed when it ran a second time", "IntegrityError",
                             "inserts without looking first"),
    }),
    # issue 14 class 6: two documents with the same text are still two documents
    Variant("content_key", changed=CHANGED, fails={
        "store-idempotent": ("has 0 rows: it has the same text as", "not a hash of its content"),
    }),
    Variant("missing_parent", changed=CHANGED, blocked=("store-idempotent", "exhausted-fails"), fails={
        "inputs-from-parents": ("classify reads extract's output, but extract is not among its parents",),
        "retry-on-429": ("classify reads extract's output, but extract is not among its parents",),
    }),
    # issue 14 class 3: vary every parameter (the limit is drawn twice per run, never 3 and 3)
    Variant("fixed_limit", changed=CHANGED, fails={
        "concurrency-per-provider": ("has max_runs=3 when LAB09_MAX_RUNS_PER_PROVIDER=",),
    }),
    Variant("global_limit", changed=CHANGED, fails={
        "concurrency-per-provider": ("gives every provider the same key", "one limit for all providers together"),
    }),
    Variant("limit_per_document", changed=CHANGED, fails={
        "concurrency-per-provider": ("a limit per document, not per provider",),
    }),
    Variant("cancel_strategy", changed=CHANGED, fails={
        "concurrency-per-provider": ("uses CANCEL_NEWEST", "its document is never processed"),
    }),
    # bad input: a verdict within the check's limit, nothing left running
    Variant("syntax_error", changed=CHANGED, blocked=EVERY_CHECK[1:], fails={
        "dag-declared": ("The workflow could not be loaded: SyntaxError", "workflow.py:", "could not parse"),
    }),
    Variant("waits_forever", changed=CHANGED, blocked=EVERY_CHECK[1:-1], fails={
        "dag-declared": ("extract of doc-", "never finished", "waits for something that never comes"),
    }),
    Variant("good_sync_tasks_sql_upsert"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant)
