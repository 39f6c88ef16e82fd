"""The XDS client of the gateway: RAD-68 Provide and Register Imaging Document Set (the ITI-41 message),
ITI-57 Update Document Set (deprecating a manifest), ITI-18 Registry Stored Query (FindDocuments, GetDocuments),
ITI-43 Retrieve Document Set and RAD-69 Retrieve Imaging Document Set, over SOAP 1.2 on aiohttp with mutual TLS.

Every outgoing message is validated against the XDS schemas before it leaves (an invalid one is our bug, so it
is a permanent failure). Failures are split in two so the caller knows whether a retry can help:

* ``XdsTransient``: no or no usable answer (connection error, timeout, HTTP 408/429/5xx without a SOAP answer),
  a SOAP ``Receiver`` fault, or a RegistryResponse whose errors are all in ``TRANSIENT_ERROR_CODES``: the
  busy / out-of-resources / not-available codes of ITI TF-3 Table 4.2.4.1-2, plus XDSRegistryError and
  XDSRepositoryError, which that table describes as internal errors of the receiving actor (a database outage
  is the common cause), XDSUnavailableCommunity, and XDSUnknownPatientId and XDSPatientIdDoesNotMatch: the
  registry learns patients and merges from its own identity feed, which may not have reached it yet (a new
  patient, an ADT merge passed on at the same time); retried, and dead-lettered after the last attempt.
* ``XdsPermanent``: anything the same message would get again: metadata errors, duplicate
  uniqueId, SOAP ``Sender``/``MustUnderstand``/``VersionMismatch`` faults, other HTTP 4xx, a response we cannot
  read, or an outgoing message that fails schema validation.

Error details (codeContext) may quote patient identifiers: they are kept on the exception, never logged.
"""

from __future__ import annotations

import base64
import copy
import enum
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
from lxml import etree
from pydicom.uid import ExplicitVRLittleEndian

from gateway.settings import XdsSettings
from gateway.xds import soap, xsd
from gateway.xds.metadata import Code, StatusUpdate, Submission, xds_time
from gateway.xds.soap import NS

log = logging.getLogger("gateway.xds")

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DICOM_MIME_TYPE = "application/dicom"

TRANSIENT_ERROR_CODES = frozenset({
    "XDSRegistryBusy", "XDSRepositoryBusy", "XDSRegistryOutOfResources", "XDSRepositoryOutOfResources",
    "XDSRegistryNotAvailable", "XDSRegistryError", "XDSRepositoryError", "XDSUnavailableCommunity",
    # the registry may not have had the identity feed's new patient or merge yet (ITI-8/ITI-44 run beside us)
    "XDSUnknownPatientId", "XDSPatientIdDoesNotMatch",
})
TRANSIENT_HTTP_STATUSES = frozenset({408, 429})
_ERROR_SEVERITY = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
_RIM = "{%s}" % NS["rim"]
_RS = "{%s}" % NS["rs"]
_XDS = "{%s}" % NS["xds"]
_XDSI = "{%s}" % NS["xdsi"]
_QUERY = "{%s}" % NS["query"]
_SLOT_NAMES = {
    "creationTime": "creation_time", "serviceStartTime": "service_start_time",
    "serviceStopTime": "service_stop_time", "repositoryUniqueId": "repository_unique_id",
    "sourcePatientId": "source_patient_id", "languageCode": "language_code", "size": "size", "hash": "hash",
}
_PATIENT_ID_SCHEME = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
_UNIQUE_ID_SCHEME = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
_CLASS_CODE_SCHEME = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
_TYPE_CODE_SCHEME = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
_FORMAT_CODE_SCHEME = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
_EVENT_CODE_SCHEME = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"


class ResponseStatus(enum.StrEnum):
    SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
    PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
    FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"


@dataclass(frozen=True)
class RegistryError:
    error_code: str
    code_context: str
    severity: str
    location: str

    @property
    def is_error(self) -> bool:
        """Error severity (a Warning does not fail the request); a missing severity counts as Error."""
        return self.severity in ("", _ERROR_SEVERITY)


@dataclass(frozen=True)
class RegistryResult:
    status: ResponseStatus
    errors: tuple[RegistryError, ...] = ()

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(error.error_code for error in self.errors)


class XdsError(Exception):
    """A failed XDS exchange; ``errors`` holds the RegistryErrors when the peer sent any."""

    def __init__(self, reason: str, errors: Sequence[RegistryError] = ()) -> None:
        codes = ", ".join(dict.fromkeys(e.error_code for e in errors))
        super().__init__(f"{reason} ({codes})" if codes else reason)
        self.reason = reason
        self.errors = tuple(errors)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(error.error_code for error in self.errors)


class XdsTransient(XdsError):
    """Retrying the same request later may succeed."""


class XdsPermanent(XdsError):
    """The same request will fail again: it needs a change in data, configuration or code."""


@dataclass(frozen=True)
class DocumentEntrySummary:
    """What a consumer needs from a registry DocumentEntry to list it and to retrieve it."""

    entry_uuid: str
    unique_id: str = ""
    patient_id: str = ""
    status: str = ""
    mime_type: str = ""
    title: str = ""
    creation_time: str = ""
    service_start_time: str = ""
    service_stop_time: str = ""
    repository_unique_id: str = ""
    home_community_id: str = ""
    source_patient_id: str = ""
    language_code: str = ""
    size: str = ""
    hash: str = ""
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    event_codes: tuple[Code, ...] = ()
    reference_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        def code(value: Code | None) -> dict[str, str] | None:
            return None if value is None else value.model_dump(by_alias=True)

        return {
            "entryUUID": self.entry_uuid, "uniqueId": self.unique_id, "patientId": self.patient_id,
            "availabilityStatus": self.status, "mimeType": self.mime_type, "title": self.title,
            "creationTime": self.creation_time, "serviceStartTime": self.service_start_time,
            "serviceStopTime": self.service_stop_time, "repositoryUniqueId": self.repository_unique_id,
            "homeCommunityId": self.home_community_id, "sourcePatientId": self.source_patient_id,
            "languageCode": self.language_code, "size": self.size, "hash": self.hash,
            "classCode": code(self.class_code), "typeCode": code(self.type_code),
            "formatCode": code(self.format_code), "eventCodeList": [code(c) for c in self.event_codes],
            "referenceIdList": list(self.reference_ids),
        }


@dataclass(frozen=True)
class RetrievedDocument:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    data: bytes = field(repr=False)
    home_community_id: str = ""


def ssl_context(settings: XdsSettings) -> ssl.SSLContext | None:
    """The TLS context for https endpoints: our client certificate, and ca_file as trust anchors when given."""
    if settings.ca_file is None and settings.cert_file is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.cert_file is not None:
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file) if settings.key_file else None)
    return context


def query_value(value: str) -> str:
    """A stored-query string value: single-quoted, embedded quotes doubled (ITI TF-2 3.18.4.1.2.3.5)."""
    return "'" + value.replace("'", "''") + "'"


def query_list(values: Sequence[str]) -> str:
    return "(" + ",".join(query_value(v) for v in values) + ")"


def _element(tag: str, parent: etree._Element | None = None, attrib: Mapping[str, str] | None = None,
             nsmap: Mapping[str, str] | None = None) -> etree._Element:
    if parent is None:
        return etree.Element(tag, dict(attrib or {}), nsmap=dict(nsmap or {}))
    return etree.SubElement(parent, tag, dict(attrib or {}))


def stored_query(query_id: str, parameters: Mapping[str, str], return_type: str) -> etree._Element:
    """query:AdhocQueryRequest for a stored query; parameter values already encoded."""
    request = _element(_QUERY + "AdhocQueryRequest", nsmap={"query": NS["query"], "rim": NS["rim"]})
    _element(_QUERY + "ResponseOption", request, {"returnComposedObjects": "true", "returnType": return_type})
    query = _element(_RIM + "AdhocQuery", request, {"id": query_id})
    for name, value in parameters.items():
        values = _element(_RIM + "ValueList", _element(_RIM + "Slot", query, {"name": name}))
        _element(_RIM + "Value", values).text = value
    return request


def parse_registry_errors(element: etree._Element) -> tuple[RegistryError, ...]:
    return tuple(
        RegistryError(error_code=e.get("errorCode", ""), code_context=e.get("codeContext", ""),
                      severity=e.get("severity", ""), location=e.get("location", ""))
        for e in element.iterfind(f"{_RS}RegistryErrorList/{_RS}RegistryError")
    )


def parse_registry_response(element: etree._Element) -> RegistryResult:
    """Status and errors of an rs:RegistryResponse or query:AdhocQueryResponse (same attributes)."""
    try:
        status = ResponseStatus(element.get("status", ""))
    except ValueError:
        raise XdsPermanent(f"response status {element.get('status')!r} is not an ebRS/IHE status URN") from None
    return RegistryResult(status, parse_registry_errors(element))


def raise_for_failure(result: RegistryResult, what: str) -> None:
    """Raise the exception a Failure calls for; Success and PartialSuccess pass (warnings stay on the result)."""
    if result.status is not ResponseStatus.FAILURE:
        return
    errors = [e for e in result.errors if e.is_error]
    if errors and all(e.error_code in TRANSIENT_ERROR_CODES for e in errors):
        raise XdsTransient(f"{what} failed", result.errors)
    raise XdsPermanent(f"{what} failed", result.errors)


def _slots(element: etree._Element) -> dict[str, list[str]]:
    return {
        slot.get("name", ""): [v.text or "" for v in slot.iterfind(f"{_RIM}ValueList/{_RIM}Value")]
        for slot in element.iterfind(f"{_RIM}Slot")
    }


def _name(element: etree._Element) -> str:
    found = element.find(f"{_RIM}Name/{_RIM}LocalizedString")
    return "" if found is None else found.get("value", "")


def _code(classification: etree._Element) -> Code | None:
    scheme = _slots(classification).get("codingScheme", [""])
    node = classification.get("nodeRepresentation", "")
    if not node or not scheme or not scheme[0]:
        return None
    return Code(code=node, coding_scheme=scheme[0], display_name=_name(classification) or node)


def parse_document_entry(entry: etree._Element) -> DocumentEntrySummary:
    """A LeafClass ExtrinsicObject as a summary; missing optional attributes stay empty."""
    slots = _slots(entry)
    identifiers = {e.get("identificationScheme"): e.get("value", "")
                   for e in entry.iterfind(f"{_RIM}ExternalIdentifier")}
    codes: dict[str, list[Code]] = {}
    for classification in entry.iterfind(f"{_RIM}Classification"):
        code = _code(classification)
        if code is not None:
            codes.setdefault(classification.get("classificationScheme", ""), []).append(code)
    first = {scheme: found[0] for scheme, found in codes.items()}
    return DocumentEntrySummary(
        entry_uuid=entry.get("id", ""),
        unique_id=identifiers.get(_UNIQUE_ID_SCHEME, ""),
        patient_id=identifiers.get(_PATIENT_ID_SCHEME, ""),
        status=entry.get("status", ""),
        mime_type=entry.get("mimeType", ""),
        title=_name(entry),
        home_community_id=entry.get("home", ""),
        class_code=first.get(_CLASS_CODE_SCHEME),
        type_code=first.get(_TYPE_CODE_SCHEME),
        format_code=first.get(_FORMAT_CODE_SCHEME),
        event_codes=tuple(codes.get(_EVENT_CODE_SCHEME, ())),
        reference_ids=tuple(slots.get("urn:ihe:iti:xds:2013:referenceIdList", ())),
        **{attribute: slots[name][0] for name, attribute in _SLOT_NAMES.items() if slots.get(name)},
    )


def parse_query_response(response: etree._Element) -> tuple[RegistryResult, list[DocumentEntrySummary]]:
    if response.tag != _QUERY + "AdhocQueryResponse":
        raise XdsPermanent(f"expected query:AdhocQueryResponse, got {response.tag}")
    result = parse_registry_response(response)
    objects = response.find(f"{_RIM}RegistryObjectList")
    if objects is None:
        return result, []
    entries = [parse_document_entry(e) for e in objects.iterfind(f"{_RIM}ExtrinsicObject")]
    entries += [DocumentEntrySummary(entry_uuid=ref.get("id", "")) for ref in objects.iterfind(f"{_RIM}ObjectRef")]
    return result, entries


class XdsClient:
    """One HTTP session to the registry and repository endpoints of ``XdsSettings``; use as ``async with``."""

    def __init__(self, settings: XdsSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self._settings = settings
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        if self._session is None:
            # no total limit: a RAD-69 answer may be large; a stalled connect or read still times out
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._settings.timeout_seconds,
                                            sock_read=self._settings.timeout_seconds)
            connector = aiohttp.TCPConnector(ssl=ssl_context(self._settings) or True, limit=16)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def provide_and_register(self, submission: Submission, document: bytes | None = None) -> RegistryResult:
        """RAD-68: send the manifest (``document``, default ``submission.document``) by MTOM/XOP with its metadata.

        Returns the result on Success (warnings included); raises XdsTransient or XdsPermanent otherwise.
        """
        data = submission.document if document is None else document
        request = _element(_XDS + "ProvideAndRegisterDocumentSetRequest", nsmap={"xds": NS["xds"]})
        request.append(etree.fromstring(etree.tostring(submission.request)))
        element = _element(_XDS + "Document", request, {"id": submission.document_entry_uuid})
        element.text = base64.b64encode(data).decode("ascii")
        env = self._envelope("RAD-68", request, self._settings.repository_url)
        content_id = f"{submission.document_entry_uuid.removeprefix('urn:uuid:')}@dicom-gateway"
        soap.include(element, content_id)
        body, content_type = soap.mtom(env, [soap.Attachment(content_id, DICOM_MIME_TYPE, data)])
        message = await self._post(self._settings.repository_url, body, content_type, "RAD-68")
        result = parse_registry_response(self._payload(message, _RS + "RegistryResponse"))
        raise_for_failure(result, "RAD-68")
        if result.status is not ResponseStatus.SUCCESS:
            raise XdsPermanent("RAD-68 answered PartialSuccess, which ITI-41 does not allow", result.errors)
        log.info("RAD-68 registered", extra={"document_unique_id": submission.unique_id,
                                              "warnings": list(result.codes)})
        return result

    async def update_document_set(self, update: StatusUpdate) -> RegistryResult:
        """ITI-57: change a registered DocumentEntry's availabilityStatus (a plain SOAP message to the registry).

        Returns the result on Success; raises XdsTransient or XdsPermanent as provide_and_register does. A repeat
        after a lost answer finds the status already changed and fails with XDSMetadataUpdateError (permanent): a
        GetDocuments tells whether it was applied.
        """
        if not self._settings.registry_url:
            raise XdsPermanent("ITI-57: xds.registry_url is not configured (Update Document Set goes to the registry)")
        env = self._envelope("ITI-57", copy.deepcopy(update.request), self._settings.registry_url)
        body, content_type = soap.plain(env)
        message = await self._post(self._settings.registry_url, body, content_type, "ITI-57")
        result = parse_registry_response(self._payload(message, _RS + "RegistryResponse"))
        raise_for_failure(result, "ITI-57")
        if result.status is not ResponseStatus.SUCCESS:
            raise XdsPermanent("ITI-57 answered PartialSuccess, which ITI-57 does not allow", result.errors)
        log.info("ITI-57 availabilityStatus updated", extra={"entry_uuid": update.entry_uuid,
                                                              "new_status": update.new_status,
                                                              "warnings": list(result.codes)})
        return result

    async def find_documents(
        self,
        patient_id: str,
        *,
        status: Sequence[str] = (APPROVED,),
        class_codes: Sequence[Code] = (),
        creation_from: datetime | None = None,
        creation_to: datetime | None = None,
        return_type: str = "LeafClass",
    ) -> list[DocumentEntrySummary]:
        """ITI-18 FindDocuments for one patient (``ID^^^&OID&ISO``); PartialSuccess returns what came back."""
        parameters = {"$XDSDocumentEntryPatientId": query_value(patient_id),
                      "$XDSDocumentEntryStatus": query_list(status)}
        if class_codes:
            parameters["$XDSDocumentEntryClassCode"] = query_list([f"{c.code}^^{c.coding_scheme}" for c in class_codes])
        if creation_from is not None:
            parameters["$XDSDocumentEntryCreationTimeFrom"] = xds_time(creation_from)
        if creation_to is not None:
            parameters["$XDSDocumentEntryCreationTimeTo"] = xds_time(creation_to)
        return await self._query(FIND_DOCUMENTS, parameters, return_type, "FindDocuments")

    async def get_documents(self, *, unique_ids: Sequence[str] = (),
                            entry_uuids: Sequence[str] = ()) -> list[DocumentEntrySummary]:
        """ITI-18 GetDocuments by DocumentEntry uniqueIds or by entryUUIDs (exactly one of the two)."""
        if bool(unique_ids) == bool(entry_uuids):
            raise ValueError("GetDocuments takes unique_ids or entry_uuids, not both and not neither")
        name, values = (("$XDSDocumentEntryUniqueId", unique_ids) if unique_ids
                        else ("$XDSDocumentEntryEntryUUID", entry_uuids))
        return await self._query(GET_DOCUMENTS, {name: query_list(values)}, "LeafClass", "GetDocuments")

    async def retrieve_document(self, unique_id: str, repository_unique_id: str,
                                home_community_id: str | None = None) -> bytes:
        """ITI-43: one document's bytes from the repository."""
        request = _element(_XDS + "RetrieveDocumentSetRequest", nsmap={"xds": NS["xds"]})
        _document_request(request, repository_unique_id, unique_id, home_community_id)
        documents = await self._retrieve("ITI-43", request)
        found = next((d for d in documents if d.document_unique_id == unique_id), None)
        if found is None:
            raise XdsPermanent("ITI-43 answer does not contain the requested document")
        return found.data

    async def retrieve_imaging(
        self,
        study_instance_uid: str,
        series: Mapping[str, Sequence[str]],
        repository_unique_id: str,
        *,
        transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian,),
    ) -> list[RetrievedDocument]:
        """RAD-69: the instances ``series`` names (Series Instance UID -> SOP Instance UIDs) from the Imaging
        Document Source whose Retrieve Location UID is ``repository_unique_id``; PartialSuccess returns what came."""
        request = _element(_XDSI + "RetrieveImagingDocumentSetRequest", nsmap={"xdsi": NS["xdsi"], "xds": NS["xds"]})
        study = _element(_XDSI + "StudyRequest", request, {"studyInstanceUID": study_instance_uid})
        for series_uid, sop_uids in series.items():
            series_element = _element(_XDSI + "SeriesRequest", study, {"seriesInstanceUID": series_uid})
            for sop_uid in sop_uids:
                _document_request(series_element, repository_unique_id, sop_uid, None)
        syntaxes = _element(_XDSI + "TransferSyntaxUIDList", request)
        for syntax in transfer_syntaxes:
            _element(_XDSI + "TransferSyntaxUID", syntaxes).text = syntax
        return await self._retrieve("RAD-69", request)

    async def _retrieve(self, transaction: str, request: etree._Element) -> list[RetrievedDocument]:
        env = self._envelope(transaction, request, self._settings.repository_url)
        body, content_type = soap.plain(env)
        message = await self._post(self._settings.repository_url, body, content_type, transaction)
        response = self._payload(message, _XDS + "RetrieveDocumentSetResponse")
        registry_response = response.find(_RS + "RegistryResponse")
        if registry_response is None:
            raise XdsPermanent(f"{transaction} answer has no RegistryResponse")
        result = parse_registry_response(registry_response)
        raise_for_failure(result, transaction)
        if result.status is ResponseStatus.PARTIAL_SUCCESS:
            log.warning("%s partially succeeded", transaction, extra={"errors": list(result.codes)})
        try:
            return [
                RetrievedDocument(
                    repository_unique_id=(r.findtext(_XDS + "RepositoryUniqueId") or "").strip(),
                    document_unique_id=(r.findtext(_XDS + "DocumentUniqueId") or "").strip(),
                    mime_type=(r.findtext(_XDS + "mimeType") or "").strip(),
                    data=message.document(_required(r, _XDS + "Document")),
                    home_community_id=(r.findtext(_XDS + "HomeCommunityId") or "").strip(),
                )
                for r in response.iterfind(_XDS + "DocumentResponse")
            ]
        except soap.SoapError as exc:
            raise XdsPermanent(f"{transaction} answer: {exc.reason}") from None

    async def _query(self, query_id: str, parameters: Mapping[str, str], return_type: str,
                     name: str) -> list[DocumentEntrySummary]:
        if return_type not in ("LeafClass", "ObjectRef"):
            raise ValueError("return_type is LeafClass or ObjectRef")
        env = self._envelope("ITI-18", stored_query(query_id, parameters, return_type), self._settings.registry_url)
        body, content_type = soap.plain(env)
        message = await self._post(self._settings.registry_url, body, content_type, "ITI-18")
        result, entries = parse_query_response(message.body())
        raise_for_failure(result, f"ITI-18 {name}")
        if result.status is ResponseStatus.PARTIAL_SUCCESS:
            log.warning("ITI-18 %s partially succeeded", name, extra={"errors": list(result.codes)})
        return entries

    def _envelope(self, transaction: str, payload: etree._Element, url: str) -> etree._Element:
        """The SOAP request, refused (XdsPermanent) when it is not valid against the XDS schemas."""
        if not url:
            raise XdsPermanent(f"{transaction}: no endpoint configured (xds.repository_url / xds.registry_url)")
        env, _ = soap.envelope(soap.ACTIONS[transaction], payload, to=url)
        errors = xsd.validate(env)
        if errors:
            raise XdsPermanent(f"{transaction} request is not schema-valid: {'; '.join(errors[:3])}")
        return env

    async def _post(self, url: str, body: bytes, content_type: str, transaction: str) -> soap.SoapMessage:
        """POST a SOAP request; the answer as a SoapMessage, or the exception its failure calls for."""
        if self._session is None:
            raise RuntimeError("XdsClient used outside 'async with'")
        try:
            async with self._session.post(url, data=body, headers={"Content-Type": content_type}) as response:
                payload = await response.read()
                status, answer_type = response.status, response.headers.get("Content-Type", "")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise XdsTransient(f"{transaction}: {type(exc).__name__} talking to the endpoint") from exc
        try:
            message = soap.parse(payload, answer_type)
        except soap.SoapError as exc:
            if status >= 500 or status in TRANSIENT_HTTP_STATUSES:
                raise XdsTransient(f"{transaction}: HTTP {status}") from None
            raise XdsPermanent(f"{transaction}: HTTP {status}, unreadable answer: {exc.reason}") from None
        fault = message.fault()
        if fault is not None:
            code, reason = fault
            kind = XdsTransient if code == "Receiver" else XdsPermanent
            raise kind(f"{transaction}: SOAP {code} fault: {reason}")
        if status >= 400:
            kind = XdsTransient if status >= 500 or status in TRANSIENT_HTTP_STATUSES else XdsPermanent
            raise kind(f"{transaction}: HTTP {status}")
        return message

    @staticmethod
    def _payload(message: soap.SoapMessage, tag: str) -> etree._Element:
        payload = message.body()
        if payload.tag != tag:
            raise XdsPermanent(f"expected {tag} in the answer, got {payload.tag}")
        return payload


def _document_request(parent: etree._Element, repository_unique_id: str, unique_id: str,
                      home_community_id: str | None) -> None:
    request = _element(_XDS + "DocumentRequest", parent)
    if home_community_id:
        _element(_XDS + "HomeCommunityId", request).text = home_community_id
    _element(_XDS + "RepositoryUniqueId", request).text = repository_unique_id
    _element(_XDS + "DocumentUniqueId", request).text = unique_id


def _required(element: etree._Element, tag: str) -> etree._Element:
    found = element.find(tag)
    if found is None:
        raise XdsPermanent(f"{tag} missing in a DocumentResponse")
    return found
