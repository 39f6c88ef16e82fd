"""ADT on the production services: the hl7 and patient roles as processes on Kafka and PostgreSQL. A message
sent while PostgreSQL is down is acknowledged once durable on Kafka and applied when the database is back; a
patient role killed with SIGKILL while applying loses nothing and applies nothing twice."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.component.test_hl7 import HOSP, adt, mllp_send
from tests.conftest import SERVICES, fresh_database, start_services
from tests.hapi import hapi_send
from tests.helpers import free_port
from tests.integration.test_store_services import until
from tests.process import GatewayProcess


@pytest.fixture(scope="module")
def services() -> dict[str, str]:
    return start_services("kafka", "postgres")


@pytest.fixture
async def environment(services: dict[str, str]) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {**services, "GATEWAY_DATABASE__URL": await fresh_database(services["GATEWAY_DATABASE__URL"]),
            "GATEWAY_TOPICS__INSTANCES": f"instances-{suffix}", "GATEWAY_TOPICS__EVENTS": f"events-{suffix}",
            "GATEWAY_TOPICS__DEAD_LETTER": f"dead-letter-{suffix}", "GATEWAY_TOPICS__HL7": f"hl7-{suffix}",
            "GATEWAY_TOPICS__AUDIT": f"audit-{suffix}",
            "GATEWAY_HL7__ALLOWED_SENDERS": '[{"application": "HIS"}]',
            "GATEWAY_HL7__LOCAL_AUTHORITIES": f'["{HOSP}"]', "GATEWAY_HL7__PRECHECK_TIMEOUT_SECONDS": "2",
            "GATEWAY_STORE__RETRY_MAX_SECONDS": "2", "GATEWAY_KAFKA__SESSION_TIMEOUT_MS": "6000"}


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


def start(tmp_path: Path, environment: dict[str, str], roles: tuple[str, ...],
          started: list[GatewayProcess], **extra: str) -> GatewayProcess:
    process = GatewayProcess(tmp_path / f"{'-'.join(roles)}-{len(started)}", role=roles, **environment, **extra)
    started.append(process)
    process.wait_ready()
    return process


async def applied_messages(url: str) -> dict[str, int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT message_key, count(*) FROM patient_changes GROUP BY message_key")
        return {row[0].rsplit("|", 1)[-1]: row[1] for row in rows}
    finally:
        await connection.close()


async def test_a_message_sent_while_postgresql_is_down_is_acknowledged_once_durable_and_applied_later(
        tmp_path: Path, environment: dict[str, str], processes: list[GatewayProcess]) -> None:
    port = free_port()
    start(tmp_path, environment, ("hl7", "patient"), processes, GATEWAY_HL7__PORT=str(port))
    url = environment["GATEWAY_DATABASE__URL"]
    subprocess.run([sys.executable, str(SERVICES), "down", "postgres"], check=True, capture_output=True)
    try:
        messages = [adt("A08", "P1", control_id="D-1", name="Mäkelä^Jyrki", charset="8859/1"),
                    adt("A40", "P2", prior="P1", control_id="D-2", name="Mäkelä^Jyrki", charset="8859/1")]
        answers = await asyncio.to_thread(hapi_send, "127.0.0.1", port, messages, "ISO-8859-1")
        assert [answer.split("\r")[1].split("|")[1] for answer in answers] == ["AA", "AA"]
    finally:
        start_services("postgres")

    async def both_applied() -> bool:
        try:
            return set(await applied_messages(url)) >= {"D-1", "D-2"}
        except (OSError, asyncpg.PostgresError):
            return False

    await until(both_applied, 120, "the patient role to apply what was acknowledged during the outage")
    connection = await asyncpg.connect(url)
    try:
        survivor = await connection.fetchrow(
            "SELECT patient_name, specific_character_set FROM patients WHERE patient_id = 'P2'")
        merged = await connection.fetchval("SELECT m.patient_id FROM patients p JOIN patients m "
                                           "ON m.id = p.merged_into WHERE p.patient_id = 'P1'")
    finally:
        await connection.close()
    assert tuple(survivor) == ("Mäkelä^Jyrki", "ISO_IR 100") and merged == "P2"


async def test_a_patient_role_killed_while_applying_loses_nothing_and_applies_nothing_twice(
        tmp_path: Path, environment: dict[str, str], processes: list[GatewayProcess]) -> None:
    port = free_port()
    start(tmp_path, environment, ("hl7",), processes, GATEWAY_HL7__PORT=str(port))
    count = 1000
    messages = [adt("A08", f"K{n % 40}", control_id=f"K-{n}", name=f"NAME^{n}") for n in range(count)]
    answers = await mllp_send(port, *messages, tmp=tmp_path)
    assert [a.code for a in answers] == ["AA"] * count
    url = environment["GATEWAY_DATABASE__URL"]
    worker = start(tmp_path, environment, ("patient",), processes)

    async def some_applied() -> bool:
        try:
            return len(await applied_messages(url)) >= 20
        except asyncpg.UndefinedTableError:
            return False

    await until(some_applied, 60, "the first messages to be applied")
    worker.kill()
    assert len(await applied_messages(url)) < count  # killed part-way
    start(tmp_path, environment, ("patient",), processes)

    async def all_applied() -> bool:
        return len(await applied_messages(url)) == count

    await until(all_applied, 120, "every acknowledged message to be applied")
    assert set((await applied_messages(url)).values()) == {1}
    connection = await asyncpg.connect(url)
    try:
        names = {row[0]: row[1] for row in await connection.fetch(
            "SELECT patient_id, patient_name FROM patients WHERE patient_id LIKE 'K%'")}
    finally:
        await connection.close()
    last = {f"K{n % 40}": f"NAME^{n}" for n in range(count)}
    assert names == last  # applied in the order acknowledged
