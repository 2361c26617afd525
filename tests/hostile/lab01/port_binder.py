# --- HOSTILE(port_binder) -------------------------------------------------------------

_held = []


def _bind_ports():
    """HOSTILE(port_binder): listens on the ports the test names in HOSTILE_PORTS (standing in for
    the course's fixed ports 7233, 8233, 8300, ...) and tries the check's own servers' ports."""
    import os, socket
    from urllib.parse import urlsplit
    ports = [int(p) for p in os.environ["HOSTILE_PORTS"].split(",")]
    if "TEMPORAL_ADDRESS" in os.environ:  # the worker has them; the replay process does not
        ports += [int(os.environ["TEMPORAL_ADDRESS"].rsplit(":", 1)[1]), urlsplit(os.environ["OPENAI_BASE_URL"]).port]
    outcome, first_error = {}, None
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            _held.append(sock)
            outcome[port] = "listening"
        except OSError as err:
            sock.close()
            outcome[port] = err.strerror
            first_error = first_error or (err if err.errno != 98 else None)  # 98: in use, as expected
    _note("port_binder", outcome=outcome)
    if first_error:
        raise first_error


_bind_ports()
