# --- HOSTILE(import_loop) -------------------------------------------------------------

_note("import_loop", started=True)
while True:  # HOSTILE(import_loop): the import never returns, and burns a core while it waits
    pass
