"""Print what a worker would register with a Hatchet server for this workflow, as JSON.

`Workflow.to_proto()` is the CreateWorkflowVersionRequest the SDK sends when a worker starts:
the tasks, their parents and retries, and the concurrency expressions. Without a server this is
the only place a concurrency limit exists (mock_run has no scheduler to enforce it), so this is
what the check reads.
"""

from __future__ import annotations

import json

from google.protobuf.json_format import MessageToDict

from .client import OFFLINE
from .workflow import pipeline


def registration() -> dict:
    described = MessageToDict(pipeline.to_proto(), preserving_proto_field_name=True)
    described.pop("input_json_schema", None)
    described["offline"] = OFFLINE
    return described


if __name__ == "__main__":
    print(json.dumps(registration(), indent=2))
