"""Lab 11's self-test: its autograder grades what it claims to grade.

- each known-bad variant (tests/variants/lab11/<name>: the solution with ONE bug, marked BUG(<name>))
  fails the check that owns its bug, with that check's teaching message (a swallowed error is named as
  such by every check it breaks, not as the mistake each check usually looks for); every other check
  passes;
- the differently shaped correct variant (good_model_chain) passes every check;
- every run gives a verdict before its hang limit and leaves no process behind. No duration is asserted.

The solution, the starter and the TODO markers: tests/test_course_selftest.py. How a run works:
tests/selftest.py.
"""

from __future__ import annotations

from selftest import Variant, assert_folders_match, assert_solution_plus_marked_bug, bad, parametrize, run_variant

from labkit import course

LAB = course.load().lab("11")
SWALLOWED = "embed_document swallowed the embedding model's error"
BLOCKED = tuple(c.name for c in LAB.checks if c.name != "retries-before-fallback")

VARIANTS = [
    Variant("no_fallback", changed=("workflows.py",), fails={
        "fallback-model": ("documents whose primary model was down ended FAILED", "the fallback model was never asked"),
    }),
    Variant("qc_not_skipped", changed=("workflows.py",), fails={
        "qc-skipped-short": ("The quality check ran for", "document(s) under 100 words"),
    }),
    Variant("notify_before_store", changed=("workflows.py",), fails={
        "notify-after-store": ("The user was told 'ready' before the vector was stored",),
    }),
    # The choreographed consumer's mistake, inside an activity: every check it breaks names it.
    Variant("swallowed_embed_error", changed=("activities.py",), fails={
        "no-silent-failures": ("embed_document reported success", "the error was swallowed"),
        "fallback-model": ("The fallback model was never asked", SWALLOWED),
        "retries-before-fallback": ("Temporal had no failure to retry", SWALLOWED),
        "failures-surface": ("No failure reached an operator", SWALLOWED),
    }),
    Variant("no_retries", changed=("workflows.py",), fails={
        "retries-before-fallback": ("The primary model was given up after 1 attempt(s) of embed_document",),
        "fallback-model": ("The fallback model was used for", "the primary model could embed"),
    }),
    Variant("hardcoded_fallback", changed=("workflows.py",), fails={
        "fallback-model": ("were not stored with the fallback model's vector", "text-embedding-3-large"),
    }),
    Variant("no_alert", changed=("workflows.py",), fails={
        "failures-surface": ("have no pipeline.alert event on the bus",),
    }),
    # Temporal's default: retry for ever. The down documents never reach the fallback; nobody is told.
    Variant("unlimited_retries", changed=("workflows.py",), blocked=BLOCKED, fails={
        "retries-before-fallback": ("embed_document of", "still being retried: its retry policy never gives up"),
    }),
    Variant("good_model_chain"),
]


@parametrize(VARIANTS)
def test_variant_gets_its_verdict(variant, tmp_path):
    run_variant(LAB, variant, tmp_path)


def test_variant_folders_match_the_list_and_the_readme():
    assert_folders_match(LAB, VARIANTS)


@parametrize(bad(VARIANTS))
def test_bad_variant_is_the_solution_with_one_marked_bug(variant):
    assert_solution_plus_marked_bug(LAB, variant, ignore=("__init__.py",))
