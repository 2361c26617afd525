# --- HOSTILE(escaping_child) -------------------------------------------------------------

def _escape():
    """HOSTILE(escaping_child): a double-forked grandchild in a session of its own, ignoring SIGTERM,
    re-executed with an empty environment (no LAB_GRADE_RUN marker): out of reach of the process
    group kill, PDEATHSIG and the marker sweep."""
    import os, sys
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                    "signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(3600)")
            _note("escaping_child", daemon=os.getpid())
            os.execve(sys.executable, [sys.executable, "-c", code], {})
        os._exit(0)


_escape()
