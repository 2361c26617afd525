""".devcontainer/compose.servers.yml: the optional Inngest and Hatchet servers for `lab check 08/09 --server`.

Docker is not available where the course is built, so the servers themselves are untested (the labs'
READMEs say so). What is tested: the file parses as YAML, has the two profiles the READMEs name, and
every port a service opens on the host is bound to 127.0.0.1 (a published port names the address; a
service on the host's network passes --host 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / ".devcontainer" / "compose.servers.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_compose_file_parses_with_an_inngest_and_a_hatchet_profile(compose):
    services = compose["services"]
    profiles = {name: service.get("profiles") for name, service in services.items()}
    assert all(profiles.values()), f"a service without a profile would start with every `up`: {profiles}"
    assert {p for ps in profiles.values() for p in ps} == {"inngest", "hatchet"}
    assert services["inngest"]["image"].startswith("inngest/inngest")
    assert "hatchet-lite" in services["hatchet-lite"]["image"]


def test_every_host_port_is_bound_to_127_0_0_1(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port.get('published', '')}"
            assert text.startswith("127.0.0.1:"), f"{name} publishes {port!r} on every interface"
        if service.get("network_mode") == "host":
            command = service.get("command") or []
            assert "--host" in command and command[command.index("--host") + 1] == "127.0.0.1", \
                f"{name} shares the host's network without binding to 127.0.0.1: {command}"


def test_the_readmes_use_the_ports_the_compose_file_opens(compose):
    """The labs' READMEs tell the user which --server URL to pass: the ones this file serves."""
    lab08 = (REPO / "labs" / "lab08_inngest_steps" / "README.md").read_text()
    lab09 = (REPO / "labs" / "lab09_hatchet_pipeline" / "README.md").read_text()
    assert "compose.servers.yml" in lab08 and "lab check 08 --server http://127.0.0.1:8288" in lab08
    assert "8288" in compose["services"]["inngest"]["command"]
    assert "compose.servers.yml" in lab09 and "lab check 09 --server http://127.0.0.1:8889" in lab09
    assert "127.0.0.1:8889:8888" in compose["services"]["hatchet-lite"]["ports"]
