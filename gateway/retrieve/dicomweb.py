"""DICOMweb on the API role (PS3.18): QIDO-RS, WADO-RS and STOW-RS under ``/dicomweb``.

    GET  /dicomweb/studies | /series | /instances                  QIDO-RS (also under a study and a series)
    GET  /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]
                                                                    WADO-RS: multipart/related; type="application/dicom"
    GET  …/metadata                                                 WADO-RS metadata: application/dicom+json
    POST /dicomweb/studies[/{study}]                                STOW-RS: multipart/related; type="application/dicom"

QIDO-RS answers from the index like C-FIND (``gateway.core.query``): ``limit`` (default ``query.default_limit``,
at most ``query.max_results``), ``offset``, ``includefield``; no match is 204; when more matches than the page
holds, a ``Warning: 299`` header says so. WADO-RS streams the stored objects: with ``transfer-syntax=*`` (or the
stored one) byte for byte as stored, otherwise converted losslessly where it can be (406 where it cannot).
STOW-RS streams each part into the bus through the same publisher as C-STORE, so 200 means every instance is
durable; 202 when some failed and 409 when none was taken, each failure with its FailureReason (dcm4chee's codes:
0xC409 another study than the URL's, 0xC000 cannot be parsed, 0xA700 out of resources; for IOCM, 0xA771 a rejected
instance its title refuses, 0xA770/0xA773/0xA774 a rejection note the index contradicts). Reading needs the reader
role, storing the operator role (``gateway.auth``).
"""

from __future__ import annotations

import logging
import re
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, MultipartReader, web
from pydicom.dataset import Dataset

from gateway.auth import PRINCIPAL, Role, requires
from gateway.bus import Producer
from gateway.core import audit
from gateway.core.audit import (
    STOW_CALLING_AE,
    Action,
    AuditRecord,
    AuditTrail,
    Code,
    Event,
    Interface,
    NoAudit,
    Outcome,
    Participant,
)
from gateway.core.audit import Query as AuditQuery
from gateway.core.errors import DicomStatusError, describe
from gateway.core.query import KEYS, LEVELS, Condition, InvalidQuery, Level, Match, Model, Query, parse_qido
from gateway.dicom.acse import EXPLICIT_LITTLE, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from gateway.dicom.dataset import PIXEL_DATA, part10_header, read_prefix
from gateway.dicom.patient import apply_patient
from gateway.dicom.transcode import CannotTranscode, NotPart10, can_transcode, open_part10, transcode, with_patient
from gateway.index import Index, IndexFailure, Stored
from gateway.ingest.iocm import RejectionCheck
from gateway.ingest.publish import InstancePublisher, Origin
from gateway.metrics import Metrics
from gateway.objects import ObjectNotFound, ObjectStore, ObjectStoreError
from gateway.retrieve import stored_instances
from gateway.retrieve.answer import identifier
from gateway.retrieve.disclosure import Transfer, by_patient, instance_classes
from gateway.settings import Settings

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_METADATA_HEADER_LIMIT = 8 * 1024 * 1024
_BULK_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DEFAULT_KEYS = {
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
                  "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "ModalitiesInStudy",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("StudyInstanceUID", "Modality", "SeriesInstanceUID", "SeriesNumber",
                   "NumberOfSeriesRelatedInstances"),
    Level.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
                  "AvailableTransferSyntaxUID"),
}
_UID = r"[0-9.]{1,64}"


class DicomWeb:
    def __init__(self, index: Callable[[], Index], objects: Callable[[], ObjectStore],
                 producer: Callable[[], Producer], settings: Settings, metrics: Metrics,
                 shortage: Callable[[], str | None] = lambda: None, audit_trail: AuditTrail | None = None) -> None:
        """``index``, ``objects`` and ``producer`` give what the API role opened (503 until it has);
        ``shortage`` says why the data directory is short of space (STOW-RS then answers 503, as C-STORE 0xA700)."""
        self._audit: AuditTrail = audit_trail if audit_trail is not None else NoAudit()
        self._index = index
        self._rejections = RejectionCheck(self._index_now, settings.iocm.policy(), settings.iocm.refresh_seconds) \
            if settings.iocm.check_on_receive else None
        self._shortage = shortage
        self._objects = objects
        self._producer = producer
        self._settings = settings
        self._query = settings.query
        self._metrics = metrics
        base = "/dicomweb"
        study, series, instance = f"{{study:{_UID}}}", f"{{series:{_UID}}}", f"{{instance:{_UID}}}"
        self.routes = [
            web.get(f"{base}/studies", self._qido),
            web.get(f"{base}/series", self._qido),
            web.get(f"{base}/instances", self._qido),
            web.get(f"{base}/studies/{study}/series", self._qido),
            web.get(f"{base}/studies/{study}/instances", self._qido),
            web.get(f"{base}/studies/{study}/series/{series}/instances", self._qido),
            web.get(f"{base}/studies/{study}", self._wado),
            web.get(f"{base}/studies/{study}/series/{series}", self._wado),
            web.get(f"{base}/studies/{study}/series/{series}/instances/{instance}", self._wado),
            web.get(f"{base}/studies/{study}/metadata", self._metadata),
            web.get(f"{base}/studies/{study}/series/{series}/metadata", self._metadata),
            web.get(f"{base}/studies/{study}/series/{series}/instances/{instance}/metadata", self._metadata),
            web.post(f"{base}/studies", self._stow),
            web.post(f"{base}/studies/{study}", self._stow),
        ]

    def _base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}/dicomweb"

    async def _index_now(self) -> Index:
        return self._index()

    @requires(Role.READER)
    async def _qido(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        level = Level.STUDY if path.endswith("/studies") else Level.SERIES if path.endswith("/series") \
            else Level.IMAGE
        fixed = _fixed(request)
        try:
            query, include = parse_qido(level, [(k, v) for k, v in request.query.items()],
                                        self._query.case_insensitive_names, fixed)
            limit = min(int(request.query.get("limit", self._query.default_limit)), self._query.max_results)
            offset = int(request.query.get("offset", 0))
            if limit < 1 or offset < 0:
                raise ValueError("limit and offset must be positive")
        except (InvalidQuery, ValueError) as exc:
            self._metrics.queries.labels("qido", "invalid").inc()
            raise web.HTTPBadRequest(text=str(exc)) from None
        keys = tuple(dict.fromkeys((*_DEFAULT_KEYS[level], *(keyword for keyword in include if keyword not in KEYS
                                                              or _above(KEYS[keyword].level, level)))))
        try:
            page = await self._index().search(query, keys, limit=limit + 1, offset=offset)
        except IndexFailure as exc:
            self._metrics.queries.labels("qido", "failed").inc()
            log.error("QIDO-RS failed: the index is unavailable", extra={"error": describe(exc)})
            raise web.HTTPServiceUnavailable(text="the index is unavailable") from None
        await self._record(AuditRecord(
            Event.QUERY, Outcome.SUCCESS, self._participants(request, audit.Role.SOURCE), Interface.QIDO_RS,
            Action.EXECUTE, patient=None if (named := query.patient()) is None else audit.Patient(*named),
            query=AuditQuery(request.query_string.encode(), uri=request.path)))
        self._metrics.queries.labels("qido", "answered").inc()
        warnings_ = []
        if query.unsupported:
            warnings_.append(f'299 {request.host} "The following attributes are not supported for matching and '
                             f'were not matched: {", ".join(query.unsupported)}"')
        if request.query.get("fuzzymatching", "").lower() == "true":
            warnings_.append(f'299 {request.host} "Fuzzy matching is not supported: only literal matching"')
        if len(page) > limit:
            page = page[:limit]
            warnings_.append(f'299 {request.host} "There are more results than this page: ask again with '
                             f'offset={offset + limit}"')
        headers = {"Warning": ", ".join(warnings_)} if warnings_ else {}
        if not page:
            return web.Response(status=204, headers=headers)
        base = self._base_url(request)
        answers = []
        for _, values, _ in page:
            found = identifier(query, values, keys, self._settings.dicom.ae_title).to_json_dict()
            del found["00080005"], found["00080052"]
            found["00081190"] = {"vr": "UR", "Value": [_retrieve_url(base, level, values)]}
            answers.append(found)
        return web.Response(body=orjson.dumps(answers), content_type=DICOM_JSON, headers=headers)

    async def _matches(self, request: web.Request) -> list[Stored]:
        """The stored instances a WADO-RS path names; 404 when none."""
        keyword = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
        query = Query(Model.STUDY_ROOT, Level.IMAGE, tuple(Condition(keyword[name], Match.SINGLE, (value,))
                                                          for name, value in request.match_info.items()))
        try:
            found = await stored_instances(self._index(), query)
        except IndexFailure as exc:
            log.error("WADO-RS failed: the index is unavailable", extra={"error": describe(exc)})
            raise web.HTTPServiceUnavailable(text="the index is unavailable") from None
        if not found:
            raise web.HTTPNotFound(text="no such study, series or instance")
        return found

    @requires(Role.READER)
    async def _wado(self, request: web.Request) -> web.StreamResponse:
        wanted = _accepted_syntax(request.headers.get("Accept", ""))
        instances = await self._matches(request)
        if wanted not in ("*", ""):
            refused = [s for s in instances if s.transfer_syntax_uid != wanted
                       and not can_transcode(s.transfer_syntax_uid, wanted)]
            if refused:
                raise web.HTTPNotAcceptable(text=f"{len(refused)} instance(s) cannot be sent in {wanted}")
        transfer = await self._transfer(request, instances)
        sent = 0
        try:
            response = await self._send(request, instances, wanted)
            sent = len(instances)
        finally:
            await transfer.end(sent, len(instances) - sent, "" if sent else "the response was cut short")
        return response

    async def _send(self, request: web.Request, instances: list[Stored], wanted: str) -> web.StreamResponse:
        boundary = uuid.uuid4().hex
        response = web.StreamResponse(headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        await response.prepare(request)
        objects = self._objects()
        for stored in instances:
            target = stored.transfer_syntax_uid
            if wanted == "" and can_transcode(target, EXPLICIT_LITTLE):
                target = EXPLICIT_LITTLE  # PS3.18 8.7.3.5.2: Explicit VR Little Endian unless asked otherwise
            elif wanted not in ("*", ""):
                target = wanted
            await response.write(f"\r\n--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={target}"
                                 f"\r\n\r\n".encode())
            try:
                async for chunk in _part10(objects, stored, target):
                    await response.write(chunk)
            except (ObjectStoreError, NotPart10, CannotTranscode) as exc:
                log.error("WADO-RS stopped: an object could not be read", extra={
                    "sop_instance_uid": stored.sop_instance_uid, "error": describe(exc)})
                self._metrics.retrieved.labels("wado", "failed").inc()
                raise ConnectionResetError("the response was cut short") from exc
            self._metrics.retrieved.labels("wado", "completed").inc()
            self._metrics.retrieved_bytes.labels("wado").inc(stored.size)
        await response.write(f"\r\n--{boundary}--\r\n".encode())
        await response.write_eof()
        return response

    @requires(Role.READER)
    async def _metadata(self, request: web.Request) -> web.Response:
        instances = await self._matches(request)
        transfer = await self._transfer(request, instances)
        objects = self._objects()
        answers = []
        for stored in instances:
            try:
                dataset = await _header(objects, stored)
                if stored.patient is not None:
                    apply_patient(dataset, stored.patient)
            except (ObjectStoreError, NotPart10, ValueError) as exc:
                log.error("WADO-RS metadata: an object could not be read", extra={
                    "sop_instance_uid": stored.sop_instance_uid, "error": describe(exc)})
                raise web.HTTPInternalServerError(text="a stored object could not be read") from None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                answers.append(dataset.to_json_dict(bulk_data_threshold=0, bulk_data_element_handler=lambda _: ""))
        for answer in answers:
            for tag in [tag for tag, element in answer.items() if element.get("vr") in _BULK_VRS
                        or "BulkDataURI" in element]:
                del answer[tag]
        await transfer.end(len(instances), 0)
        return web.Response(body=orjson.dumps(answers), content_type=DICOM_JSON)

    def _participants(self, request: web.Request, role: Code) -> tuple[Participant, ...]:
        """The user who asked (as the token names them) and the gateway."""
        principal = request.get(PRINCIPAL)
        return (audit.peer(principal.subject if principal else "-", request.remote or "", role),
                audit.this_gateway(self._settings.dicom.ae_title,
                                   audit.Role.DESTINATION if role == audit.Role.SOURCE else audit.Role.SOURCE))

    async def _record(self, record: AuditRecord) -> None:
        """Before the answer: 503 when the audit trail cannot take the record."""
        try:
            await self._audit.record(record)
        except Exception as exc:
            log.error("DICOMweb request refused: it could not be audited", extra={"error": describe(exc)})
            raise web.HTTPServiceUnavailable(text="the audit trail is unavailable") from None

    async def _transfer(self, request: web.Request, instances: list[Stored]) -> Transfer:
        """A WADO-RS retrieve's records, its Begin Transferring durable before the first byte goes."""
        principal = request.get(PRINCIPAL)
        try:
            groups = await by_patient(self._index(), instance_classes(instances))
            transfer = Transfer(self._audit, Interface.WADO_RS, self._participants(request, audit.Role.DESTINATION),
                                principal.subject if principal else "-", groups)
            await transfer.begin()
        except IndexFailure as exc:
            log.error("WADO-RS failed: the index is unavailable", extra={"error": describe(exc)})
            raise web.HTTPServiceUnavailable(text="the index is unavailable") from None
        except Exception as exc:
            log.error("WADO-RS refused: it could not be audited", extra={"error": describe(exc)})
            raise web.HTTPServiceUnavailable(text="the audit trail is unavailable") from None
        return transfer

    @requires(Role.OPERATOR)
    async def _stow(self, request: web.Request) -> web.Response:
        study = request.match_info.get("study", "")
        short = self._shortage()
        if short is not None:  # refused before a byte reaches the bus, like C-STORE; logged once by the watcher
            raise web.HTTPServiceUnavailable(text=short, headers={"Retry-After": "60"})
        content_type = request.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/related") or \
                not re.search(r'type="?application/dicom"?(;|$|\s)', content_type, re.IGNORECASE):
            raise web.HTTPUnsupportedMediaType(text='expected multipart/related; type="application/dicom"')
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise web.HTTPBadRequest(text=f"not a multipart body: {exc}") from None
        origin = Origin(calling_ae=STOW_CALLING_AE, called_ae=self._settings.dicom.ae_title,
                        peer=request.remote or "", organization="", organization_oid="",
                        may_expire=True,  # an authenticated operator, as the role says
                        user=request[PRINCIPAL].subject)
        stored: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        try:
            while (part := await reader.next()) is not None:
                if isinstance(part, MultipartReader):
                    raise web.HTTPBadRequest(text="nested multipart bodies are not supported")
                outcome = await self._store_part(part, origin, study)
                if outcome[2] is None:
                    stored.append((outcome[0], outcome[1]))
                else:
                    failed.append((outcome[0], outcome[1], outcome[2]))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"malformed multipart body: {exc}") from None
        if not stored and not failed:
            raise web.HTTPBadRequest(text="no instance in the request")
        base = self._base_url(request)
        body: dict[str, Any] = {}
        if study:
            body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {"00081150": _ui(sop_class), "00081155": _ui(sop_instance), "00081197": {"vr": "US", "Value": [reason]}}
                for sop_class, sop_instance, reason in failed]}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": [
                {"00081150": _ui(sop_class), "00081155": _ui(sop_instance)} for sop_class, sop_instance in stored]}
        status = 200 if not failed else 202 if stored else 409
        log.info("STOW-RS", extra={"stored": len(stored), "failed": len(failed), "status": status})
        return web.Response(status=status, body=orjson.dumps(body), content_type=DICOM_JSON)

    async def _store_part(self, part: BodyPartReader, origin: Origin,
                          study: str) -> tuple[str, str, int | None]:
        """One part into the bus: (SOP Class, SOP Instance, None once durable, or the FailureReason)."""
        kind = part.headers.get("Content-Type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            await part.release()
            return "", "", 0xC000
        try:
            meta, data_set = await open_part10(_chunks(part))
        except NotPart10:
            await part.release()
            return "", "", 0xC000
        publisher = InstancePublisher(self._producer(), self._settings.topics.instances, origin,
                                      meta.transfer_syntax_uid, meta.sop_class_uid, meta.sop_instance_uid,
                                      f"stow-{uuid.uuid4().hex[:12]}", self._settings.dicom.max_instance_bytes,
                                      study)
        try:
            check = None if self._rejections is None else self._rejections.begin(
                meta.sop_instance_uid, meta.sop_class_uid, meta.transfer_syntax_uid, origin.may_expire)
            async for chunk in data_set:
                await publisher.write(memoryview(chunk))
                if check is not None:
                    check.write(memoryview(chunk))
            if check is not None:
                await check.finish()
            published = await publisher.finish(self._settings.dicom.publish_timeout_seconds)
        except DicomStatusError as exc:
            await publisher.abort(exc.comment)
            await part.release()
            log.warning("STOW-RS instance refused", extra={"status": f"0x{exc.status:04x}", "reason": exc.comment,
                                                           "sop_instance_uid": meta.sop_instance_uid})
            return meta.sop_class_uid, meta.sop_instance_uid, exc.status
        self._metrics.instances_received.inc()
        self._metrics.bytes_received.inc(published.size)
        return meta.sop_class_uid, meta.sop_instance_uid, None


def _above(key_level: Level, level: Level) -> bool:
    """Whether a key of ``key_level`` describes a result of ``level`` (its own level or one above)."""
    order = LEVELS[Model.PATIENT_ROOT]
    return order.index(key_level) <= order.index(level)


def _fixed(request: web.Request) -> dict[str, str]:
    names = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}
    return {names[name]: value for name, value in request.match_info.items() if name in names}


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _retrieve_url(base: str, level: Level, values: dict[str, Any]) -> str:
    url = f"{base}/studies/{values['StudyInstanceUID']}"
    if level is not Level.STUDY:
        url += f"/series/{values['SeriesInstanceUID']}"
    if level is Level.IMAGE:
        url += f"/instances/{values['SOPInstanceUID']}"
    return url


def _accepted_syntax(accept: str) -> str:
    """The transfer syntax an Accept header asks of application/dicom parts: ``*``, a UID, or '' (none said)."""
    for media_range in accept.split(","):
        media_range = media_range.strip()
        if "application/dicom" not in media_range and not media_range.startswith("*/*") \
                and not media_range.startswith("multipart/related") and media_range:
            continue
        found = re.search(r'transfer-syntax\s*=\s*"?([0-9.*]+)"?', media_range)
        if found:
            return found.group(1)
    return ""


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(1024 * 1024):
        yield chunk


async def _part10(objects: ObjectStore, stored: Stored, target: str) -> AsyncIterator[bytes]:
    """The stored object as a Part 10 file in ``target``: as stored when that is its syntax."""
    try:
        chunks = await objects.read(stored.storage_key)
    except ObjectNotFound as exc:
        raise ObjectNotFound(f"missing from the object store: {exc}") from exc
    try:
        if target == stored.transfer_syntax_uid and stored.patient is None:
            async for chunk in chunks:
                yield chunk
            return
        meta, data_set = await open_part10(chunks)
        yield part10_header(meta.sop_class_uid, meta.sop_instance_uid, target, IMPLEMENTATION_CLASS_UID,
                            IMPLEMENTATION_VERSION)
        if stored.patient is not None:
            data_set = with_patient(data_set, meta.transfer_syntax_uid, stored.patient)
        source = data_set if meta.transfer_syntax_uid == target else \
            transcode(data_set, meta.transfer_syntax_uid, target)
        async for chunk in source:
            yield chunk
    finally:
        await chunks.aclose()


async def _header(objects: ObjectStore, stored: Stored) -> Dataset:
    """An object's attributes up to its pixel data, read no further than that."""
    chunks = await objects.read(stored.storage_key)
    try:
        meta, data_set = await open_part10(chunks)
        prefix = bytearray()
        complete = False
        while True:
            chunk = await anext(data_set, None)
            if chunk is None:
                complete = True
            else:
                prefix += chunk
            parsed = read_prefix(bytes(prefix), meta.transfer_syntax_uid, PIXEL_DATA, complete)
            if parsed is not None:
                return parsed[0]
            if len(prefix) > _METADATA_HEADER_LIMIT:
                raise ValueError("the header before the pixel data exceeds 8 MiB")
    finally:
        await chunks.aclose()
