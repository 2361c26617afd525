"""Talk to a chat session through restate-server, as any client would.

    python -m lab07_restate_chat.client register [--uri http://127.0.0.1:9080]
    python -m lab07_restate_chat.client ask SESSION "my parcel never arrived"
    python -m lab07_restate_chat.client history SESSION
    python -m lab07_restate_chat.client journal SESSION     (the last ask's journal, from the admin SQL API)

The client never talks to the service: it calls Restate's ingress (/ChatSession/<session>/ask),
and Restate calls the service.
"""

import argparse
import json

import httpx

from .models import SERVICE, admin_url, ingress_url


def register(uri: str) -> dict:
    response = httpx.post(f"{admin_url()}/deployments", json={"uri": uri, "force": True}, timeout=30)
    response.raise_for_status()
    return response.json()


def ask(session: str, question: str) -> str:
    response = httpx.post(f"{ingress_url()}/{SERVICE}/{session}/ask", json=question, timeout=300)
    response.raise_for_status()
    return response.json()


def history(session: str) -> list[dict]:
    response = httpx.post(f"{ingress_url()}/{SERVICE}/{session}/history", timeout=60)
    response.raise_for_status()
    return response.json()


def sql(query: str) -> list[dict]:
    response = httpx.post(f"{admin_url()}/query", json={"query": query}, timeout=30,
                          headers={"accept": "application/json"})
    response.raise_for_status()
    return response.json()["rows"]


def last_journal(session: str) -> list[dict]:
    asks = [row for row in sql("SELECT id, target, status, created_at FROM sys_invocation ORDER BY created_at")
            if row["target"] == f"{SERVICE}/{session}/ask"]
    if not asks:
        return []
    entries = sql("SELECT id, index, entry_type, name FROM sys_journal ORDER BY index")
    return [entry for entry in entries if entry["id"] == asks[-1]["id"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("register").add_argument("--uri", default="http://127.0.0.1:9080")
    asking = commands.add_parser("ask")
    asking.add_argument("session")
    asking.add_argument("question")
    commands.add_parser("history").add_argument("session")
    commands.add_parser("journal").add_argument("session")
    args = parser.parse_args()
    if args.command == "register":
        found = register(args.uri)
        print("registered:", ", ".join(service["name"] for service in found["services"]))
    elif args.command == "ask":
        print(ask(args.session, args.question))
    elif args.command == "history":
        print(json.dumps(history(args.session), indent=2))
    else:
        for entry in last_journal(args.session):
            print(f"{entry['index']:>3}  {entry['entry_type']:<28} {entry['name']}")


if __name__ == "__main__":
    main()
