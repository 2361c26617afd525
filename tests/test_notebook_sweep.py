"""A notebook's last cell, "Crash-test it yourself": labkit.notebook.run_sweep runs `lab sweep NN` on the
notebook's lab folder and shows what a student would type; under the notebook test it only shows it.

The sweep itself is tested on every solution in tests/test_crash_sweep.py; this is the cell's path
(the command it builds, the CLI it runs, the verdict it hands back), on the quickest lab to sweep.
"""

from __future__ import annotations

import pytest

from labkit import course, notebook, proc


def test_under_the_notebook_test_the_cell_shows_the_command_and_runs_nothing(monkeypatch, capsys):
    lab = course.load().lab("04")
    monkeypatch.setenv("LAB_NOTEBOOK_TEST_TOKEN", "t")
    assert notebook.run_sweep(lab, lab.starter_dir) is None, "run_sweep ran under the notebook test"
    shown = capsys.readouterr().out
    assert "$ lab sweep 04 --trials 1 --kills 2 --seed 2026\n" in shown, \
        f"observed {shown!r}; expected the command a student types (the starter folder needs no --path)"


@pytest.mark.timeout(900)  # a hang limit: one trial of two kills takes 15-40 s here
def test_the_cell_sweeps_the_lab_folder_and_hands_back_the_verdict(monkeypatch, capsys):
    lab = course.load().lab("04")
    monkeypatch.delenv("LAB_NOTEBOOK_TEST_TOKEN", raising=False)
    try:
        done = notebook.run_sweep(lab, lab.solution_dir)
    finally:
        proc.reap_all()
    shown = capsys.readouterr().out
    assert done is not None and done.returncode == 0, f"observed exit status {done and done.returncode}:\n{shown}"
    assert f"--path {lab.solution_dir}" in shown and "0 violations" in shown, (
        f"expected the command with the folder's --path and the sweep's report, 0 violations; observed:\n{shown}")
