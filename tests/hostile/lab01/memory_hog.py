# --- HOSTILE(memory_hog) -------------------------------------------------------------

_lab_call_llm = call_llm


@activity.defn(name="call_llm")
async def call_llm(prompt: str) -> str:
    """HOSTILE(memory_hog): allocates (and touches) 64 MiB after 64 MiB, without bound."""
    hoard = []
    try:
        while True:
            hoard.append(bytearray(64 << 20))
    except MemoryError:
        _note("memory_hog", mib=64 * len(hoard))
        raise
