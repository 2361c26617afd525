"""What a row of the course LLM's ledger says about the code that sent it (issue 19).

README.md ("Where the LLM ledger is") tells a student where `lab up`'s ledger file lives and what
identifies a row: the caller (the API key, when it starts with `lab-`), the prompt's tag, and the
X-Lab-Origin header a program started under labkit.attribution sends (program, Temporal activity
attempt, LangGraph node and thread). These tests hold the README to the code: the path is the one
`lab up`'s course LLM writes, and a LangGraph CLI run by hand as the README says leaves rows that
name their node and thread, read from the ledger file with plain SQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid

import pytest
from lab_stack import graded_copy

from labkit import course, state
from labkit.llm import Ledger
from labkit.services import CourseLLM

pytestmark = pytest.mark.timeout(900)
README = (course.REPO / "README.md").read_text()


def test_the_readme_names_the_ledger_file_lab_up_writes():
    """Given `lab up`'s course LLM (labkit.background: CourseLLM(STATE_DIR)), Then the README names
    its ledger file, relative to the repository, and the table it holds."""
    written = (CourseLLM(state.STATE_DIR).ledger_dir / Ledger.FILENAME)
    if written.is_relative_to(course.REPO):
        written = written.relative_to(course.REPO)
    assert f"`{written}`" in README, f"README.md does not name `{written}`, where `lab up` keeps the ledger"
    assert "table `requests`" in README


def test_a_langgraph_run_by_hand_under_attribution_names_node_and_thread(tmp_path):
    """Given Lab 03's reference CLI started as the README says (`python -m labkit.attribution <module>`),
    When it runs a thread to the end against the course LLM,
    Then the ledger file holds one row per node whose caller is the key, whose origin names the node
    and the thread, and a plain `python -m` run of another thread leaves rows with no origin."""
    target = graded_copy("03", tmp_path)
    llm = CourseLLM(tmp_path / "llm", rules_files=[course.COURSE_TOML])
    key, thread = f"lab-ledger-{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:6]}"
    env = target.python_env(OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=key)
    env.pop("DATABASE_URL", None)
    db = str(tmp_path / "lab03.sqlite")
    try:
        llm.start()
        for wrap, run_thread in ((["-m", "labkit.attribution"], thread), (["-m"], "plain")):
            done = subprocess.run([sys.executable, *wrap, target.module("cli"), "run", "--thread", run_thread,
                                   "--sqlite", db], env={**env, "LAB_ATTRIBUTION": "1"}, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        llm.stop()
    with sqlite3.connect(llm.ledger_dir / Ledger.FILENAME) as ledger:
        rows = ledger.execute("SELECT caller, prompt, origin FROM requests ORDER BY id").fetchall()
    assert [caller for caller, _, _ in rows] == [key] * 6, rows
    tagged = [(json.loads(origin)["node"], json.loads(origin)["thread"]) for _, _, origin in rows[:3]]
    assert tagged == [("fetch", thread), ("transform", thread), ("report", thread)], tagged
    assert all(f"[lab03 node={node}]" in prompt for (_, prompt, _), (node, _) in zip(rows, tagged))
    assert [origin for _, _, origin in rows[3:]] == [None] * 3, rows[3:]
    assert os.environ.get("OPENAI_API_KEY") != key
