"""The Hatchet client, with or without a Hatchet server.

`Hatchet()` refuses to start without HATCHET_CLIENT_TOKEN, and the token must look like a JWT
whose claims name the tenant and the server's addresses (the SDK reads them; it does not check the
signature). With a real server, set the token the server gave you. Without one (this lab's
checks, `python -m lab09_hatchet_pipeline.local`), this module puts in an unsigned local token that
names 127.0.0.1 and talks to nothing: defining workflows and `mock_run` never open a connection.
"""

from __future__ import annotations

import base64
import json
import os

from hatchet_sdk import Hatchet


def _part(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def offline_token() -> str:
    """An unsigned JWT-shaped token: enough for the SDK's config, useless to any real server."""
    claims = {"sub": "offline-tenant", "server_url": "http://127.0.0.1:8888",
              "grpc_broadcast_address": "127.0.0.1:7077"}
    return ".".join([_part({"alg": "none", "typ": "JWT"}), _part(claims), "offline"])


OFFLINE = not os.environ.get("HATCHET_CLIENT_TOKEN")
if OFFLINE:
    os.environ["HATCHET_CLIENT_TOKEN"] = offline_token()
    os.environ.setdefault("HATCHET_CLIENT_TLS_STRATEGY", "none")

hatchet = Hatchet()
