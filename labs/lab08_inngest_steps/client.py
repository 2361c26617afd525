"""The app's Inngest client: one per app, shared by its functions.

is_production=False: the SDK's development mode (no signing key; a dev server, when you run one,
is found at INNGEST_DEV / http://127.0.0.1:8288). The lab's own runner never contacts a server.
"""

import os

import inngest

inngest_client = inngest.Inngest(
    app_id=os.environ.get("LAB08_APP_ID", "lab08-research"),
    is_production=False,
)
