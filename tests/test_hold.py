"""`lab hold` and `lab release`, as a person runs them beside a worker they kill by hand (issue 19).

Lab 01's README asks a person to kill the worker while parse_json's retry waits 2 s: too short to
type a command. `lab hold` pauses the failed activity on the server until `lab release`. Here a
one-activity workflow fails its first attempt with a retry timer of an HOUR, so nothing depends on
how fast anything runs: if the released attempt runs at all before the test's hang limit, it ran
because of the release, not because its timer fired.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from selftest import HANG_LIMIT_S

from labkit import proc
from labkit.services import TemporalServer

pytestmark = pytest.mark.timeout(HANG_LIMIT_S + 300)
REPO = Path(__file__).resolve().parent.parent

WORKER = '''
    import asyncio, os
    from datetime import timedelta
    from temporalio import activity, workflow
    from temporalio.client import Client
    from temporalio.common import RetryPolicy
    from temporalio.exceptions import ApplicationError
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    @activity.defn
    async def flaky() -> str:
        if activity.info().attempt == 1:
            raise ApplicationError("deliberate failure on the first attempt")
        return f"attempt {activity.info().attempt} by pid {os.getpid()}"

    @workflow.defn
    class Flaky:
        @workflow.run
        async def run(self) -> str:
            return await workflow.execute_activity(
                flaky, start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(initial_interval=timedelta(hours=1), maximum_attempts=3))

    async def main():
        client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
        async with Worker(client, task_queue=os.environ["QUEUE"], workflows=[Flaky], activities=[flaky],
                          workflow_runner=UnsandboxedWorkflowRunner()):  # a test worker run as __main__
            print("polling", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
'''


def lab(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=HANG_LIMIT_S)


def test_hold_pauses_the_retry_until_release_and_names_the_worker(tmp_path):
    """Given a worker whose activity fails on attempt 1 (retry in an hour) and `lab hold` watching,
    When the workflow runs, the person kills the worker that `lab hold` names, starts another and
    runs `lab release`,
    Then the retry was paused, it runs at once on the new worker, and the workflow completes."""
    from temporalio.client import Client

    server = TemporalServer(tmp_path / "temporal", ui_port=None).start()
    queue, workflow_id = f"hold-{uuid.uuid4().hex[:6]}", f"flaky-{uuid.uuid4().hex[:6]}"
    (tmp_path / "flaky_worker.py").write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "TEMPORAL_ADDRESS": server.address, "QUEUE": queue, "PYTHONPATH": str(tmp_path)}
    workers = []

    def start_worker():
        worker = proc.start([sys.executable, "-m", "flaky_worker"], name=f"worker{len(workers) + 1}",
                            log_path=tmp_path / f"worker{len(workers) + 1}.log", env=env, cwd=tmp_path)
        workers.append(worker)
        deadline = time.monotonic() + HANG_LIMIT_S  # a hang limit: the worker polls in seconds
        while "polling" not in worker.output() and worker.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.alive, worker.output()
        return worker

    watcher = None
    try:
        worker1 = start_worker()
        watcher = subprocess.Popen([sys.executable, "-m", "labkit.cli", "hold"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        async def start_and_describe():
            client = await Client.connect(server.address)
            handle = await client.start_workflow("Flaky", id=workflow_id, task_queue=queue)
            return client, handle

        client, handle = asyncio.run(start_and_describe())
        held, _ = watcher.communicate(timeout=HANG_LIMIT_S)
        assert watcher.returncode == 0, held
        assert f"flaky attempt 1 of {workflow_id} failed (deliberate failure on the first attempt)" in held, held
        assert f"kill -9 {worker1.pid}" in held and f"lab release {workflow_id}" in held, held

        async def pending():
            description = await (await Client.connect(server.address)).get_workflow_handle(workflow_id).describe()
            return [(p.activity_type.name, p.attempt, p.paused) for p in description.raw_description.pending_activities]

        assert asyncio.run(pending()) == [("flaky", 2, True)]
        worker1.kill()
        worker2 = start_worker()
        released = lab("release", workflow_id, env=env)
        assert released.returncode == 0 and "released: flaky" in released.stdout, released.stdout + released.stderr

        async def result():
            return await (await Client.connect(server.address)).get_workflow_handle(workflow_id).result()

        assert asyncio.run(asyncio.wait_for(result(), HANG_LIMIT_S)) == f"attempt 2 by pid {worker2.pid}"
        again = lab("release", workflow_id, env=env)
        assert again.returncode == 1 and "no paused activity" in again.stdout, again.stdout
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        for worker in workers:
            worker.kill()
            worker.stop()
        server.stop()


def test_hold_says_why_it_gives_up(tmp_path):
    """Given a server with no workflow running, When `lab hold --timeout 1` runs, Then it exits 1 and
    says no activity failed; given no server at all, it says it cannot reach Temporal."""
    server = TemporalServer(tmp_path / "temporal", ui_port=None).start()
    try:
        out = lab("hold", "--timeout", "1", env={**os.environ, "TEMPORAL_ADDRESS": server.address})
    finally:
        server.stop()
    assert out.returncode == 1 and "no activity failed and waited for a retry within 1 s" in out.stdout, \
        f"exit {out.returncode}\n{out.stdout}{out.stderr}"
    with socket.socket() as bound:  # a port nobody listens on (held, so no other server takes it)
        bound.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{bound.getsockname()[1]}"
        gone = lab("release", "wf-x", env={**os.environ, "TEMPORAL_ADDRESS": nowhere})
    assert gone.returncode == 2 and f"cannot reach Temporal at {nowhere}" in gone.stdout, \
        f"exit {gone.returncode}\n{gone.stdout}{gone.stderr}"
