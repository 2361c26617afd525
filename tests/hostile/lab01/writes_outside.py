# --- HOSTILE(writes_outside) -------------------------------------------------------------

def _write_outside():
    """HOSTILE(writes_outside): writes into the course's checks/, labkit/ and course.toml (found
    from the grading pytest's command line), into $HOME and into /tmp."""
    import os, pathlib
    pid, repo = os.getppid(), None
    while pid > 1 and repo is None:
        for part in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            if part.endswith(b".py") and b"/checks/test_lab01" in part:
                repo = pathlib.Path(part.decode()).parent.parent
        pid = int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    tag = os.environ["HOSTILE_TAG"]
    targets = [repo / "checks" / f"_hostile_{tag}.py", repo / "labkit" / f"_hostile_{tag}.py",
               repo / "course.toml", pathlib.Path.home() / f"_hostile_{tag}", pathlib.Path(f"/tmp/_hostile_{tag}")]
    outcome, first_error = {}, None
    for target in targets:
        try:
            with open(target, "a") as f:
                f.write("\n# HOSTILE(writes_outside) was here\n")
            outcome[str(target)] = "written"
        except OSError as err:
            outcome[str(target)] = err.strerror
            first_error = first_error or err
    _note("writes_outside", outcome=outcome)
    if first_error:
        raise first_error  # as a student's code would: the error ends the worker


_write_outside()
