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


# --- the course's executor, against the SDK's own harness (the measured facts it rests on) --------------

def load_executor():
    import importlib.util
    import sys

    path = LAB.solution_dir / "executor.py"
    spec = importlib.util.spec_from_file_location("lab08_executor_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def make_function(fail_first: dict[str, int], log: list, *, retries: int = 2, catch: bool = False):
    """One step, a parallel group of three steps that each wait on one shared gate (so a group run one at a
    time never finishes its first step: it is seen, not timed), one more step, an event."""
    import asyncio

    import inngest
    from inngest.experimental import mocked

    client = mocked.Inngest(app_id="lab08-selftest", is_production=False)
    gate = {"waiting": 0, "open": None}

    @client.create_function(fn_id="probe", trigger=inngest.TriggerEvent(event="probe/start"), retries=retries)
    async def probe(ctx: inngest.Context):
        log.append(("body", ctx.attempt))

        async def work(name: str):
            log.append((name, ctx.attempt))
            if fail_first.get(name, 0) > ctx.attempt:
                raise RuntimeError(f"{name} fails at attempt {ctx.attempt}")
            return name

        async def page(name: str):
            if gate["open"] is None:
                gate["open"] = asyncio.Event()
            gate["waiting"] += 1
            if gate["waiting"] == 3:
                gate["open"].set()
            await asyncio.wait_for(gate["open"].wait(), timeout=30)
            return await work(name)

        async def guarded(name: str):
            try:
                return await ctx.step.run(name, page, name)
            except inngest.StepError:
                if not catch:
                    raise
                return None

        await ctx.step.run("a", work, "a")
        pages = await ctx.group.parallel(tuple((lambda n=n: guarded(n)) for n in ("p0", "p1", "p2")))
        await ctx.step.run("b", work, "b")
        await ctx.step.send_event("done", inngest.Event(name="probe/done", data={"pages": list(pages)}))
        return list(pages)

    return probe


def test_executor_runs_a_parallel_group_at_once_and_retries_each_step_alone(tmp_path):
    """Given a group of three steps that can only finish once all three have started, a step that fails once
    and retries=2, When the course's executor runs it, Then the group completes (its steps ran at once),
    only the failing step ran again, with its own attempt counter, and the event was recorded once."""
    import asyncio

    import inngest

    executor = load_executor()
    log: list = []
    fn = make_function({"b": 1}, log)
    runner = executor.Executor(fn, run_id="selftest", trace=tmp_path / "trace.jsonl")
    result = asyncio.run(runner.run(inngest.Event(name="probe/start")))
    assert result.status == "completed", result.error
    assert result.output == ["p0", "p1", "p2"]
    steps = [entry for entry in log if entry[0] != "body"]
    assert sorted(steps) == [("a", 0), ("b", 0), ("b", 1), ("p0", 0), ("p1", 0), ("p2", 0)]
    sent = [r for r in runner.trace.records if r["event"] == "sent"]
    assert len(sent) == 1 and sent[0]["via"] == "step.send_event" and sent[0]["step"] == "done"


def test_a_step_out_of_attempts_reaches_the_body_as_step_error(tmp_path):
    """Given a page step that fails every attempt (retries=2: 3 attempts) and a body that catches StepError,
    When the executor runs it, Then that step ran exactly 3 times and the run completes without the page."""
    import asyncio

    import inngest

    executor = load_executor()
    log: list = []
    fn = make_function({"p1": 99}, log, catch=True)
    result = asyncio.run(executor.Executor(fn, run_id="selftest").run(inngest.Event(name="probe/start")))
    assert result.status == "completed", result.error
    assert result.output == ["p0", None, "p2"]
    assert [entry for entry in log if entry[0] == "p1"] == [("p1", 0), ("p1", 1), ("p1", 2)]


def test_the_sdk_mocked_harness_still_differs_where_the_executor_fixes_it():
    """Given inngest.experimental.mocked.trigger (the SDK's harness the executor copies), When it runs a step
    that fails once after another that failed once with retries=1, Then the run fails: the harness counts
    attempts per run, not per step (docs/measured-facts.md). If this passes no more, re-measure: the SDK
    changed, and the executor's reason to exist may have too."""
    from inngest.experimental import mocked

    import inngest

    client = mocked.Inngest(app_id="lab08-selftest", is_production=False)
    seen: list = []

    @client.create_function(fn_id="per-run", trigger=inngest.TriggerEvent(event="probe/start"), retries=1)
    async def per_run(ctx: inngest.Context):
        async def flaky(name: str):
            seen.append((name, ctx.attempt))
            if ctx.attempt < {"a": 1, "b": 2}[name]:
                raise RuntimeError(name)
            return name

        await ctx.step.run("a", flaky, "a")
        await ctx.step.run("b", flaky, "b")  # its first attempt is numbered 1: a spent attempt 0
        return "done"

    result = mocked.trigger(per_run, inngest.Event(name="probe/start"), client)
    assert result.status is mocked.Status.FAILED
    assert seen == [("a", 0), ("a", 1), ("b", 1)]
