"""Fixtures shared by every test layer: the real services, started through scripts/services.

A test that needs a service fails loudly when the service cannot start; nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services"


def start_services(*names: str) -> dict[str, str]:
    """Bring services up (idempotent) and return the GATEWAY_* variables that point at them."""
    result = subprocess.run(
        [sys.executable, str(SERVICES), "up", *names], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/services up {' '.join(names)} failed:\n{result.stderr[-4000:]}", pytrace=False)
    env = subprocess.run(
        [sys.executable, str(SERVICES), "env", *names], capture_output=True, text=True, check=True
    ).stdout
    variables = {}
    for line in env.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        variables[key] = value
    return variables


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return start_services("kafka")["GATEWAY_KAFKA__BOOTSTRAP_SERVERS"]


def dcmtk(tool: str) -> str:
    """dcmtk's own binary: pynetdicom installs same-named scripts that would shadow it on PATH."""
    path = Path("/usr/bin") / tool
    if not path.exists():
        pytest.fail(f"dcmtk's {tool} is not installed (apt-get install dcmtk)", pytrace=False)
    return str(path)


@pytest.fixture(scope="session")
def test_env() -> dict[str, str]:
    """The environment for gateway subprocesses: no GATEWAY_* leaking in from the developer's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {
        "PATH": os.environ.get("PATH", ""),
    }



async def fresh_database(url: str) -> str:
    """A new, empty database on the tests' PostgreSQL, for a test whose workflow state (commitments, queued
    deliveries) must not meet another test's: the notify role of one test would otherwise claim and send the
    other's pending reports."""
    import uuid

    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"{url.rsplit('/', 1)[0]}/{name}"
