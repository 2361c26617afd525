"""The notification sink, tested as the labs use it: real HTTP to its own process on 127.0.0.1.

One sink serves most tests; every test uses its own bearer token, so deliveries, keys and holds
never leak between tests. Tests that kill the sink or a caller start their own processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import httpx
import psutil
import pytest

from labkit.services import ServiceError
from labkit.sink import IDEMPOTENCY_HEADER, REPLAYED_HEADER, NotificationSink, SinkStore, caller_of


def wait_until(condition, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return condition()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop(sink: NotificationSink) -> None:
    pids = [p.pid for p in sink.process.tree()]
    sink.stop()
    assert not [pid for pid in pids if running(pid)], "the sink left processes behind"


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    server = NotificationSink(tmp_path_factory.mktemp("sink"))
    try:
        server.start()
        yield server
    finally:
        _stop(server)


@pytest.fixture
def token(request) -> str:
    return f"lab-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def post(sink: NotificationSink, token: str, channel: str, text: str, key: str | None = None,
         timeout: float = 10) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers[IDEMPOTENCY_HEADER] = key
    return httpx.post(sink.messages_url, json={"channel": channel, "text": text}, headers=headers,
                      timeout=timeout)


def test_a_message_is_delivered_and_recorded(sink, token):
    response = post(sink, token, "#sales", "Q3: West led")
    assert response.status_code == 200
    answer = response.json()
    assert answer["ok"] is True and answer["channel"] == "#sales"
    assert REPLAYED_HEADER not in response.headers
    (delivery,) = sink.deliveries(caller=token)
    assert (delivery.id, delivery.channel, delivery.text, delivery.key) == (answer["id"], "#sales", "Q3: West led", None)
    (attempt,) = sink.attempts(caller=token)
    assert (attempt.outcome, attempt.delivery_id, attempt.held, attempt.caller_gone) == (
        "delivered", delivery.id, False, False)
    assert attempt.answered_at is not None and attempt.answered_at >= attempt.at


def test_without_a_key_every_request_is_a_delivery(sink, token):
    first = post(sink, token, "#sales", "same text").json()
    second = post(sink, token, "#sales", "same text").json()
    assert first["id"] != second["id"]
    assert len(sink.deliveries(caller=token)) == 2


def test_a_repeated_key_gets_the_same_answer_and_no_second_delivery(sink, token):
    first = post(sink, token, "#sales", "once only", key="wf-1-4")
    again = post(sink, token, "#sales", "once only", key="wf-1-4")
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers[REPLAYED_HEADER] == "true"
    assert len(sink.deliveries(caller=token)) == 1
    assert [(a.outcome, a.key, a.delivery_id) for a in sink.attempts(caller=token)] == [
        ("delivered", "wf-1-4", first.json()["id"]), ("duplicate", "wf-1-4", first.json()["id"])]
    # another key is another delivery
    post(sink, token, "#sales", "once only", key="wf-1-5")
    assert [d.key for d in sink.deliveries(caller=token)] == ["wf-1-4", "wf-1-5"]


def test_keys_are_per_caller(sink, token):
    post(sink, token + "-a", "#sales", "hi", key="k")
    post(sink, token + "-b", "#sales", "hi", key="k")
    assert len(sink.deliveries(caller=token + "-a")) == 1
    assert len(sink.deliveries(caller=token + "-b")) == 1


def test_a_bad_request_is_refused_and_not_delivered(sink, token):
    response = httpx.post(sink.messages_url, json={"text": "no channel"}, timeout=5,
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400 and "channel" in response.json()["error"]
    assert sink.deliveries(caller=token) == []
    assert [a.outcome for a in sink.attempts(caller=token)] == ["refused"]


def test_a_hold_records_first_and_answers_on_release(sink, token):
    hold = sink.hold(caller=token, match="hold me")
    answers: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: answers.append(post(sink, token, "#sales", "hold me please")))
    caller.start()
    try:
        attempt = wait_until(lambda: next(iter(sink.attempts(caller=token)), None), timeout=10)
        assert attempt is not None and attempt.outcome == "delivered"
        assert wait_until(lambda: sink.attempts(caller=token)[0].held, timeout=5)
        time.sleep(0.3)
        assert not answers, "the held answer was sent before the release"
        assert len(sink.deliveries(caller=token)) == 1  # the side effect already happened
        # an unmatched message is not held, nor one to another channel
        assert post(sink, token, "#sales", "not this one").status_code == 200
        sink.hold(caller=token, channel="#exec", times=0)  # a spent hold holds nothing
        assert post(sink, token, "#exec", "hold me? no").status_code == 200
        sink.release(hold)
        caller.join(10)
    finally:
        sink.release(hold)
        caller.join(10)
    assert answers and answers[0].status_code == 200
    first = sink.attempts(caller=token)[0]
    assert first.held and first.answered_at is not None and not first.caller_gone
    # times=1: the next matching message is not held (the sink's own record says so)
    post(sink, token, "#sales", "hold me again")
    assert [(a.text, a.held) for a in sink.attempts(caller=token)][-1] == ("hold me again", False)


def test_a_hold_can_name_a_channel(sink, token):
    sink.hold(caller=token, channel="#exec", release_after_s=0.5)
    started = time.monotonic()
    post(sink, token, "#sales", "another channel")
    post(sink, token, "#exec", "this channel")
    assert time.monotonic() - started >= 0.5
    assert [a.held for a in sink.attempts(caller=token)] == [False, True]


def test_a_hold_ends_by_itself_after_its_delay(sink, token):
    sink.hold(caller=token, release_after_s=0.5)
    started = time.monotonic()
    assert post(sink, token, "#sales", "delayed").status_code == 200
    assert time.monotonic() - started >= 0.5  # held for its delay (a hang would meet the test's timeout)
    assert sink.attempts(caller=token)[0].held


CALLER_SCRIPT = textwrap.dedent("""
    import os, httpx
    httpx.post(os.environ["SINK_URL"], json={"channel": "#sales", "text": "kill me mid-answer"},
               headers={"Authorization": "Bearer " + os.environ["SINK_TOKEN"], "Idempotency-Key": "wf-9-4"},
               timeout=30)
    print("got the answer", flush=True)
""")


def test_a_sigkilled_caller_leaves_its_delivery_recorded_and_unanswered(sink, token):
    sink.hold(caller=token)
    env = {**os.environ, "SINK_URL": sink.messages_url, "SINK_TOKEN": token}
    child = subprocess.Popen([sys.executable, "-c", CALLER_SCRIPT], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: any(a.held for a in sink.attempts(caller=token)), timeout=15), \
            "the delivery was never held"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        output = child.stdout.read().decode()
        child.stdout.close()
    assert "got the answer" not in output
    assert wait_until(lambda: sink.attempts(caller=token)[0].caller_gone, timeout=5), "the hang-up was not seen"
    (attempt,) = sink.attempts(caller=token)
    assert attempt.answered_at is None
    # the retry a crashed caller makes with the same key is answered at once, without a second delivery
    retry = post(sink, token, "#sales", "kill me mid-answer", key="wf-9-4")
    assert retry.headers[REPLAYED_HEADER] == "true"
    assert len(sink.deliveries(caller=token)) == 1


def test_the_record_survives_a_sink_restart_and_a_kill(tmp_path, token):
    first = NotificationSink(tmp_path).start()
    try:
        post(first, token, "#sales", "before the crash", key="k1")
    finally:
        first.process.kill()
    second = NotificationSink(tmp_path).start()
    try:
        again = post(second, token, "#sales", "before the crash", key="k1")
        assert again.headers[REPLAYED_HEADER] == "true"
        assert [d.text for d in second.deliveries(caller=token)] == ["before the crash"]
    finally:
        _stop(second)
    assert SinkStore(tmp_path / "sink").deliveries(caller=token)[0].key == "k1"


def test_the_record_is_readable_over_http(sink, token):
    post(sink, token, "#sales", "over http", key="h1")
    rows = httpx.get(f"{sink.base_url}/_deliveries", params={"caller": token}, timeout=5).json()
    assert [(r["text"], r["key"]) for r in rows] == [("over http", "h1")]
    attempts = httpx.get(f"{sink.base_url}/_attempts", params={"caller": token}, timeout=5).json()
    assert [a["outcome"] for a in attempts] == ["delivered"]


def test_a_non_course_token_is_never_stored_verbatim(sink):
    secret = "xoxb-sentinel-123"
    post(sink, secret, "#sales", "with a real-looking token")
    assert caller_of(secret).startswith("token:")
    for path in sink.store_dir.parent.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"{secret} found in {path}"


def test_an_unknown_hold_field_is_refused(sink):
    response = httpx.post(f"{sink.base_url}/_hold", json={"tmies": 2}, timeout=5)
    assert response.status_code == 422 and "tmies" in response.text


def test_the_sink_binds_127_0_0_1_only(sink):
    listening = [c for p in sink.process.tree() for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}


def test_a_taken_port_gives_a_readable_service_error(sink, tmp_path):
    clash = NotificationSink(tmp_path, port=sink.port)
    try:
        with pytest.raises(ServiceError):
            clash.start(timeout=10)
    finally:
        clash.stop()
