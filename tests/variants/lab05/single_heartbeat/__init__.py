"""Lab 05 variant single_heartbeat: one heartbeat before the download, as in the text, then a plain GET."""
