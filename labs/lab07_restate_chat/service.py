"""Serve the ChatSession object so that restate-server can call it.

    python -m lab07_restate_chat.service        (listens on $LAB07_BIND, default 127.0.0.1:9080)

This process holds no durable state: restate-server (a separate process) stores every journal and
every session's conversation, and calls this endpoint over HTTP/2 whenever a handler has work to
do. hypercorn serves in this one process (no worker processes): a SIGKILL of this pid is the whole
service gone, as when its host dies.
"""

import asyncio

import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config

from .chat import chat_session
from .models import service_bind

app = restate.app(services=[chat_session])


def main() -> None:
    config = Config()
    config.bind = [service_bind()]
    config.accesslog = None
    print(f"serving {chat_session.name} on {service_bind()}", flush=True)
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
