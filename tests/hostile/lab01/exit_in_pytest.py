# --- HOSTILE(exit_in_pytest) -------------------------------------------------------------

def _exit_if_in_the_grader():
    """HOSTILE(exit_in_pytest): if this module is ever imported into the pytest process that runs
    the checks (and signs the report), end that process on the spot."""
    import os, sys
    inside = "_pytest" in sys.modules
    _note("exit_in_pytest", inside_pytest=inside, argv=sys.argv[:3])
    if inside:
        os._exit(0)


_exit_if_in_the_grader()
