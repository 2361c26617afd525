# --- HOSTILE(exit_in_activity) -------------------------------------------------------------

_lab_parse_json = parse_json


@activity.defn(name="parse_json")
async def parse_json(text: str) -> dict:
    """HOSTILE(exit_in_activity): instead of raising on attempt 1, ends the worker process."""
    import os
    if activity.info().attempt == 1:
        _note("exit_in_activity", attempt=1)
        os._exit(3)
    return await _lab_parse_json(text)
