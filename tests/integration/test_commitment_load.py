"""Storage commitment under load on the production adapters (real Kafka, SeaweedFS, PostgreSQL), the roles in
separate processes as pods run them: 30 s of C-STOREs over four associations with an N-ACTION every few
instances, a second store and a second notify process joining half-way (both groups rebalance), and one notify
process killed with SIGKILL after that. Every N-ACTION answered Success must get its report, with the right
references, or be visibly failed in the API; nothing may go silent.

The load is bounded (rate and time) so that it fits the CI machine beside the broker, S3 and the database.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.datasets import KINDS, generate
from tests.component.test_notify_embedded import Peer, referenced
from tests.integration.test_store_services import environment, processes, services, start
from tests.process import GatewayProcess

__all__ = ["environment", "processes", "services"]

SECONDS = 30
RATE = 12
"""Instances per second over all associations: well inside what the CI machine stores with everything on it."""
ASSOCIATIONS = 4
COMMIT_EVERY = 6


@pytest.fixture
def peer() -> Iterator[Peer]:
    modality = Peer("MODALITY1", max_associations=4)
    with modality.listening():
        yield modality


async def test_every_commitment_answered_success_is_reported_through_rebalances_and_a_killed_notify(
    tmp_path: Path, environment: dict[str, str], peer: Peer, processes: list[GatewayProcess],
) -> None:
    settings = {
        **environment,
        "GATEWAY_DICOM__REMOTE_AES": json.dumps([peer.remote()]),
        "GATEWAY_DICOM__ALLOWED_AES": json.dumps([{"ae_title": "MODALITY1"}]),
        "GATEWAY_NOTIFY__RETRY_INITIAL_SECONDS": "0.5", "GATEWAY_NOTIFY__RETRY_MAX_SECONDS": "4",
        "GATEWAY_NOTIFY__ASSOCIATION_TIMEOUT_SECONDS": "5",
        "GATEWAY_XDS__TRIGGER_ON_COMMITMENT": "false",
    }
    receiver = start(tmp_path, settings, "receiver", processes)
    start(tmp_path, settings, "store", processes)
    first_notify = start(tmp_path, settings, "notify", processes)
    api = start(tmp_path, settings, "api", processes)

    files = generate(KINDS["tiny"], 40, tmp_path / "tiny", studies=4)
    (tmp_path / "files").write_text("\n".join(map(str, files)))
    out = tmp_path / "sent.json"
    sender = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.scu", "--port", str(receiver.dicom_port), "--aec", "DICOMGW",
        "--calling-ae", "MODALITY1", "--concurrency", str(ASSOCIATIONS), "--files", str(tmp_path / "files"),
        "--duration", str(SECONDS), "--rate", str(RATE), "--unique", "--study-size", "20",
        "--commit-every", str(COMMIT_EVERY), "--record", "--out", str(out))
    await asyncio.sleep(SECONDS / 3)
    start(tmp_path, settings, "store", processes)  # both groups rebalance mid-load
    start(tmp_path, settings, "notify", processes)
    await asyncio.sleep(SECONDS / 3)
    first_notify.kill()
    assert await asyncio.wait_for(sender.wait(), SECONDS * 4) == 0
    sent: dict[str, Any] = json.loads(out.read_text())
    assert sent["errors"] == [] and set(sent["statuses"]) == {"0x0000"}, sent["statuses"]
    answered = {uid for uid, _, status, _ in sent["commitments"] if status == 0x0000}
    assert len(answered) >= SECONDS * RATE // COMMIT_EVERY // 2, "the load was lighter than this test means"

    deadline = time.monotonic() + 180  # a killed member's leased reports come back after their lease (50 s)
    while {str(report.TransactionUID) for _, report in peer.reports} < answered and time.monotonic() < deadline:
        await asyncio.sleep(1)

    reports: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for event_type, report in peer.reports:
        reports[str(report.TransactionUID)].append((event_type, report))
    silent = sorted(answered - set(reports))
    states = {uid: api.http(f"/api/commitments/{uid}") for uid in silent}
    assert silent == [], f"{len(silent)} of {len(answered)} transactions never reported: {states}"
    for uid in answered:
        requested = set(sent["commitment_references"][uid])
        for event_type, report in reports[uid]:
            assert event_type == 1, (uid, report)
            assert set(referenced(report, "ReferencedSOPSequence")) == requested
            assert "FailedSOPSequence" not in report
    repeated = {uid: len(found) for uid, found in reports.items() if len(found) > 1}
    assert len(repeated) <= 1, f"reports sent twice (only the one in flight when notify was killed may be): {repeated}"
    assert set(reports) <= answered, "a report for a transaction nobody asked about"
    status, body = api.http("/api/commitments/overdue")
    assert status == 200 and json.loads(body) == []
