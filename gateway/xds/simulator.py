"""``dicom-gateway xds-simulator``: an XDS.b Document Registry + Repository and XDS-I.b Imaging Document Source
stand-in for tests and hospitals' pre-production checks.

Endpoints: POST /xds/repository (ITI-41 / RAD-68 Provide and Register, ITI-43 / RAD-69 retrieve), POST /xds/registry
(ITI-42 Register, ITI-18 FindDocuments / GetDocuments), GET /status, GET /messages, POST /control (fault injection).
Every request is kept as received under DIR/messages/ and validated (XSD + metadata rules); an invalid message is
answered with a RegistryResponse Failure listing RegistryErrors, never an HTTP 500. The registry (DIR/registry.json)
and documents (DIR/documents/) survive a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from lxml import etree

from gateway import logs
from gateway.xds import rules, soap, xsd
from gateway.xds.rules import RIM, RuleError
from gateway.xds.soap import ACTIONS, NS, Attachment, SoapError, SoapMessage

log = logging.getLogger("gateway.xds")

DEFAULT_REPOSITORY_UNIQUE_ID = "2.25.160028644777287174929918114221999412990"  # a UUID-derived OID (ITU-T X.667)
MAX_REQUEST_BYTES = 512 * 1024 * 1024
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


class Rejected(Exception):
    """The request is answered with a Failure RegistryResponse carrying these errors."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__(", ".join(e.code for e in errors))
        self.errors = errors


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

    def __init__(self, data_dir: Path, repository_unique_id: str, patient_id_domain: str | None) -> None:
        self.data_dir = data_dir
        self.repository_unique_id = repository_unique_id
        self.patient_id_domain = patient_id_domain
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
        body = await request.read()
        content_type = request.headers.get("Content-Type", "")
        async with self.lock:
            return await self._handle(endpoint, body, content_type)

    async def _handle(self, endpoint: str, body: bytes, content_type: str) -> web.StreamResponse:
        try:
            message = soap.parse(body, content_type)
            resolved = message.resolved()
        except SoapError as exc:
            stem = await self._record("unparsed", body, content_type, None)
            return await self._done(stem, "fault", [exc.reason], _fault_response("Sender", exc.reason, None, 400))
        transaction = _transaction(endpoint, message)
        stem = await self._record(transaction or "unknown", body, content_type, resolved)
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
            response = await self._dispatch(transaction, message)
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

    async def _dispatch(self, transaction: str, message: SoapMessage) -> web.Response:
        payload = message.body()
        if transaction in ("ITI-41", "RAD-68"):
            await self._provide_and_register(payload, message, transaction)
            return _soap_response(ACTIONS["ITI-41-response"], _registry_response(SUCCESS, []), message,
                                  mtom=bool(message.attachments))
        if transaction == "ITI-42":
            await self._register(payload, {}, transaction)
            return _soap_response(ACTIONS["ITI-42-response"], _registry_response(SUCCESS, []), message)
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

    async def _record(self, transaction: str, body: bytes, content_type: str,
                      resolved: etree._Element | None) -> str:
        """Keep the request as received (.raw, with its Content-Type) and XOP-resolved (.xml)."""
        self.sequence += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        stem = f"{stamp}-{self.sequence:06d}-{transaction}"
        raw = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace") + body

        def write() -> None:
            (self.messages / f"{stem}.raw").write_bytes(raw)
            if resolved is not None:
                (self.messages / f"{stem}.xml").write_bytes(soap.serialize(resolved))

        await asyncio.to_thread(write)
        return stem

    async def _done(self, stem: str, outcome: str, errors: list[str], response: web.Response) -> web.Response:
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

    # --- ITI-41 / RAD-68 / ITI-42 -------------------------------------------------------------------------------

    async def _provide_and_register(self, pnr: etree._Element, message: SoapMessage, transaction: str) -> None:
        errors = rules.check_submission(pnr, transaction=transaction, patient_id_domain=self.patient_id_domain)
        if errors:
            raise Rejected(errors)
        sor = _child(pnr, f"{{{rules.LCM}}}SubmitObjectsRequest", rules.METADATA_ERROR)
        documents = {d.get("id", ""): message.document(d) for d in pnr.iterfind(_XDS + "Document")}
        for de in sor.iter(_R + "ExtrinsicObject"):
            data = documents[de.get("id", "")]
            where = f"DocumentEntry {de.get('id', '')}"
            digest, size = hashlib.sha1(data).hexdigest(), str(len(data))
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

    async def _register(self, sor: etree._Element, documents: dict[str, bytes], transaction: str) -> None:
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
        new_documents: dict[str, bytes] = {}
        de_scheme = rules.scheme("document_entry", "uniqueId")
        for original, obj in zip(object_list, objects, strict=True):
            entry_uuid = obj.get("id", "")
            if obj.tag == _R + "ExtrinsicObject":
                if original.get("id") in skipped:
                    continue
                obj.set("status", rules.STATUS_APPROVED)
                data = documents.get(original.get("id", ""))
                if data is not None:
                    new_documents[entry_uuid] = data
                self.registry.entries[entry_uuid] = {
                    "uniqueId": rules.external_identifier(obj, de_scheme),
                    "patientId": rules.external_identifier(obj, rules.scheme("document_entry", "patientId")),
                    "status": rules.STATUS_APPROVED, "mimeType": obj.get("mimeType"),
                    "hash": (rules.slot_values(obj, "hash") or [""])[0],
                    "size": int((rules.slot_values(obj, "size") or ["0"])[0]),
                    "repositoryUniqueId": (rules.slot_values(obj, "repositoryUniqueId") or [""])[0],
                    "document": None if data is None else f"{hashlib.sha256(data).hexdigest()}.bin",
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

    def _write_documents(self, documents: dict[str, bytes]) -> None:
        for entry_uuid, data in documents.items():
            path = self.documents / self.registry.entries[entry_uuid]["document"]
            if not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
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
                object_list.append(soap.parse_xml(self.registry.entries[entry_uuid]["xml"].encode()))
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
    return {ACTIONS["ITI-42"]: "ITI-42", ACTIONS["ITI-18"]: "ITI-18"}.get(action)


def _is_imaging(message: SoapMessage) -> bool:
    """RAD-68 shares ITI-41's action; its DocumentEntries are KOS manifests (application/dicom)."""
    entries = list(message.body().iter(_R + "ExtrinsicObject"))
    return bool(entries) and all(e.get("mimeType") == "application/dicom" for e in entries)


def _schema_error_code(transaction: str) -> str:
    if transaction in ("ITI-41", "RAD-68"):
        return "XDSRepositoryMetadataError"
    if transaction == "ITI-42":
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


def create_app(data_dir: Path, *, repository_unique_id: str = DEFAULT_REPOSITORY_UNIQUE_ID,
               patient_id_domain: str | None = None) -> web.Application:
    simulator = Simulator(data_dir, repository_unique_id, patient_id_domain)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.add_routes([
        web.post("/xds/repository", simulator.repository),
        web.post("/xds/registry", simulator.registry_endpoint),
        web.get("/status", simulator.status),
        web.get("/messages", simulator.messages_list),
        web.post("/control", simulator.control),
    ])
    return app


async def serve(host: str, port: int, data_dir: Path, repository_unique_id: str,
                patient_id_domain: str | None) -> None:
    """Run until SIGTERM or SIGINT; the ready line goes to stdout once the socket is listening."""
    runner = web.AppRunner(create_app(data_dir, repository_unique_id=repository_unique_id,
                                      patient_id_domain=patient_id_domain), access_log=None)
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
        asyncio.run(serve(args.host, args.port, args.data, args.repository_unique_id, args.patient_id_domain))
    return 0


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
    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.xds.simulator", description=__doc__)
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["xds-simulator", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
