"""The operators' JSON API (role ``api``), on the HTTP port beside the health and metrics endpoints.

    GET /api/studies?patient_id=&accession=   studies with current instances, newest first
    GET /api/studies/{study_uid}              its series and instances (quarantined and prior versions too)
    GET /api/dlq                              open dead-letter entries with their reasons
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from types import TracebackType
from typing import Any

from aiohttp import web

from gateway.bus import Bus
from gateway.index import Index, InstanceRow
from gateway.settings import TopicSettings
from gateway import dead_letter

_LIST_LIMIT = 200


class Api:
    name = "api"

    def __init__(self, open_index: Callable[[], Awaitable[Index]], bus: Bus, topics: TopicSettings) -> None:
        self._open_index = open_index
        self._bus = bus
        self._topics = topics
        self._index: Index | None = None
        self._stopped = asyncio.Event()
        self.routes = [
            web.get("/api/studies", self._studies),
            web.get("/api/studies/{study_uid}", self._study),
            web.get("/api/dlq", self._dead_letters),
        ]

    async def __aenter__(self) -> Api:
        self._index = await self._open_index()
        await self._index.migrate()
        return self

    async def wait(self) -> None:
        await self._stopped.wait()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._index is not None:
            await self._index.close()

    def _ready_index(self) -> Index:
        if self._index is None:
            raise web.HTTPServiceUnavailable(text="the index is not open yet")
        return self._index

    async def _studies(self, request: web.Request) -> web.Response:
        studies = await self._ready_index().find_studies(
            patient_id=request.query.get("patient_id", ""), accession_number=request.query.get("accession", ""),
            limit=_LIST_LIMIT,
        )
        return web.json_response([asdict(study) for study in studies])

    async def _study(self, request: web.Request) -> web.Response:
        rows = await self._ready_index().study_instances(
            request.match_info["study_uid"], include_quarantined=True, include_replaced=True
        )
        if not rows:
            raise web.HTTPNotFound(text="no such study")
        current = [row for row in rows if row.status.value != "replaced"] or rows
        series: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = series.setdefault(row.series_instance_uid, {
                "series_instance_uid": row.series_instance_uid, "modality": row.modality, "instances": [],
            })
            entry["instances"].append(_instance(row))
        return web.json_response({
            "study_instance_uid": rows[0].study_instance_uid,
            "patient_id": current[0].patient_id,
            "issuer_of_patient_id": current[0].issuer_of_patient_id,
            "accession_number": current[0].accession_number,
            "study_date": current[0].study_date,
            "study_description": current[0].study_description,
            "series": list(series.values()),
        })

    async def _dead_letters(self, _: web.Request) -> web.Response:
        entries = await dead_letter.entries(self._bus, self._topics)
        return web.json_response([entry.summary() for entry in entries])


def _instance(row: InstanceRow) -> dict[str, Any]:
    return {
        "sop_instance_uid": row.sop_instance_uid, "sop_class_uid": row.sop_class_uid,
        "transfer_syntax_uid": row.transfer_syntax_uid, "instance_number": row.instance_number, "size": row.size,
        "sha256": row.sha256, "received_sha256": row.received_sha256, "storage_key": row.storage_key,
        "status": row.status.value, "version": row.version, "findings": list(row.findings),
        "source_ae": row.source_ae, "received_at": row.received_at.isoformat(),
        "stored_at": row.stored_at.isoformat(),
    }
