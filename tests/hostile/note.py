def _note(case, **facts):
    # HOSTILE: leave proof that the trick was tried (the test reads HOSTILE_NOTES_DIR)
    import json, os, pathlib
    with open(pathlib.Path(os.environ["HOSTILE_NOTES_DIR"], case + ".jsonl"), "a") as f:
        f.write(json.dumps({"pid": os.getpid(), **facts}) + "\n")
