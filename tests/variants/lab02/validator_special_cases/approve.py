"""Send a reviewer's decision to a waiting AnalyzeWorkflow, from outside the workflow's process.

    python -m lab02_approval_signal.approve <workflow-id>                       # approve signal
    python -m lab02_approval_signal.approve <workflow-id> --reject --reason "..."
    python -m lab02_approval_signal.approve <workflow-id> --update               # the `decide` update

The same as `lab approve`: both call labkit.approval.send_decision.
"""

import argparse
import asyncio
import getpass
import os
import sys

from labkit.approval import ApprovalError, send_decision


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow_id")
    parser.add_argument("--reject", action="store_true", help="reject instead of approve")
    parser.add_argument("--reason", "--comment", dest="note", default="", help="why (kept in the result)")
    parser.add_argument("--reviewer", default=getpass.getuser())
    parser.add_argument("--update", action="store_true",
                        help="use the `decide` update (validated, acknowledged) instead of a signal")
    args = parser.parse_args()
    try:
        result = await send_decision(
            os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"),
            args.workflow_id,
            decision="reject" if args.reject else "approve",
            reviewer=args.reviewer,
            comment_or_reason=args.note,
            via="update" if args.update else "signal",
            namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
        )
    except ApprovalError as err:
        print(err, file=sys.stderr)
        return 2
    print(result)
    return 0 if result.accepted is not False else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
