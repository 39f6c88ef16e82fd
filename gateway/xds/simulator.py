"""``dicom-gateway xds-simulator``: an XDS.b Document Registry + Repository and XDS-I.b Imaging Document Source
stand-in for tests and hospitals' pre-production checks.

Endpoints: POST /xds/repository (ITI-41 / RAD-68 Provide and Register, ITI-43 / RAD-69 retrieve), POST /xds/registry
(ITI-42 Register, ITI-57 Update Document Set for a DocumentEntry's availabilityStatus, ITI-18 FindDocuments /
GetDocuments), GET /status, GET /messages, POST /control (fault injection);
with ``--patient-feed-port`` the ITI-8 Patient Identity Feed over MLLP, whose A40 merges patientIds as a registry
tracks a merge.
Every request is kept as received under DIR/messages/ and validated (XSD + metadata rules); an invalid message is
answered with a RegistryResponse Failure listing RegistryErrors, never an HTTP 500. The registry (DIR/registry.json)
and documents (DIR/documents/) survive a restart.

Request bodies are streamed into a temporary file (kept in memory up to SPOOL_BYTES) and MTOM documents are read
from that file in chunks, so memory does not grow with the documents' size; a body over the configured limit
(``--max-body-bytes``) is answered with HTTP 413 and a SOAP Fault without reading the rest of it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web
from lxml import etree

from gateway import logs
from gateway.hl7 import message as hl7
from gateway.hl7 import mllp
from gateway.xds import rules, soap, xsd
from gateway.xds.rules import RIM, RuleError
from gateway.xds.soap import ACTIONS, NS, Attachment, SoapError, SoapMessage

log = logging.getLogger("gateway.xds")

DEFAULT_REPOSITORY_UNIQUE_ID = "2.25.160028644777287174929918114221999412990"  # a UUID-derived OID (ITU-T X.667)
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
SPOOL_BYTES = 8 * 1024 * 1024  # a request body up to this size stays in memory, a larger one goes to a file
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
ERROR_SEVERITY = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
_R = "{%s}" % RIM
_RS = "{%s}" % NS["rs"]
_XDS = "{%s}" % NS["xds"]
_REFERENCES = ("classifiedObject", "registryObject", "sourceObject", "targetObject")
_REPLACING = ("urn:ihe:iti:2007:AssociationType:RPLC", "urn:ihe:iti:2007:AssociationType:XFRM_RPLC")
_QUERY_CODES = {
    "$XDSDocumentEntryClassCode": "classCode", "$XDSDocumentEntryTypeCode": "typeCode",
    "$XDSDocumentEntryPracticeSettingCode": "practiceSettingCode",
    "$XDSDocumentEntryHealthcareFacilityTypeCode": "healthcareFacilityTypeCode",
    "$XDSDocumentEntryEventCodeList": "eventCodeList", "$XDSDocumentEntryConfidentialityCode": "confidentialityCode",
    "$XDSDocumentEntryFormatCode": "formatCode",
}
_QUERY_TIMES = {"CreationTime": "creationTime", "ServiceStartTime": "serviceStartTime",
                "ServiceStopTime": "serviceStopTime"}
_CHUNK = 1024 * 1024
_BASE64_CHUNK = 3 * 256 * 1024  # a multiple of 3: the base64 of consecutive chunks is the base64 of their whole
_MAX_PART_HEAD = 64 * 1024  # the most of a MIME part's headers, or of a boundary line's padding, read into memory
_BINARY_ENCODINGS = ("binary", "8bit", "7bit")
_FEED_TRIGGERS = frozenset({"A01", "A04", "A05", "A08", "A28", "A31", "A40", "A47"})
_FEED_MESSAGE_BYTES = 1024 * 1024


class Rejected(Exception):
    """The request is answered with a Failure RegistryResponse carrying these errors."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__(", ".join(e.code for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Blob:
    """A byte range of a request body's file: a document is read from it in chunks, never held whole."""

    file: IO[bytes]
    offset: int
    size: int

    @classmethod
    def of(cls, data: bytes) -> Blob:
        """A document that was in memory anyway (inline base64, or a MIME part not sent as binary)."""
        return cls(io.BytesIO(data), 0, len(data))

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        self.file.seek(self.offset)
        left = self.size
        while left > 0 and (chunk := self.file.read(min(size, left))):
            left -= len(chunk)
            yield chunk


@dataclass(frozen=True)
class Document:
    """A submitted document and its digests (SHA-1 for the hash Slot, SHA-256 names the stored file)."""

    blob: Blob
    sha1: str
    sha256: str

    @classmethod
    def digest(cls, blob: Blob) -> Document:
        sha1, sha256 = hashlib.sha1(), hashlib.sha256()
        for chunk in blob.chunks():
            sha1.update(chunk)
            sha256.update(chunk)
        return cls(blob, sha1.hexdigest(), sha256.hexdigest())


@dataclass
class Faults:
    """Injected failures for the next repository submissions (tests of the sender's retry logic)."""

    remaining: int = 0
    http_status: int | None = None
    registry_error: str | None = None


@dataclass
class Registry:
    """Registry state, persisted as one JSON file replaced atomically: entries, submission sets, associations."""

    path: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    submission_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    associations: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})

    @classmethod
    def load(cls, path: Path) -> Registry:
        if not path.exists():
            return cls(path)
        state = orjson.loads(path.read_bytes())
        return cls(path, state["entries"], state["submission_sets"], state["associations"], state["counters"])

    def save(self) -> None:
        state = {"entries": self.entries, "submission_sets": self.submission_sets,
                 "associations": self.associations, "counters": self.counters}
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps(state, option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def by_unique_id(self, unique_id: str) -> dict[str, Any] | None:
        return next((e for e in self.entries.values() if e["uniqueId"] == unique_id), None)


class Simulator:
    """The registry and repository behind the HTTP handlers; one lock serialises every change of state."""

    def __init__(self, data_dir: Path, repository_unique_id: str, patient_id_domain: str | None,
                 max_body_bytes: int) -> None:
        self.data_dir = data_dir
        self.repository_unique_id = repository_unique_id
        self.patient_id_domain = patient_id_domain
        self.max_body_bytes = max_body_bytes
        self.messages = data_dir / "messages"
        self.documents = data_dir / "documents"
        for directory in (self.messages, self.documents):
            directory.mkdir(parents=True, exist_ok=True)
        self.registry = Registry.load(data_dir / "registry.json")
        self.faults = Faults()
        self.sequence = len(list(self.messages.glob("*.raw")))
        self.lock = asyncio.Lock()

    # --- HTTP -------------------------------------------------------------------------------------------------

    async def repository(self, request: web.Request) -> web.StreamResponse:
        return await self._soap(request, "repository")

    async def registry_endpoint(self, request: web.Request) -> web.StreamResponse:
        return await self._soap(request, "registry")

    async def _soap(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        # in DIR rather than the default temporary directory, which may be a tmpfs and so memory after all
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES, dir=str(self.data_dir)) as body:
            if not await self._receive(request, body):
                return await self._too_large(request, endpoint)
            async with self.lock:
                return await self._handle(endpoint, body, content_type)

    async def _receive(self, request: web.Request, body: IO[bytes]) -> bool:
        """Copy the request body into ``body`` as it arrives; False, the rest unread, once it exceeds the limit
        (at once when its Content-Length does; a chunked or compressed body is counted as it is read)."""
        if (request.content_length or 0) > self.max_body_bytes:
            return False
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self.max_body_bytes:
                return False
            body.write(chunk)  # at most one chunk into the page cache: cheaper than a thread hop
        return True

    async def _too_large(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        reason = f"request body exceeds the simulator's limit of {self.max_body_bytes} bytes"
        log.warning("xds request body over the limit", extra={
            "endpoint": endpoint, "content_length": request.content_length, "limit": self.max_body_bytes})
        response = _fault_response("Sender", reason, None, 413)
        response.force_close()  # the rest of the body is not read: the connection cannot carry another request
        async with self.lock:
            return await self._done(None, "too-large", [reason], response)

    async def _handle(self, endpoint: str, body: IO[bytes], content_type: str) -> web.StreamResponse:
        try:
            message, parts = await asyncio.to_thread(_parse, body, content_type)
            resolved = message.resolved()
        except SoapError as exc:
            stem = await self._record("unparsed", body, content_type, None, {})
            return await self._done(stem, "fault", [exc.reason], _fault_response("Sender", exc.reason, None, 400))
        transaction = _transaction(endpoint, message)
        stem = await self._record(transaction or "unknown", body, content_type, resolved, parts)
        if transaction is None:
            reason = f"action {message.action!r} is not served at /xds/{endpoint}"
            return await self._done(stem, "fault", [reason],
                                    _fault_response("Sender", reason, message.message_id, 400))
        if not message.message_id:
            reason = "WS-Addressing MessageID header missing (a request needs one for the response's RelatesTo)"
            return await self._done(stem, "fault", [reason], _fault_response("Sender", reason, None, 400))
        if endpoint == "repository" and transaction in ("ITI-41", "RAD-68") and self.faults.remaining:
            injected = self._inject(message, transaction)
            return await self._done(stem, "injected", [], injected)
        try:
            errors = [RuleError(_schema_error_code(transaction), "schema", e) for e in xsd.validate(resolved)]
            if errors:
                raise Rejected(errors)
            response = await self._dispatch(transaction, message, parts)
        except Rejected as exc:
            return await self._done(stem, "rejected", [f"{e.code}: {e.location}" for e in exc.errors],
                                    self._failure(transaction, message, exc.errors))
        except SoapError as exc:
            error = RuleError(_schema_error_code(transaction), "document", exc.reason)
            return await self._done(stem, "rejected", [error.message], self._failure(transaction, message, [error]))
        except Exception:  # a simulator bug must still give the sender a RegistryResponse, not an HTTP 500
            log.exception("xds simulator failed on a message", extra={"xds_message": stem})
            self.registry = Registry.load(self.registry.path)  # drop any half-applied change
            error = RuleError("XDSRegistryError", "simulator", "internal error of the simulator (see its log)")
            return await self._done(stem, "error", [error.message], self._failure(transaction, message, [error]))
        return await self._done(stem, "accepted", [], response)

    async def _dispatch(self, transaction: str, message: SoapMessage, parts: dict[bytes, Blob]) -> web.Response:
        payload = message.body()
        if transaction in ("ITI-41", "RAD-68"):
            await self._provide_and_register(payload, message, parts, transaction)
            return _soap_response(ACTIONS["ITI-41-response"], _registry_response(SUCCESS, []), message,
                                  mtom=bool(message.attachments))
        if transaction == "ITI-42":
            await self._register(payload, {}, transaction)
            return _soap_response(ACTIONS["ITI-42-response"], _registry_response(SUCCESS, []), message)
        if transaction == "ITI-57":
            self._update(payload)
            return _soap_response(ACTIONS["ITI-57-response"], _registry_response(SUCCESS, []), message)
        if transaction == "ITI-18":
            return _soap_response(ACTIONS["ITI-18-response"], self._query(payload), message)
        return self._retrieve(payload, message, transaction)

    def _inject(self, message: SoapMessage, transaction: str) -> web.Response:
        self.faults.remaining -= 1
        log.info("injected failure", extra={"transaction": transaction, "remaining": self.faults.remaining})
        if self.faults.http_status is not None:
            return web.Response(status=self.faults.http_status, text="injected failure\n")
        error = RuleError(self.faults.registry_error or "XDSRegistryError", "simulator", "injected failure")
        return self._failure(transaction, message, [error])

    def _failure(self, transaction: str, message: SoapMessage, errors: list[RuleError]) -> web.Response:
        response = _registry_response(FAILURE, errors)
        if transaction == "ITI-18":
            wrapper = etree.Element(f"{{{NS['query']}}}AdhocQueryResponse", status=FAILURE,
                                    nsmap={"query": NS["query"], "rim": RIM})
            wrapper.extend(list(response))
            etree.SubElement(wrapper, _R + "RegistryObjectList")
            response = wrapper
        elif transaction in ("ITI-43", "RAD-69"):
            wrapper = etree.Element(_XDS + "RetrieveDocumentSetResponse", nsmap={"xds": NS["xds"]})
            wrapper.append(response)
            response = wrapper
        return _soap_response(ACTIONS[f"{transaction}-response"], response, message)

    async def _record(self, transaction: str, body: IO[bytes], content_type: str, resolved: etree._Element | None,
                      parts: dict[bytes, Blob]) -> str:
        """Keep the request as received (.raw, with its Content-Type) and XOP-resolved (.xml)."""
        self.sequence += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        stem = f"{stamp}-{self.sequence:06d}-{transaction}"

        def write() -> None:
            with (self.messages / f"{stem}.raw").open("wb") as f:
                f.write(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace"))
                body.seek(0)
                shutil.copyfileobj(body, f, _CHUNK)
            if resolved is not None:
                _write_resolved(self.messages / f"{stem}.xml", soap.serialize(resolved), parts)

        await asyncio.to_thread(write)
        return stem

    async def _done(self, stem: str | None, outcome: str, errors: list[str],
                    response: web.Response) -> web.Response:
        """Count and index the message, and persist the registry with whatever it changed."""
        self.registry.counters["accepted" if outcome == "accepted" else "rejected"] += 1
        await asyncio.to_thread(self.registry.save)
        entry = {"message": stem, "received": datetime.now(UTC).isoformat(timespec="milliseconds"),
                 "outcome": outcome, "http_status": response.status, "errors": errors}

        def append() -> None:
            with (self.messages / "index.jsonl").open("ab") as f:
                f.write(orjson.dumps(entry) + b"\n")

        await asyncio.to_thread(append)
        log.info("xds message", extra={"xds_message": stem, "outcome": outcome, "http_status": response.status,
                                        "error_count": len(errors)})
        return response

    async def status(self, _request: web.Request) -> web.Response:
        entries = self.registry.entries.values()
        body = {**self.registry.counters, "documents": len(self.registry.entries),
                "approved": sum(e["status"] == rules.STATUS_APPROVED for e in entries),
                "deprecated": sum(e["status"] == rules.STATUS_DEPRECATED for e in entries),
                "submission_sets": len(self.registry.submission_sets),
                "repository_unique_id": self.repository_unique_id}
        return web.json_response(body, dumps=lambda v: orjson.dumps(v).decode())

    async def messages_list(self, _request: web.Request) -> web.Response:
        index = self.messages / "index.jsonl"
        lines = index.read_bytes().splitlines() if index.exists() else []
        return web.json_response([orjson.loads(line) for line in lines], dumps=lambda v: orjson.dumps(v).decode())

    async def control(self, request: web.Request) -> web.Response:
        try:
            command = orjson.loads(await request.read())
            count = int(command["fail_next"])
            http_status = command.get("http_status")
            registry_error = command.get("registry_error")
            if count < 0 or (http_status is not None and not 400 <= int(http_status) <= 599) or (
                    http_status is None) == (registry_error is None):
                raise ValueError
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return web.json_response({"error": 'expected {"fail_next": N, "http_status": 4xx|5xx} or '
                                               '{"fail_next": N, "registry_error": "XDS..."}'}, status=400)
        self.faults = Faults(count, None if http_status is None else int(http_status), registry_error)
        return web.json_response({"fail_next": count})

    # --- ITI-8 Patient Identity Feed (HL7 v2 over MLLP) --------------------------------------------------------

    async def patient_feed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """ITI-8: A01/A04/A05/A08/A31 are acknowledged; A40 merges MRG-1 into PID-3 (and A47 changes MRG-1 to
        PID-3) in every DocumentEntry and SubmissionSet of the registry (ITI TF-2 3.8.4.2.3: the registry tracks
        the merge), so that a later replacement with the surviving patientId matches the entry it replaces."""
        frames = mllp.FrameReader(reader, _FEED_MESSAGE_BYTES)
        try:
            while (frame := await frames.next()) is not None:
                writer.write(mllp.frame(await self._feed(frame.message)))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _feed(self, raw: bytes) -> bytes:
        control_id = uuid.uuid4().hex[:20]
        try:
            message = hl7.parse(raw, "8859/1")
        except hl7.Hl7Error as exc:
            return hl7.acknowledgment(hl7.header_of(raw), exc.acknowledgment, exc, control_id=control_id)
        kind, trigger = message.type
        if kind != "ADT" or trigger not in _FEED_TRIGGERS:
            error = hl7.Hl7Error(201, "MSH^1^9^1^2", "not a Patient Identity Feed message", hl7.REJECT)
            return hl7.acknowledgment(message, hl7.REJECT, error, control_id=control_id)
        if trigger in ("A40", "A47"):
            surviving, subsumed = _cx(message.segment("PID"), 3), _cx(message.segment("MRG"), 1)
            if not surviving or not subsumed:
                error = hl7.Hl7Error(101, "MRG^1^1^1^1", f"{trigger} needs PID-3 and MRG-1 with an assigning authority")
                return hl7.acknowledgment(message, hl7.ERROR, error, control_id=control_id)
            async with self.lock:
                merged = 0
                for obj in (*self.registry.entries.values(), *self.registry.submission_sets.values()):
                    if obj.get("patientId") == subsumed:
                        obj["patientId"] = surviving
                        merged += 1
                self.registry.counters["merges"] = self.registry.counters.get("merges", 0) + 1
                self.registry.save()
            log.info("patient identities merged", extra={"objects": merged})
        return hl7.acknowledgment(message, hl7.ACCEPT, control_id=control_id)

    # --- ITI-41 / RAD-68 / ITI-42 -------------------------------------------------------------------------------

    async def _provide_and_register(self, pnr: etree._Element, message: SoapMessage, parts: dict[bytes, Blob],
                                    transaction: str) -> None:
        errors = rules.check_submission(pnr, transaction=transaction, patient_id_domain=self.patient_id_domain)
        if errors:
            raise Rejected(errors)
        sor = _child(pnr, f"{{{rules.LCM}}}SubmitObjectsRequest", rules.METADATA_ERROR)
        documents = await asyncio.to_thread(_documents, pnr, message, parts)
        for de in sor.iter(_R + "ExtrinsicObject"):
            document = documents[de.get("id", "")]
            where = f"DocumentEntry {de.get('id', '')}"
            digest, size = document.sha1, str(document.blob.size)
            problems = [RuleError("XDSRepositoryMetadataError", where, f"Slot {name} {given} does not match the "
                                                                       f"document ({actual})")
                        for name, actual in (("hash", digest), ("size", size))
                        for given in [rules.slot_values(de, name)] if given and given[0].lower() != actual]
            if problems:
                raise Rejected(problems)
            _set_slot(de, "hash", digest)
            _set_slot(de, "size", size)
            _set_slot(de, "repositoryUniqueId", self.repository_unique_id)
        await self._register(sor, documents, transaction)

    async def _register(self, sor: etree._Element, documents: dict[str, Document], transaction: str) -> None:
        """ITI-42 on the registry side: checks against what is registered, then stores it all or nothing."""
        if transaction == "ITI-42":
            errors = rules.check_submission(sor, transaction="ITI-42", patient_id_domain=self.patient_id_domain)
            if errors:
                raise Rejected(errors)
        object_list = rules.registry_object_list(sor)
        if object_list is None:
            raise Rejected([RuleError(rules.METADATA_ERROR, "SubmitObjectsRequest", "no RegistryObjectList")])
        sub = rules.Submission.read(object_list)
        skipped = self._duplicates(sub)
        self._check_references(sub)
        ids = {o.get("id", ""): (o.get("id", "") if o.get("id", "").startswith("urn:uuid:")
                                 else f"urn:uuid:{uuid.uuid4()}") for o in object_list}
        ids.update(skipped)
        objects = [copy.deepcopy(o) for o in object_list]
        for obj in objects:
            for node in obj.iter(etree.Element):
                for attribute in ("id", *_REFERENCES):
                    if node.get(attribute) in ids:
                        node.set(attribute, ids[node.get(attribute, "")])
        new_documents: dict[str, Blob] = {}
        de_scheme = rules.scheme("document_entry", "uniqueId")
        for original, obj in zip(object_list, objects, strict=True):
            entry_uuid = obj.get("id", "")
            if obj.tag == _R + "ExtrinsicObject":
                if original.get("id") in skipped:
                    continue
                obj.set("status", rules.STATUS_APPROVED)
                document = documents.get(original.get("id", ""))
                if document is not None:
                    new_documents[entry_uuid] = document.blob
                self.registry.entries[entry_uuid] = {
                    "uniqueId": rules.external_identifier(obj, de_scheme),
                    "patientId": rules.external_identifier(obj, rules.scheme("document_entry", "patientId")),
                    "status": rules.STATUS_APPROVED, "mimeType": obj.get("mimeType"),
                    "hash": (rules.slot_values(obj, "hash") or [""])[0],
                    "size": int((rules.slot_values(obj, "size") or ["0"])[0]),
                    "repositoryUniqueId": (rules.slot_values(obj, "repositoryUniqueId") or [""])[0],
                    "document": None if document is None else f"{document.sha256}.bin",
                    "submitted": datetime.now(UTC).isoformat(timespec="seconds"),
                    "xml": etree.tostring(obj).decode(),
                }
            elif original in sub.submission_sets:
                obj.set("status", rules.STATUS_APPROVED)
                self.registry.submission_sets[entry_uuid] = {
                    "uniqueId": rules.external_identifier(obj, rules.scheme("submission_set", "uniqueId")),
                    "xml": etree.tostring(obj).decode()}
            elif obj.tag == _R + "Association":
                if obj.get("targetObject") in skipped.values():
                    continue
                self.registry.associations[entry_uuid] = {
                    "type": obj.get("associationType"), "source": obj.get("sourceObject"),
                    "target": obj.get("targetObject"), "xml": etree.tostring(obj).decode()}
                if obj.get("associationType") in _REPLACING:
                    self.registry.entries[obj.get("targetObject", "")]["status"] = rules.STATUS_DEPRECATED
        await asyncio.to_thread(self._write_documents, new_documents)

    def _write_documents(self, documents: dict[str, Blob]) -> None:
        for entry_uuid, blob in documents.items():
            path = self.documents / self.registry.entries[entry_uuid]["document"]
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                with tmp.open("wb") as f:
                    for chunk in blob.chunks():
                        f.write(chunk)
                os.replace(tmp, path)

    def _duplicates(self, sub: rules.Submission) -> dict[str, str]:
        """DocumentEntries already registered with the same uniqueId and hash (a retried submission): their ids
        mapped to the registered entryUUID. A same uniqueId with another hash is XDSDuplicateUniqueIdInRegistry."""
        skipped: dict[str, str] = {}
        errors = []
        for de in sub.document_entries:
            unique_id = rules.external_identifier(de, rules.scheme("document_entry", "uniqueId")) or ""
            existing = self.registry.by_unique_id(unique_id)
            if existing is None:
                continue
            entry_uuid = next(k for k, v in self.registry.entries.items() if v is existing)
            if (rules.slot_values(de, "hash") or [""])[0].lower() == existing["hash"]:
                skipped[de.get("id", "")] = entry_uuid
            else:
                errors.append(RuleError("XDSDuplicateUniqueIdInRegistry", f"DocumentEntry {de.get('id', '')}",
                                        f"uniqueId {unique_id} is registered with different content"))
        ss_scheme = rules.scheme("submission_set", "uniqueId")
        for ss in sub.submission_sets:
            ss_unique_id = rules.external_identifier(ss, ss_scheme)
            registered = any(s["uniqueId"] == ss_unique_id for s in self.registry.submission_sets.values())
            if registered and len(skipped) != len(sub.document_entries):
                errors.append(RuleError("XDSDuplicateUniqueIdInRegistry", f"SubmissionSet {ss.get('id', '')}",
                                        f"SubmissionSet uniqueId {ss_unique_id} is already registered"))
            elif registered:
                sub.submission_sets.clear()  # the whole submission is a retry: keep the registered one
        if errors:
            raise Rejected(errors)
        return skipped

    def _check_references(self, sub: rules.Submission) -> None:
        """ITI TF-3 §4.2.2: references outside the submission resolve in the registry; RPLC targets are Approved
        entries of the same patient."""
        errors = []
        de_patient = rules.scheme("document_entry", "patientId")
        for kind, source, target in sub.relationships():
            where = f"Association {kind.rpartition(':')[2]} {source} -> {target}"
            entry = self.registry.entries.get(target)
            if entry is None:
                errors.append(RuleError("XDSRegistryMetadataError", where,
                                        f"targetObject {target} is not a DocumentEntry in the registry"))
                continue
            if kind in _REPLACING and entry["status"] != rules.STATUS_APPROVED:
                errors.append(RuleError("XDSRegistryMetadataError", where,
                                        f"targetObject {target} is not Approved (it is {entry['status']})"))
            source_obj = sub.by_id.get(source)
            if source_obj is not None and rules.external_identifier(source_obj, de_patient) != entry["patientId"]:
                errors.append(RuleError("XDSPatientIdDoesNotMatch", where,
                                        "the new DocumentEntry's patientId differs from the replaced entry's"))
        relationships = {kind for kind, _, _ in sub.relationships()}
        known = sub.by_id.keys() | self.registry.entries.keys() | self.registry.submission_sets.keys()
        for a in sub.associations:
            if a.get("associationType") in relationships:
                continue
            for ref in (a.get("sourceObject", ""), a.get("targetObject", "")):
                if ref not in known:
                    errors.append(RuleError("XDSRegistryMetadataError", f"Association {a.get('id', '')}",
                                            f"{ref} is neither in the submission nor in the registry"))
        if errors:
            raise Rejected(errors)

    # --- ITI-57 ------------------------------------------------------------------------------------------------

    def _update(self, sor: etree._Element) -> None:
        """ITI-57 Update Document Set, of which the simulator serves the availabilityStatus change of DocumentEntries
        (ITI TF-2b 3.57.4.1.3.3.2): all or nothing, after the checks against what is registered.

        Error codes: XDSMetadataUpdateError (ITI TF-3 Table 4.2.4.1-2: the general metadata update error) when a
        target is not a registered DocumentEntry, or its OriginalStatus is not its current status; it is chosen
        over XDSRegistryMetadataError, which says the metadata itself is malformed (kept for schema and submission
        rule errors), because the request is well-formed and fails only on the registry's state.
        XDSPatientIdDoesNotMatch when the SubmissionSet's patientId is not the entry's; XDSMetadataUpdateOperationError
        for any other ITI-57 operation (new DocumentEntry/Folder versions, other associations); no versions are kept,
        so XDSMetadataVersionError does not arise.
        """
        if sor.tag != f"{{{rules.LCM}}}SubmitObjectsRequest":
            raise Rejected([RuleError(rules.METADATA_ERROR, etree.QName(sor).localname,
                                      "ITI-57 carries an lcm:SubmitObjectsRequest")])
        errors = rules.check_update(sor, patient_id_domain=self.patient_id_domain)
        if errors:
            raise Rejected(errors)
        object_list = _child(sor, _R + "RegistryObjectList", rules.METADATA_ERROR)
        sub = rules.Submission.read(object_list)
        (ss,) = sub.submission_sets
        set_id = ss.get("id", "")
        updates = [a for a in sub.associations if a.get("associationType") == rules.UPDATE_AVAILABILITY_STATUS]
        unsupported = [o for o in object_list if o is not ss and o not in updates
                       and not (o.tag == _R + "Classification" and o.get("classifiedObject") == set_id)]
        if unsupported or not updates:
            where = (f"{etree.QName(unsupported[0]).localname} {unsupported[0].get('id', '')}" if unsupported
                     else "SubmitObjectsRequest")
            raise Rejected([RuleError("XDSMetadataUpdateOperationError", where, "this registry simulator serves "
                                      "ITI-57 UpdateAvailabilityStatus of DocumentEntries only")])
        patient_id = rules.external_identifier(ss, rules.scheme("submission_set", "patientId"))
        problems = []
        for a in updates:
            target = a.get("targetObject", "")
            where = f"Association {a.get('id', '')} -> {target}"
            entry = self.registry.entries.get(target)
            if entry is None:
                problems.append(RuleError(rules.UPDATE_ERROR, where, f"{target} is not a DocumentEntry in the registry"))
                continue
            if rules.slot_values(a, "OriginalStatus") != [entry["status"]]:
                problems.append(RuleError(rules.UPDATE_ERROR, where,
                                          f"OriginalStatus is not the entry's current status {entry['status']}"))
            if patient_id != entry["patientId"]:
                problems.append(RuleError("XDSPatientIdDoesNotMatch", where,
                                          "the SubmissionSet's patientId differs from the DocumentEntry's"))
        if problems:
            raise Rejected(problems)
        ss_unique_id = rules.external_identifier(ss, rules.scheme("submission_set", "uniqueId"))
        if any(s["uniqueId"] == ss_unique_id for s in self.registry.submission_sets.values()):
            raise Rejected([RuleError("XDSDuplicateUniqueIdInRegistry", f"SubmissionSet {set_id}",
                                      f"SubmissionSet uniqueId {ss_unique_id} is already registered")])
        ids = {o.get("id", ""): o.get("id", "") if rules.is_uuid_ref(o.get("id", "")) else f"urn:uuid:{uuid.uuid4()}"
               for o in (ss, *updates)}
        for original in (ss, *updates):
            obj = copy.deepcopy(original)
            for node in obj.iter(etree.Element):
                for attribute in ("id", *_REFERENCES):
                    if node.get(attribute) in ids:
                        node.set(attribute, ids[node.get(attribute, "")])
            if original is ss:
                obj.set("status", rules.STATUS_APPROVED)
                self.registry.submission_sets[obj.get("id", "")] = {"uniqueId": ss_unique_id,
                                                                    "xml": etree.tostring(obj).decode()}
                continue
            target = obj.get("targetObject", "")
            self.registry.associations[obj.get("id", "")] = {
                "type": obj.get("associationType"), "source": obj.get("sourceObject"), "target": target,
                "xml": etree.tostring(obj).decode()}
            self.registry.entries[target]["status"] = (rules.slot_values(obj, "NewStatus") or [""])[0]
        self.registry.counters["status_updates"] = self.registry.counters.get("status_updates", 0) + len(updates)

    # --- ITI-18 ------------------------------------------------------------------------------------------------

    def _query(self, request: etree._Element) -> etree._Element:
        errors = rules.check_query(request)
        if errors:
            raise Rejected(errors)
        query = _child(request, _R + "AdhocQuery", "XDSRegistryError")
        ids = rules.rules()["stored_queries"]["ids"]
        parameters = rules.query_parameters(query)
        if query.get("id") == ids["FindDocuments"]:
            found = [k for k, e in self.registry.entries.items() if _matches(e, parameters)]
        elif query.get("id") == ids["GetDocuments"]:
            wanted = {v for values in parameters.get("$XDSDocumentEntryEntryUUID", []) for v in values}
            unique_ids = {v for values in parameters.get("$XDSDocumentEntryUniqueId", []) for v in values}
            found = [k for k, e in self.registry.entries.items() if k in wanted or e["uniqueId"] in unique_ids]
        else:
            raise Rejected([RuleError("XDSUnknownStoredQuery", query.get("id", ""),
                                      "this simulator answers FindDocuments and GetDocuments only")])
        response = etree.Element(f"{{{NS['query']}}}AdhocQueryResponse", status=SUCCESS,
                                 nsmap={"query": NS["query"], "rim": RIM})
        object_list = etree.SubElement(response, _R + "RegistryObjectList")
        option = _child(request, f"{{{NS['query']}}}ResponseOption", "XDSRegistryError")
        leaf_class = option.get("returnType") == "LeafClass"
        for entry_uuid in sorted(found, key=lambda k: self.registry.entries[k]["submitted"]):
            if leaf_class:
                entry = self.registry.entries[entry_uuid]
                de = soap.parse_xml(entry["xml"].encode())
                de.set("status", entry["status"])  # as RPLC or ITI-57 left it, not as it was registered
                object_list.append(de)
            else:
                etree.SubElement(object_list, _R + "ObjectRef", id=entry_uuid)
        return response

    # --- ITI-43 / RAD-69 ---------------------------------------------------------------------------------------

    def _retrieve(self, request: etree._Element, message: SoapMessage, transaction: str) -> web.Response:
        errors: list[RuleError] = []
        responses: list[tuple[str, dict[str, Any]]] = []
        for document_request in request.iter(_XDS + "DocumentRequest"):
            repository = (document_request.findtext(_XDS + "RepositoryUniqueId") or "").strip()
            unique_id = (document_request.findtext(_XDS + "DocumentUniqueId") or "").strip()
            entry = self.registry.by_unique_id(unique_id)
            if repository != self.repository_unique_id:
                errors.append(RuleError("XDSUnknownRepositoryId", repository, "not this repository"))
            elif entry is None or entry["document"] is None:
                errors.append(RuleError("XDSDocumentUniqueIdError", unique_id, "no such document here"))
            else:
                responses.append((unique_id, entry))
        status = SUCCESS if not errors else PARTIAL_SUCCESS if responses else FAILURE
        wrapper = etree.Element(_XDS + "RetrieveDocumentSetResponse", nsmap={"xds": NS["xds"]})
        wrapper.append(_registry_response(status, errors))
        attachments = []
        for n, (unique_id, entry) in enumerate(responses, 1):
            document_response = etree.SubElement(wrapper, _XDS + "DocumentResponse")
            etree.SubElement(document_response, _XDS + "RepositoryUniqueId").text = self.repository_unique_id
            etree.SubElement(document_response, _XDS + "DocumentUniqueId").text = unique_id
            etree.SubElement(document_response, _XDS + "mimeType").text = entry["mimeType"]
            content_id = f"{n}.{uuid.uuid4()}@xds-simulator"
            soap.include(etree.SubElement(document_response, _XDS + "Document"), content_id)
            data = (self.documents / entry["document"]).read_bytes()
            attachments.append(Attachment(content_id, entry["mimeType"], data))
        return _soap_response(ACTIONS[f"{transaction}-response"], wrapper, message, mtom=True,
                              attachments=attachments)


def _matches(entry: dict[str, Any], parameters: dict[str, list[list[str]]]) -> bool:
    """FindDocuments (ITI TF-2 §3.18.4.1.2.3.7.1): every parameter given must match (Values AND-ed, items OR-ed)."""
    de = soap.parse_xml(entry["xml"].encode())
    if [entry["patientId"]] != parameters["$XDSDocumentEntryPatientId"][0]:
        return False
    if not any(entry["status"] in values for values in parameters["$XDSDocumentEntryStatus"]):
        return False
    for name, attribute in _QUERY_CODES.items():
        if name in parameters:
            codes = {f"{c.get('nodeRepresentation')}^^{(rules.slot_values(c, 'codingScheme') or [''])[0]}"
                     for c in rules.classifications(de, rules.scheme("document_entry", attribute))}
            if not all(codes & set(values) for values in parameters[name]):
                return False
    for suffix, slot in _QUERY_TIMES.items():
        value = _padded((rules.slot_values(de, slot) or [""])[0])
        start = parameters.get(f"$XDSDocumentEntry{suffix}From")
        stop = parameters.get(f"$XDSDocumentEntry{suffix}To")
        if (start or stop) and not value:
            return False
        if start and not value >= _padded(start[0][0]):
            return False
        if stop and not value < _padded(stop[0][0]):
            return False
    if "$XDSDocumentEntryAuthorPerson" in parameters:
        authors = [v for c in rules.classifications(de, rules.scheme("document_entry", "author"))
                   for v in rules.slot_values(c, "authorPerson") or []]
        patterns = [re.compile(re.escape(p).replace("%", ".*").replace("_", "."), re.S)
                    for values in parameters["$XDSDocumentEntryAuthorPerson"] for p in values]
        if not any(p.fullmatch(a) for p in patterns for a in authors):
            return False
    if "$XDSDocumentEntryType" in parameters:
        if not any(de.get("objectType") in values for values in parameters["$XDSDocumentEntryType"]):
            return False
    return True


def _padded(dtm: str) -> str:
    return dtm.ljust(14, "0") if dtm else ""


def _set_slot(obj: etree._Element, name: str, value: str) -> None:
    """Set a Slot's single value, keeping Slots first as ebRIM's sequence requires."""
    for slot in obj.iterfind(_R + "Slot"):
        if slot.get("name") == name:
            obj.remove(slot)
    slots = list(obj.iterfind(_R + "Slot"))
    slot = etree.Element(_R + "Slot", name=name)
    etree.SubElement(etree.SubElement(slot, _R + "ValueList"), _R + "Value").text = value
    obj.insert(obj.index(slots[-1]) + 1 if slots else 0, slot)


def _child(parent: etree._Element, tag: str, code: str) -> etree._Element:
    """A required child: a Failure RegistryResponse, not an AttributeError, when the rules let its absence through."""
    child = parent.find(tag)
    if child is None:
        raise Rejected([RuleError(code, etree.QName(parent).localname, f"no {etree.QName(tag).localname}")])
    return child


def _transaction(endpoint: str, message: SoapMessage) -> str | None:
    action = message.action
    if endpoint == "repository":
        if action == ACTIONS["ITI-41"]:
            return "RAD-68" if _is_imaging(message) else "ITI-41"
        return {ACTIONS["ITI-43"]: "ITI-43", ACTIONS["RAD-69"]: "RAD-69"}.get(action)
    return {ACTIONS["ITI-42"]: "ITI-42", ACTIONS["ITI-57"]: "ITI-57", ACTIONS["ITI-18"]: "ITI-18"}.get(action)


def _is_imaging(message: SoapMessage) -> bool:
    """RAD-68 shares ITI-41's action; its DocumentEntries are KOS manifests (application/dicom)."""
    entries = list(message.body().iter(_R + "ExtrinsicObject"))
    return bool(entries) and all(e.get("mimeType") == "application/dicom" for e in entries)


def _schema_error_code(transaction: str) -> str:
    if transaction in ("ITI-41", "RAD-68"):
        return "XDSRepositoryMetadataError"
    if transaction in ("ITI-42", "ITI-57"):
        return "XDSRegistryMetadataError"
    return "XDSRegistryError" if transaction == "ITI-18" else "XDSRepositoryError"


def _registry_response(status: str, errors: Iterable[RuleError]) -> etree._Element:
    response = etree.Element(_RS + "RegistryResponse", status=status, nsmap={"rs": NS["rs"]})
    errors = list(errors)
    if errors:
        error_list = etree.SubElement(response, _RS + "RegistryErrorList")
        for error in errors:
            etree.SubElement(error_list, _RS + "RegistryError", errorCode=error.code, codeContext=error.message,
                             severity=ERROR_SEVERITY, location=error.location)
    return response


def _soap_response(action: str, payload: etree._Element, request: SoapMessage, *, mtom: bool = False,
                   attachments: list[Attachment] | None = None) -> web.Response:
    env, _ = soap.envelope(action, payload, relates_to=request.message_id)
    body, content_type = soap.mtom(env, attachments or []) if mtom else soap.plain(env)
    return web.Response(body=body, headers={"Content-Type": content_type})


def _fault_response(code: str, reason: str, relates_to: str | None, status: int) -> web.Response:
    body, content_type = soap.plain(soap.fault(code, reason, relates_to=relates_to or None))
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


# --- request bodies in files ------------------------------------------------------------------------------------


def _parse(body: IO[bytes], content_type: str) -> tuple[SoapMessage, dict[bytes, Blob]]:
    """soap.parse for a body in a file, leaving binary MIME parts (the documents) in the file.

    soap.parse checks a skeleton of the MTOM package in which each binary part other than the root is a unique
    stand-in; returned are the message (its attachments hold the stand-ins) and each stand-in's part in ``body``.
    The root part (the envelope), base64 and quoted-printable parts and a plain SOAP message are read into memory.
    """
    kind, params = soap.media_type(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/related" or not boundary:
        # a plain message is XML parsed in memory anyway; soap.parse refuses other Content-Types by the type alone
        return soap.parse(_read(body, 0, -1) if kind == "application/soap+xml" else b"", content_type), {}
    start = params.get("start", "").strip().strip("<>")
    delimiter = b"--" + boundary.encode("latin-1")
    skeleton: list[bytes] = []
    parts: dict[bytes, Blob] = {}
    for index, (head, blob) in enumerate(_parts(body, delimiter)):
        headers = soap.part_headers(head, strict=False)  # soap.parse checks them on the skeleton
        content_id = headers.get("content-id", "").strip().strip("<>").strip()
        root = content_id == start if start else index == 0
        if root or headers.get("content-transfer-encoding", "binary").lower() not in _BINARY_ENCODINGS:
            content = b"".join(blob.chunks())
        else:
            content = uuid.uuid4().hex.encode()
            parts[content] = blob
        skeleton.append(delimiter + b"\r\n" + (head + b"\r\n\r\n" if head else b"\r\n") + content + b"\r\n")
    return soap.parse(b"".join(skeleton) + delimiter + b"--\r\n", content_type), parts


def _parts(body: IO[bytes], delimiter: bytes) -> Iterator[tuple[bytes, Blob]]:
    """The headers and data of each part of a multipart body (RFC 2046 §5.1.1), found as soap.parse finds them
    in bytes (LF line ends and transport padding tolerated)."""
    if _read(body, 0, len(delimiter)) == delimiter:
        pos = 0
    else:
        pos = _find(body, b"\n" + delimiter, 0)
        if pos < 0:
            raise SoapError("multipart body does not contain its boundary")
        pos += 1
    count = 0
    while True:
        pos += len(delimiter)
        if _read(body, pos, 2) == b"--":
            break
        line_end = _find(body, b"\n", pos)
        if line_end < 0 or line_end - pos > _MAX_PART_HEAD or _read(body, pos, line_end - pos).strip():
            raise SoapError("malformed MIME boundary line")
        start = line_end + 1
        end = _find(body, b"\n" + delimiter, start)
        if end < 0:
            raise SoapError("multipart body is not closed by its final boundary")
        yield _part(body, start, end - 1 if end > start and _read(body, end - 1, 1) == b"\r" else end)
        count += 1
        pos = end + 1
    if not count:
        raise SoapError("multipart body has no parts")


def _part(body: IO[bytes], start: int, end: int) -> tuple[bytes, Blob]:
    """A MIME part's header block and its data's place in ``body``."""
    area = _read(body, start, min(end - start, _MAX_PART_HEAD))
    if area.startswith((b"\r\n", b"\n")):
        head, data_start = b"", start + area.index(b"\n") + 1
    else:
        blank = soap.BLANK_LINE.search(area)
        if blank is None:
            raise SoapError("MIME part without a blank line after its headers")
        head, data_start = area[:blank.start()], start + blank.end()
    return head, Blob(body, data_start, end - data_start)


def _read(file: IO[bytes], offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


def _find(file: IO[bytes], pattern: bytes, start: int) -> int:
    """The offset of the first ``pattern`` at or after ``start`` in ``file``, or -1; reads it a chunk at a time."""
    file.seek(start)
    window, base = b"", start
    while chunk := file.read(_CHUNK):
        window += chunk
        found = window.find(pattern)
        if found >= 0:
            return base + found
        keep = min(len(pattern) - 1, len(window))  # a match may straddle this chunk and the next
        base += len(window) - keep
        window = window[len(window) - keep:]
    return -1


def _documents(pnr: etree._Element, message: SoapMessage, parts: dict[bytes, Blob]) -> dict[str, Document]:
    """The submission's documents by xds:Document id: an MTOM part stays in the body's file, found by its
    stand-in; an inline (base64) document was in memory already."""
    documents = {}
    for element in pnr.iterfind(_XDS + "Document"):
        data = message.document(element)
        documents[element.get("id", "")] = Document.digest(parts.get(data) or Blob.of(data))
    return documents


def _write_resolved(path: Path, xml: bytes, parts: dict[bytes, Blob]) -> None:
    """Write the XOP-resolved message, streaming each part's base64 where ``xml`` has its stand-in's."""
    encoded = {base64.b64encode(stand_in): blob for stand_in, blob in parts.items()}
    matches = re.finditer(b"|".join(map(re.escape, encoded)), xml) if encoded else iter(())
    pos = 0
    with path.open("wb") as f:
        for match in matches:
            f.write(xml[pos:match.start()])
            for chunk in encoded[match[0]].chunks(_BASE64_CHUNK):
                f.write(base64.b64encode(chunk))
            pos = match.end()
        f.write(xml[pos:])


def _cx(segment: hl7.Segment | None, number: int) -> str:
    """The first identifier of a CX field with a universal-ID assigning authority, as XDS writes patientId."""
    if segment is None:
        return ""
    for raw in segment.repetitions(number):
        patient_id, authority = segment.delimiters.leaf(raw, 1), segment.delimiters.leaf(raw, 4, 2)
        if patient_id and authority:
            return f"{patient_id}^^^&{authority}&ISO"
    return ""


def create_app(data_dir: Path, *, repository_unique_id: str = DEFAULT_REPOSITORY_UNIQUE_ID,
               patient_id_domain: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               patient_feed: tuple[str, int] | None = None) -> web.Application:
    """The simulator's application; a request body over ``max_body_bytes`` is answered with 413. With
    ``patient_feed`` (host, port) the ITI-8 Patient Identity Feed listens there (MLLP) while the app runs."""
    simulator = Simulator(data_dir, repository_unique_id, patient_id_domain, max_body_bytes)
    # the SOAP endpoints stream their bodies and apply the limit themselves; this one is request.read()'s (/control)
    app = web.Application(client_max_size=max_body_bytes)
    app.add_routes([
        web.post("/xds/repository", simulator.repository),
        web.post("/xds/registry", simulator.registry_endpoint),
        web.get("/status", simulator.status),
        web.get("/messages", simulator.messages_list),
        web.post("/control", simulator.control),
    ])
    if patient_feed is not None:

        async def feed(_: web.Application) -> AsyncIterator[None]:
            server = await asyncio.start_server(simulator.patient_feed, *patient_feed)
            yield
            server.close()
            await server.wait_closed()

        app.cleanup_ctx.append(feed)
    return app


async def serve(host: str, port: int, data_dir: Path, repository_unique_id: str,
                patient_id_domain: str | None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                patient_feed_port: int | None = None) -> None:
    """Run until SIGTERM or SIGINT; the ready line goes to stdout once the socket is listening."""
    runner = web.AppRunner(create_app(data_dir, repository_unique_id=repository_unique_id,
                                      patient_id_domain=patient_id_domain, max_body_bytes=max_body_bytes,
                                      patient_feed=None if patient_feed_port is None else (host, patient_feed_port)),
                           access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"xds-simulator listening on http://{bound_host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    logs.configure("INFO")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.data, args.repository_unique_id, args.patient_id_domain,
                          args.max_body_bytes, args.patient_feed_port))
    return 0


def _byte_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


def add_parser(subparsers: Any) -> None:
    """Register ``xds-simulator`` on the main command's subparsers."""
    parser = subparsers.add_parser("xds-simulator", help="run an XDS.b registry/repository (XDS-I.b) simulator")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="directory for the registry, documents and received messages")
    parser.add_argument("--repository-unique-id", default=DEFAULT_REPOSITORY_UNIQUE_ID, metavar="OID",
                        help="this repository's repositoryUniqueId")
    parser.add_argument("--patient-id-domain", metavar="OID",
                        help="affinity domain assigning authority: other patientIds get XDSUnknownPatientId")
    parser.add_argument("--max-body-bytes", type=_byte_count, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                        help=f"largest request body accepted; a larger one gets HTTP 413 "
                             f"(default {DEFAULT_MAX_BODY_BYTES}, 64 MiB)")
    parser.add_argument("--patient-feed-port", type=int, metavar="PORT",
                        help="also take the ITI-8 Patient Identity Feed (HL7 v2 ADT over MLLP) on this port: an A40 "
                             "merges patientIds in the registry")
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.xds.simulator", description=__doc__)
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["xds-simulator", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
