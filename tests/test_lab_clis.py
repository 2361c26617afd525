"""Every command and option of the Labs 03/04 command lines, on PostgreSQL and on SQLite (issue 19).

The checks drive the CLIs on PostgreSQL only, so an option they never pass went untested: Lab 04's
`fork --sqlite` died of KeyError: 'checkpoint_ns' and nothing noticed. Here the reference solution
(copied as grading copies it) runs every subcommand with every option and every choice, once per
backend, each command a new process as a student runs it, and each result is read for its content:
the state it printed, the checkpoints the thread holds, the LLM calls the course LLM's ledger holds.

A CLI that gains an option or a choice fails here until its scenario passes it: the options are
read from the CLI's own --help.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lab_stack import graded_copy
from selftest import tail_of

from labkit import course
from labkit.postgres import from_env
from labkit.services import CourseLLM
from labkit.web import CourseWeb

HANG_LIMIT_S = 300  # one CLI command: seconds here; still running after this, it is stuck
pytestmark = pytest.mark.timeout(30 * HANG_LIMIT_S)
BACKENDS = ["postgres", "sqlite"]


@dataclass
class Cli:
    """One lab's reference CLI, run as new processes against one backend; records what it ran."""

    lab_id: str
    tmp: Path
    llm: CourseLLM
    web: CourseWeb
    database_url: str | None  # None: SQLite
    ran: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.target = graded_copy(self.lab_id, self.tmp)
        self.sqlite = self.tmp / f"lab{self.lab_id}.sqlite"

    def __call__(self, *args: str, key: str, expect: int = 0) -> subprocess.CompletedProcess:
        argv = list(args) + ([] if self.database_url else ["--sqlite", str(self.sqlite)])
        self.ran.append(argv)
        env = self.target.python_env(OPENAI_BASE_URL=self.llm.base_url, OPENAI_API_KEY=key,
                                     COURSE_WEB_URL=self.web.url_for(key), DATABASE_URL=self.database_url or "")
        if not self.database_url:
            env.pop("DATABASE_URL")
        env.pop("LAB04_PAUSE", None)
        try:
            done = subprocess.run([sys.executable, "-m", self.target.module("cli"), *argv], env=env,
                                  cwd=self.tmp, capture_output=True, text=True, timeout=HANG_LIMIT_S)
        except subprocess.TimeoutExpired as hung:
            pytest.fail(f"hung: `cli {' '.join(argv)}` still running after {HANG_LIMIT_S} s:\n"
                        f"{tail_of(str(hung.output or ''))}", pytrace=False)
        assert done.returncode == expect, (f"`cli {' '.join(argv)}`: observed exit status {done.returncode}; "
                                           f"expected {expect}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return done

    def nodes_called(self, key: str) -> list[str]:
        """The nodes whose LLM calls the course LLM recorded for this key, in order."""
        return [re.search(r"node=(\w+)", e.prompt)[1] for e in self.llm.ledger().entries(caller=key)]


def new_key() -> str:
    return f"lab-clis-{uuid.uuid4().hex[:8]}"


def state_of(output: str) -> dict:
    """The JSON state a command printed first."""
    return json.JSONDecoder().raw_decode(output[output.index("{"):])[0]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab-clis")
    llm, web, postgres = (CourseLLM(tmp / "llm", rules_files=[course.COURSE_TOML]), CourseWeb(tmp / "web"),
                          from_env(tmp / "postgres"))
    try:
        for server in (llm, web, postgres):
            server.launch()
        for server in (llm, web, postgres):
            server.wait_ready()
        yield llm, web, postgres
    finally:
        for server in (llm, web, postgres):
            server.stop()


def make_cli(lab_id: str, backend: str, servers, tmp_path) -> Cli:
    llm, web, postgres = servers
    url = postgres.create_database(f"clis_{lab_id}_{uuid.uuid4().hex[:8]}") if backend == "postgres" else None
    return Cli(lab_id, tmp_path, llm, web, url)


def checkpoint_count(history: str, thread: str) -> int:
    found = re.search(rf"(\d+) checkpoints for thread '{thread}'", history)
    assert found, f"observed no 'N checkpoints for thread' line in:\n{history}"
    return int(found[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_lab03_cli_every_command_and_option(backend, servers, tmp_path):
    """Given Lab 03's reference CLI on PostgreSQL or a SQLite file,
    When run crashes after transform (by sys.exit, then by SIGKILL), resume continues, history lists,
    and a run without options goes to the end,
    Then each crash leaves 4 checkpoints, each resume calls the LLM for report only and leaves 5,
    and --topic reaches the state."""
    cli = make_cli("03", backend, servers, tmp_path)
    for crash_with, status in (("exit", 1), ("kill", -9)):
        thread, topic, key = f"t-{crash_with}", f"topic {uuid.uuid4().hex[:6]}", new_key()
        crashed = cli("run", "--thread", thread, "--topic", topic, "--crash-after", "transform",
                      "--crash-with", crash_with, key=key, expect=status)
        assert f"CRASH ({crash_with}) after transform, before report" in crashed.stderr, crashed.stderr
        assert cli.nodes_called(key) == ["fetch", "transform"]
        assert checkpoint_count(cli("history", "--thread", thread, key=key).stdout, thread) == 4
        resumed = cli("resume", "--thread", thread, key=(resume_key := new_key()))
        final = state_of(resumed.stdout)
        assert final["topic"] == topic and final.get("report"), final
        assert cli.nodes_called(resume_key) == ["report"]
        history = cli("history", "--thread", thread, key=key).stdout
        assert checkpoint_count(history, thread) == 5 and "report" in history, history

    plain = cli("run", "--thread", "t-plain", key=(key := new_key()))
    assert state_of(plain.stdout).get("report") and cli.nodes_called(key) == ["fetch", "transform", "report"]
    assert_every_option_used(cli, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lab04_cli_every_command_and_option(backend, servers, tmp_path):
    """Given Lab 04's reference CLI on PostgreSQL or a SQLite file,
    When a thread runs to the pause, is shown (now and at a past checkpoint), approved with an edit,
    replayed and forked from after search, and another thread pauses inside review by interrupt()
    and is approved,
    Then each prints the state it should: paused before review, the edit as the summary, the fork's
    question, and each calls the LLM only where the graph runs summarize again."""
    cli = make_cli("04", backend, servers, tmp_path)
    key, query = new_key(), "quantum error correction"
    run = cli("run", "--thread", "m", "--query", query, "--pause", "before", key=key)
    assert "PAUSED before review." in run.stdout and state_of(run.stdout)["messages"] == [f"human: {query}"]
    history = cli("history", "--thread", "m", "--pause", "before", key=key).stdout
    assert checkpoint_count(history, "m") == 4, history
    after_search = next(line.split()[2] for line in history.splitlines() if re.match(r"\s+1\s+loop\s", line))
    past = cli("show", "--thread", "m", "--checkpoint", after_search, key=key).stdout
    assert "PAUSED before summarize." in past and state_of(past)["status"] == "searched", past
    assert "PAUSED before review." in cli("show", "--thread", "m", key=key).stdout

    edit = f"edited {uuid.uuid4().hex[:6]}"
    approved = cli("approve", "--thread", "m", "--summary", edit, key=key).stdout
    assert "FINISHED" in approved and state_of(approved)["summary"] == edit, approved
    assert cli.nodes_called(key) == ["summarize"]

    replayed = cli("replay", "--thread", "m", "--pause", "before", "--checkpoint", after_search, key=(replay_key := new_key())).stdout
    assert "PAUSED before review." in replayed and state_of(replayed)["summary"] != edit, replayed
    assert cli.nodes_called(replay_key) == ["summarize"]

    forked = cli("fork", "--thread", "m", "--pause", "before", "--checkpoint", after_search, "--query", "surface code",
                 key=(fork_key := new_key())).stdout
    assert "PAUSED before review." in forked and state_of(forked)["messages"] == ["human: surface code"], forked
    assert cli.nodes_called(fork_key) == ["summarize"]
    assert "surface code" in cli.llm.ledger().entries(caller=fork_key)[0].prompt

    paused = cli("run", "--thread", "i", "--pause", "interrupt", key=(key := new_key())).stdout
    assert "PAUSED inside review at interrupt()" in paused, paused
    shown = cli("show", "--thread", "i", "--pause", "interrupt", key=key).stdout
    assert "PAUSED inside review at interrupt()" in shown and "approve --thread i --pause interrupt" in shown, shown
    done = cli("approve", "--thread", "i", "--pause", "interrupt", "--summary", edit, key=key).stdout
    assert "FINISHED" in done and state_of(done)["summary"] == edit, done
    assert_every_option_used(cli, backend)


def options_of(lab_id: str, tmp_path: Path) -> set[tuple[str, str]]:
    """(subcommand, option) pairs, and ("any command", option=choice) for each choice an option
    offers, read from the CLI's own --help."""
    target = graded_copy(lab_id, tmp_path / "help")

    def help_of(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", target.module("cli"), *args, "--help"], env=target.python_env(),
                              capture_output=True, text=True, timeout=HANG_LIMIT_S).stdout

    commands = re.search(r"\{([a-z,]+)\}", help_of())[1].split(",")
    found = set()
    for command in commands:
        for option, choices in re.findall(r"(--[a-z-]+)(?: \{([a-z,]+)\})?", help_of(command)):
            if option != "--help":
                found.add((command, option))
                found |= {("any command", f"{option}={choice}") for choice in choices.split(",") if choices}
    return found


def used(ran: list[list[str]]) -> set[tuple[str, str]]:
    pairs = set()
    for argv in ran:
        for index, word in enumerate(argv[1:], start=1):
            if word.startswith("--"):
                pairs.add((argv[0], word))
                if index + 1 < len(argv):
                    pairs.add(("any command", f"{word}={argv[index + 1]}"))
    return pairs


def assert_every_option_used(cli: Cli, backend: str) -> None:
    """Each option and choice the CLI's --help lists was passed at least once in this scenario
    (--sqlite only on SQLite: on PostgreSQL, DATABASE_URL chooses the server)."""
    offered = options_of(cli.lab_id, cli.tmp)
    if backend == "postgres":
        offered = {(command, option) for command, option in offered if option != "--sqlite"}
    missing = sorted(offered - used(cli.ran))
    assert not missing, f"Lab {cli.lab_id}'s CLI offers options this scenario never passed: {missing}"
