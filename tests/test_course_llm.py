"""The course LLM, tested the way students' code uses it: the real `openai` client over HTTP.

One server process (free port, temp dir) serves most tests; every test calls it with its own
course key ("lab-..."), so the per-caller fault counters never leak between tests. Tests that
restart or kill a server start their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from procs import running, wait_until
from labkit import proc
from labkit.llm import Ledger
from labkit.llm.ledger import caller_of
from labkit.services import HOST, CourseLLM, ServiceError

RULES_TOML = """
[[rules]]
name = "first"
match = "\\\\bwinner\\\\b"
reply = "the first rule"

[[rules]]
name = "second"
match = "winner"
reply = "the second rule"

[[rules]]
name = "mini-only"
match = "which-model"
model = "gpt-4o-mini"
reply = "only for gpt-4o-mini"

[[rules]]
name = "any-model"
match = "which-model"
reply = "any other model"

[[rules]]
name = "alpha"
match = "^alpha$"
reply = "alpha rule"

[[rules]]
name = "beta"
match = "^beta$"
reply = "beta rule"

[[rules]]
name = "analysis"
match = "give me json"
reply_json = { sentiment = "positive", score = 0.75, topics = ["delivery", "support"] }

[[rules]]
name = "rate-limited"
match = "rate-limit-me"
fail_first = 2
fail_status = 429
reply = "made it past the rate limit"

[[rules]]
name = "server-error"
match = "break-the-server"
fail_first = 1
fail_status = 500
reply = "recovered"

[[rules]]
name = "slow"
match = "take-your-time"
latency_ms = 2000
reply = "slowly"

[[rules]]
name = "broken"
match = "broken json"
malformed = true
reply_json = { sentiment = "negative", summary = "cut in half", topics = ["a", "b"] }

[[rules]]
name = "pushable"
match = "who-answers"
reply = "the rules file"

[[rules]]
name = "agent-script"
endpoint = "responses"
match = '\\[script\\]'
turns = [
    { tool = "lookup", arguments = { city = "Oslo" } },
    { calls = [{ tool = "lookup", arguments = { city = "Bergen" } }, { tool = "notify", arguments = { text = "two cities" } }] },
    { reply = "Oslo and Bergen are both in Norway." },
]

[[rules]]
name = "chat-script"
match = '\\[chat-script\\]'
turns = [
    { tool = "lookup", arguments = { city = "Oslo" } },
    { reply_json = { answer = "Oslo" } },
]

[[rules]]
name = "responses-plain"
endpoint = "responses"
match = "plain responses"
reply = "a plain answer"

[[rules]]
name = "responses-429"
endpoint = "responses"
match = "responses-rate-limit"
fail_first = 1
fail_status = 429
turns = [{ tool = "lookup", arguments = { city = "Oslo" } }, { reply = "after the rate limit" }]

[[rules]]
name = "responses-broken"
endpoint = "responses"
match = "broken arguments"
malformed = true
turns = [{ tool = "lookup", arguments = { city = "Oslo" } }, { reply = "never reached" }]

[[rules]]
name = "either-endpoint"
endpoint = "any"
match = "either-endpoint"
reply = "from any endpoint"
"""

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.toml"
    path.write_text(RULES_TOML)
    return path


def _start_llm(state_dir: Path, rules_file: Path):
    llm = CourseLLM(state_dir, rules_files=[rules_file])
    try:
        llm.start()
    except BaseException:
        llm.stop()
        raise
    return llm


def _stop_llm(llm: CourseLLM) -> None:
    pids = [p.pid for p in llm.process.tree()]
    llm.stop()
    survivors = [pid for pid in pids if running(pid)]
    assert not survivors, f"the course LLM left processes behind: {survivors}"


@pytest.fixture(scope="module")
def llm(tmp_path_factory, rules_file):
    server = _start_llm(tmp_path_factory.mktemp("llm"), rules_file)
    try:
        yield server
    finally:
        _stop_llm(server)


@pytest.fixture
def own_llm(tmp_path, rules_file):
    """A server of the test's own, for tests that restart or kill it."""
    servers: list[CourseLLM] = []

    def start(state_dir: Path = tmp_path / "llm") -> CourseLLM:
        server = _start_llm(state_dir, rules_file)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            _stop_llm(server)


@pytest.fixture
def key(request) -> str:
    return f"lab-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def connect():
    clients: list[openai.OpenAI] = []

    def make(server: CourseLLM, api_key: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=10)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.close()


def ask(client: openai.OpenAI, prompt: str, model: str = MODEL, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          **kwargs)


def text_of(completion) -> str:
    return completion.choices[0].message.content


# --- rules ---------------------------------------------------------------------------------------

def test_first_matching_rule_wins(llm, connect, key):
    client = connect(llm, key)
    assert text_of(ask(client, "and the winner is")) == "the first rule"
    # "winners" does not match \bwinner\b, so the second rule is the first match now
    assert text_of(ask(client, "all the winners")) == "the second rule"
    assert [e.rule for e in Ledger(llm.ledger_dir).entries(caller=key)] == ["first", "second"]


def test_rules_match_the_last_user_message_only(llm, connect, key):
    client = connect(llm, key)
    messages = [
        {"role": "system", "content": "alpha"},
        {"role": "user", "content": "alpha"},
        {"role": "assistant", "content": "alpha rule"},
        {"role": "user", "content": "beta"},
    ]
    assert text_of(client.chat.completions.create(model=MODEL, messages=messages)) == "beta rule"
    messages = [{"role": "user", "content": "beta"}, {"role": "assistant", "content": "beta rule"},
                {"role": "user", "content": [{"type": "text", "text": "alpha"}]}]  # content parts
    assert text_of(client.chat.completions.create(model=MODEL, messages=messages)) == "alpha rule"
    # a system message alone is not what the rules look at
    system_only = [{"role": "system", "content": "alpha"}, {"role": "user", "content": "something else"}]
    assert text_of(client.chat.completions.create(model=MODEL, messages=system_only)) == "OK."
    prompts = [e.prompt for e in Ledger(llm.ledger_dir).entries(caller=key)]
    assert prompts == ["beta", "alpha", "something else"]


def test_model_regex_selects_the_rule(llm, connect, key):
    client = connect(llm, key)
    assert text_of(ask(client, "which-model?", model="gpt-4o-mini")) == "only for gpt-4o-mini"
    # the model pattern is a full match: a longer name does not match it
    assert text_of(ask(client, "which-model?", model="gpt-4o-mini-2024")) == "any other model"
    assert text_of(ask(client, "which-model?", model="course-model")) == "any other model"
    entries = Ledger(llm.ledger_dir).entries(caller=key)
    assert [(e.model, e.rule) for e in entries] == [
        ("gpt-4o-mini", "mini-only"), ("gpt-4o-mini-2024", "any-model"), ("course-model", "any-model")]


def test_no_matching_rule_gets_the_fallback(llm, connect, key):
    completion = ask(connect(llm, key), "nothing in the rules file matches this")
    assert text_of(completion) == "OK."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    (entry,) = Ledger(llm.ledger_dir).entries(caller=key)
    assert (entry.rule, entry.status, entry.reply) == ("fallback", 200, "OK.")


def test_reply_json_is_json_text(llm, connect, key):
    content = text_of(ask(connect(llm, key), "please give me json"))
    assert json.loads(content) == {"sentiment": "positive", "score": 0.75, "topics": ["delivery", "support"]}


def test_usage_is_present_and_adds_up(llm, connect, key):
    client = connect(llm, key)
    short = ask(client, "hi")
    long = ask(client, "hi " * 200)
    for completion in (short, long):
        usage = completion.usage
        assert usage is not None
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert long.usage.prompt_tokens > short.usage.prompt_tokens
    visible = [c.usage.completion_tokens - c.usage.completion_tokens_details.reasoning_tokens for c in (short, long)]
    assert visible[0] == visible[1]  # same reply, same visible count; the hidden reasoning differs


def test_the_ledger_records_the_usage_each_answer_billed(llm, connect, key):
    """Given answered requests, the ledger holds exactly the usage each response reported (the only
    source a check may price a call from), hidden reasoning tokens included."""
    client = connect(llm, key)
    answers = [ask(client, f"question {n}: what is durable execution?") for n in range(4)]
    entries = Ledger(llm.ledger_dir).entries(caller=key)
    assert [e.usage for e in entries] == [
        {"prompt_tokens": a.usage.prompt_tokens, "completion_tokens": a.usage.completion_tokens,
         "total_tokens": a.usage.total_tokens, "reasoning_tokens": a.usage.completion_tokens_details.reasoning_tokens}
        for a in answers]
    assert all(a.usage.completion_tokens_details.reasoning_tokens > 0 for a in answers)


def test_no_character_rule_reproduces_the_usage(llm, connect, key):
    """Given the same prompt asked twice, when priced by any rule of the text alone, then the two
    answers' usage still differs (hidden reasoning tokens are drawn per request), and the prompt
    count is not characters / 4."""
    client = connect(llm, key)
    prompt = "Summarise the incident: the parcel shipped on 2026-03-01, arrived 2 days late; refund issued."
    first, second = ask(client, prompt), ask(client, prompt)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens
    assert len({first.usage.completion_tokens, second.usage.completion_tokens,
                ask(client, prompt).usage.completion_tokens}) > 1
    assert first.usage.prompt_tokens != (len(prompt) + 3) // 4


def test_the_ledger_records_where_a_request_came_from(llm, key):
    """Given a request carrying the X-Lab-Origin header (labkit.attribution sets it in student
    processes), the ledger keeps it; a request without one is recorded with origin None."""
    origin = {"pid": 1, "program": "lab01.worker", "node": None,
              "activity": {"type": "call_llm", "id": "1", "attempt": 2, "workflow_id": "w", "run_id": "r"}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    for headers in ({"X-Lab-Origin": json.dumps(origin)}, {}):
        response = httpx.post(f"{llm.base_url}/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {key}", **headers}, timeout=10)
        assert response.status_code == 200
    tagged, untagged = Ledger(llm.ledger_dir).entries(caller=key)
    assert tagged.origin == origin and tagged.activity_type == "call_llm"
    assert untagged.origin is None and untagged.activity_type is None


# --- faults --------------------------------------------------------------------------------------

def test_fail_first_two_with_429_then_success(llm, connect, key):
    client = connect(llm, key)
    for attempt in (1, 2):
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, "rate-limit-me")
        assert caught.value.status_code == 429
        assert f"fail_first {attempt}/2" in caught.value.message
    assert text_of(ask(client, "rate-limit-me")) == "made it past the rate limit"
    assert text_of(ask(client, "rate-limit-me")) == "made it past the rate limit"
    entries = Ledger(llm.ledger_dir).entries(caller=key)
    assert [(e.status, e.fault) for e in entries] == [
        (429, "fail_first 1/2"), (429, "fail_first 2/2"), (200, None), (200, None)]


def test_500_is_an_internal_server_error(llm, connect, key):
    client = connect(llm, key)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, "break-the-server")
    assert caught.value.status_code == 500
    assert text_of(ask(client, "break-the-server")) == "recovered"


def test_fault_counters_are_per_caller(llm, connect, key):
    one, two = connect(llm, key + "-one"), connect(llm, key + "-two")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            ask(one, "rate-limit-me")
    assert text_of(ask(one, "rate-limit-me")) == "made it past the rate limit"
    # the second caller gets its own first two failures, although the first caller used theirs up
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            ask(two, "rate-limit-me")
    assert text_of(ask(two, "rate-limit-me")) == "made it past the rate limit"
    ledger = Ledger(llm.ledger_dir)
    for caller in (key + "-one", key + "-two"):
        assert [e.status for e in ledger.entries(caller=caller)] == [429, 429, 200]


def test_fault_counters_survive_a_server_restart(own_llm, connect, key, tmp_path):
    state = tmp_path / "restarted"
    first = own_llm(state)
    with pytest.raises(openai.RateLimitError):
        ask(connect(first, key), "rate-limit-me")
    _stop_llm(first)
    second = own_llm(state)
    client = connect(second, key)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "rate-limit-me")
    assert "fail_first 2/2" in caught.value.message
    assert text_of(ask(client, "rate-limit-me")) == "made it past the rate limit"
    assert [e.status for e in Ledger(state / "llm").entries(caller=key)] == [429, 429, 200]


def test_latency_ms_delays_the_reply(llm, connect, key):
    client = connect(llm, key)
    ask(client, "warm up the connection")
    started = time.monotonic()
    assert text_of(ask(client, "take-your-time")) == "slowly"
    slow = time.monotonic() - started
    started = time.monotonic()
    ask(client, "no hurry needed")
    fast = time.monotonic() - started
    assert slow >= 2.0, slow  # the rule's latency is a lower bound the server guarantees
    # seconds of margin: only a latency leaked into this rule, not a slow machine, closes that gap
    assert fast < slow - 1.5, f"latency leaked into a rule without latency_ms: {fast:.2f} s vs {slow:.2f} s"


def test_malformed_reply_is_not_json(llm, connect, key):
    content = text_of(ask(connect(llm, key), "broken json please"))
    assert content.strip()
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    (entry,) = Ledger(llm.ledger_dir).entries(caller=key)
    assert (entry.status, entry.fault, entry.reply) == (200, "malformed", content)


@pytest.mark.parametrize("reply", [{"reply_json": 12345}, {"reply_json": 7}, {"reply_json": "x"},
                                   {"reply_json": True}, {"reply_json": []}, {"reply_json": {"a": 1}},
                                   {"reply": "42"}, {"reply": ""}])
def test_malformed_never_parses_whatever_the_reply(reply):
    from labkit.llm import Rule

    with pytest.raises(json.JSONDecodeError):
        json.loads(Rule(name="m", malformed=True, **reply).reply_text())


def test_misspelt_rule_keys_fail_loudly():
    from pydantic import ValidationError

    from labkit.llm import Rule

    with pytest.raises(ValidationError, match="fail_frist"):
        Rule(name="typo", match="x", fail_frist=2)


def test_stream_true_gets_a_clear_400(llm, connect, key):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(connect(llm, key), "stream this", stream=True)
    assert caught.value.status_code == 400
    assert "does not stream" in caught.value.message


# --- rules at run time ---------------------------------------------------------------------------

def test_rules_pushed_at_run_time_take_priority(llm, connect, key):
    client = connect(llm, key)
    assert text_of(ask(client, "who-answers?")) == "the rules file"
    llm.push_rules([{"name": "pushed", "match": "who-answers", "reply": "the pushed rule"}])
    assert text_of(ask(client, "who-answers?")) == "the pushed rule"
    # pushing a rule with the same name replaces it, still in front
    llm.push_rules([{"name": "pushed", "match": "who-answers", "reply_json": {"v": 2}}])
    assert json.loads(text_of(ask(client, "who-answers?"))) == {"v": 2}
    assert [e.rule for e in Ledger(llm.ledger_dir).entries(caller=key)] == ["pushable", "pushed", "pushed"]
    names = httpx.get(f"http://{HOST}:{llm.port}/_health", timeout=5).json()["rules"]
    assert names[0] == "pushed" and names.count("pushed") == 1


def test_an_invalid_pushed_rule_is_refused_with_a_reason(llm):
    response = httpx.post(f"http://{HOST}:{llm.port}/_rules", timeout=5, headers=llm.admin_headers(),
                          json={"rules": [{"name": "bad", "fail_status": 404}]})
    assert 400 <= response.status_code < 500, response.text
    assert "fail_status" in response.text
    assert "bad" not in httpx.get(f"http://{HOST}:{llm.port}/_health", timeout=5).json()["rules"]


# --- the ledger ----------------------------------------------------------------------------------

def test_ledger_from_python_and_over_http(llm, connect, key):
    client = connect(llm, key)
    ask(client, "first question")
    ask(client, "second question", model="course-model")
    entries = Ledger(llm.ledger_dir).entries(caller=key)
    assert [(e.prompt, e.model, e.status, e.endpoint, e.caller) for e in entries] == [
        ("first question", MODEL, 200, "chat.completions", key),
        ("second question", "course-model", 200, "chat.completions", key)]
    assert entries[0].request["messages"] == [{"role": "user", "content": "first question"}]
    assert entries[0].at <= entries[1].at and entries[0].id < entries[1].id

    over_http = httpx.get(f"http://{HOST}:{llm.port}/_ledger", params={"caller": key}, timeout=5).json()
    assert [row["id"] for row in over_http] == [e.id for e in entries]
    assert [(row["prompt"], row["model"], row["status"], row["rule"]) for row in over_http] == [
        (e.prompt, e.model, e.status, e.rule) for e in entries]
    since = httpx.get(f"http://{HOST}:{llm.port}/_ledger", params={"caller": key, "since": entries[0].id},
                      timeout=5).json()
    assert [row["prompt"] for row in since] == ["second question"]


def test_a_non_course_key_is_never_stored_verbatim(llm, connect):
    secret = "sk-sentinel-123"
    ask(connect(llm, secret), "a call with a real-looking key")
    fingerprint = caller_of(secret)
    assert fingerprint.startswith("key:") and secret not in fingerprint
    entries = Ledger(llm.ledger_dir).entries(caller=fingerprint)
    assert len(entries) == 1 and entries[0].prompt == "a call with a real-looking key"
    stored = [path for path in llm.state_dir.rglob("*") if path.is_file()]
    assert any(path.name.startswith(Ledger.FILENAME) for path in stored)
    for path in stored:  # the SQLite file, its WAL and the server's log
        assert secret.encode() not in path.read_bytes(), f"{secret} found in {path}"


CLIENT_SCRIPT = textwrap.dedent("""
    import os, openai
    client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"],
                           max_retries=0, timeout=30)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "kill-me-now"}])
    print("got the reply", flush=True)
""")


def test_ledger_keeps_the_request_of_a_sigkilled_client(own_llm, connect, key, tmp_path):
    server = own_llm()
    server.push_rules([{"name": "hangs", "match": "kill-me-now", "latency_ms": 3000, "reply": "too late"}])
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": key}
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ledger = Ledger(server.ledger_dir)
        assert wait_until(lambda: ledger.entries(caller=key), timeout=15), "the request never reached the server"
        assert client.poll() is None, "the client got its reply before it could be killed"
        client.send_signal(signal.SIGKILL)
        assert client.wait(10) == -signal.SIGKILL
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        output = client.stdout.read().decode()
        client.stdout.close()
    assert "got the reply" not in output
    # the reply never reached anyone; the request is recorded anyway, and a crash of the server
    # itself (mid-request, in its latency) does not lose it: it was committed before the reply
    server.process.kill()
    (entry,) = Ledger(server.ledger_dir).entries(caller=key)
    assert (entry.prompt, entry.rule, entry.status, entry.reply) == ("kill-me-now", "hangs", 200, "too late")


# --- process hygiene -----------------------------------------------------------------------------

def test_server_binds_127_0_0_1_only(llm):
    listening = [c for p in llm.process.tree() for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening, "the course LLM listens on nothing"
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert llm.port in {c.laddr.port for c in listening}


def test_a_bad_rules_file_gives_a_readable_service_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "oops"\nfail_status = 404\n')
    server = CourseLLM(tmp_path / "llm", rules_files=[bad])
    try:
        with pytest.raises(ServiceError) as caught:
            server.start(timeout=15)
    finally:
        server.stop()
    message = str(caught.value)
    assert "course LLM exited at start" in message and "fail_status" in message
    assert not running(server.process.pid)
    assert server.process not in proc.live()


# --- the Responses API and scripted tool calls ---------------------------------------------------

def respond(client: openai.OpenAI, input, **kwargs):
    return client.responses.create(model=MODEL, input=input, **kwargs)


def call_output(call, output: str) -> dict:
    return {"type": "function_call_output", "call_id": call.call_id, "output": output}


def test_responses_plain_reply_with_usage(llm, connect, key):
    response = respond(connect(llm, key), "plain responses please", instructions="Be brief.")
    assert response.output_text == "a plain answer"
    assert response.status == "completed" and response.model == MODEL
    (message,) = response.output
    assert (message.type, message.role, message.content[0].type) == ("message", "assistant", "output_text")
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    (entry,) = Ledger(llm.ledger_dir).entries(caller=key)
    assert (entry.endpoint, entry.rule, entry.turn, entry.prompt, entry.reply) == (
        "responses", "responses-plain", 0, "plain responses please", "a plain answer")
    assert entry.request["instructions"] == "Be brief."


def test_responses_rules_and_chat_rules_are_apart(llm, connect, key):
    client = connect(llm, key)
    # a chat rule does not answer the Responses API (and the other way round) ...
    assert respond(client, "and the winner is").output_text == "OK."
    assert text_of(ask(client, "plain responses please")) == "OK."
    # ... unless it says endpoint = "any"
    assert respond(client, "either-endpoint").output_text == "from any endpoint"
    assert text_of(ask(client, "either-endpoint")) == "from any endpoint"
    assert [(e.endpoint, e.rule) for e in Ledger(llm.ledger_dir).entries(caller=key)] == [
        ("responses", "fallback"), ("chat.completions", "fallback"),
        ("responses", "either-endpoint"), ("chat.completions", "either-endpoint")]


def test_a_scripted_conversation_goes_turn_by_turn(llm, connect, key):
    client = connect(llm, key)
    conversation: list = [{"role": "user", "content": "[script] where are Oslo and Bergen?"}]
    first = respond(client, conversation)
    (call,) = first.output
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "lookup", {"city": "Oslo"})
    assert call.call_id and first.output_text == ""

    conversation += [call.model_dump(exclude_none=True), call_output(call, "Oslo: Norway")]
    second = respond(client, conversation)
    assert [(c.name, json.loads(c.arguments)) for c in second.output] == [
        ("lookup", {"city": "Bergen"}), ("notify", {"text": "two cities"})]  # two calls in one turn
    assert len({c.call_id for c in second.output}) == 2

    # one result of two: the turn is not answered yet, so the same turn comes again
    partial = conversation + [second.output[0].model_dump(exclude_none=True), call_output(second.output[0], "Norway")]
    assert [c.name for c in respond(client, partial).output] == ["lookup", "notify"]

    for c in second.output:
        conversation += [c.model_dump(exclude_none=True), call_output(c, "done")]
    third = respond(client, conversation)
    assert third.output_text == "Oslo and Bergen are both in Norway."
    # the same request again is the same turn: a retried turn gets the same answer
    assert respond(client, conversation).output_text == "Oslo and Bergen are both in Norway."
    entries = Ledger(llm.ledger_dir).entries(caller=key)
    assert [(e.rule, e.turn) for e in entries] == [("agent-script", t) for t in (0, 1, 1, 2, 2)]
    assert json.loads(entries[0].reply) == [{"call": "lookup", "arguments": '{"city": "Oslo"}'}]
    assert all(e.prompt == "[script] where are Oslo and Bergen?" for e in entries)


def test_responses_fail_first_then_the_script(llm, connect, key):
    client = connect(llm, key)
    with pytest.raises(openai.RateLimitError) as caught:
        respond(client, "responses-rate-limit")
    assert caught.value.status_code == 429 and "fail_first 1/1" in caught.value.message
    (call,) = respond(client, "responses-rate-limit").output
    assert call.name == "lookup"
    entries = Ledger(llm.ledger_dir).entries(caller=key)
    assert [(e.status, e.fault, e.turn) for e in entries] == [(429, "fail_first 1/1", None), (200, None, 0)]


def test_responses_malformed_arguments_are_not_json(llm, connect, key):
    (call,) = respond(connect(llm, key), "broken arguments").output
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.arguments)
    (entry,) = Ledger(llm.ledger_dir).entries(caller=key)
    assert entry.fault == "malformed"


def test_responses_stream_true_gets_a_clear_400(llm, connect, key):
    with pytest.raises(openai.BadRequestError) as caught:
        respond(connect(llm, key), "plain responses please", stream=True)
    assert caught.value.status_code == 400 and "does not stream" in caught.value.message


def test_chat_completions_scripted_tool_calls(llm, connect, key):
    client = connect(llm, key)
    messages: list = [{"role": "user", "content": "[chat-script] capital?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup", {"city": "Oslo"})
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Oslo is the capital"}]
    second = client.chat.completions.create(model=MODEL, messages=messages)
    assert json.loads(text_of(second)) == {"answer": "Oslo"}
    assert [e.turn for e in Ledger(llm.ledger_dir).entries(caller=key)] == [0, 1]


@pytest.mark.parametrize("rule, complaint", [
    ({"turns": [{"tool": "x"}]}, "must be the final reply"),
    ({"turns": [{"reply": "a", "tool": "x"}]}, "exactly one of"),
    ({"turns": [{"reply": "a"}], "reply": "b"}, "in its last turn"),
    ({"turns": [{"reply": "a", "arguments": {"k": 1}}]}, "belongs to `tool`"),
    ({"turns": [{"tool": "x", "argumnets": {}}, {"reply": "a"}]}, "argumnets"),
    ({"endpoint": "images"}, "endpoint"),
])
def test_a_bad_script_fails_loudly(rule, complaint):
    from pydantic import ValidationError

    from labkit.llm import Rule

    with pytest.raises(ValidationError, match=complaint):
        Rule(name="bad", **rule)


def test_an_old_ledger_gets_the_turn_column(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / Ledger.FILENAME) as db:
        db.executescript("""CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
            caller TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT NOT NULL, prompt TEXT NOT NULL,
            request TEXT NOT NULL, rule TEXT NOT NULL, status INTEGER NOT NULL, fault TEXT, reply TEXT);
            INSERT INTO requests VALUES (1, 0, 'lab-x', 'chat.completions', 'm', 'p', '{}', 'r', 200, NULL, 'ok');""")
    ledger = Ledger(tmp_path)
    ledger.record(caller="lab-x", endpoint="responses", model="m", prompt="p", request={}, rule="r", status=200,
                  fault=None, reply="ok", turn=3)
    assert [(e.id, e.turn) for e in ledger.entries(caller="lab-x")] == [(1, None), (2, 3)]


AGENT_SCRIPT = textwrap.dedent("""
    import asyncio, json, os
    from agents import Agent, Runner, function_tool

    calls = []

    @function_tool
    def lookup(city: str) -> str:
        \"\"\"Look a city up.\"\"\"
        calls.append(("lookup", city))
        return f"{city}: Norway"

    @function_tool
    def notify(text: str) -> str:
        \"\"\"Tell the team.\"\"\"
        calls.append(("notify", text))
        return "sent"

    agent = Agent(name="geo", instructions="Answer with tools.", model="gpt-4o-mini", tools=[lookup, notify])
    result = asyncio.run(Runner.run(agent, "[script] where are Oslo and Bergen?"))
    print(json.dumps({"final": result.final_output, "calls": calls,
                      "requests": len(result.raw_responses),
                      "usage": [r.usage.total_tokens for r in result.raw_responses]}))
""")


def test_the_real_agents_sdk_runs_a_scripted_conversation(llm, key):
    """The Agents SDK (Responses API by default) against the course LLM, tracing off, no network."""
    env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": key,
           "OPENAI_AGENTS_DISABLE_TRACING": "1"}
    done = subprocess.run([sys.executable, "-c", AGENT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["final"] == "Oslo and Bergen are both in Norway."
    assert sorted(map(tuple, result["calls"])) == [("lookup", "Bergen"), ("lookup", "Oslo"), ("notify", "two cities")]
    assert result["requests"] == 3 and all(tokens > 0 for tokens in result["usage"])
    entries = Ledger(llm.ledger_dir).entries(caller=key)
    assert [(e.endpoint, e.rule, e.turn, e.status) for e in entries] == [
        ("responses", "agent-script", t, 200) for t in (0, 1, 2)]
    last = entries[-1].request["input"]
    outputs = [item["output"] for item in last if item.get("type") == "function_call_output"]
    assert sorted(outputs) == ["Bergen: Norway", "Oslo: Norway", "sent"]
