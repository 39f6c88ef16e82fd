"""The self-test's ends of the gateway's protocols: a DICOM application entity (a modality that stores and asks
for storage commitment, a viewer that queries and retrieves, an IAN subscriber, and in simulator mode the archive
the gateway forwards to), the operators' API over HTTP, and a HIS sending ADT over MLLP. Each exchange is written
into the step that made it."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    InstanceAvailabilityNotification,
    KeyObjectSelectionDocumentStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from gateway.dicom.commitment import STORAGE_COMMITMENT_INSTANCE
from gateway.selftest.report import Step, StepFailed

DICOM = "DICOM"
SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)
STORED_WITH_WARNING = (0xB000, 0xB006, 0xB007)
"""C-STORE warnings: coercion, elements discarded, data set does not match the SOP Class; stored all the same
(PS3.4 B.2.3)."""


@dataclass(frozen=True)
class Endpoint:
    """Where the gateway's DICOM port is, and how to reach it."""

    host: str
    port: int
    called_ae: str
    tls: ssl.SSLContext | None = None


@dataclass
class Received:
    """What the gateway sent the self-test's listener: commitment reports, IANs, forwarded instances."""

    reports: list[tuple[float, int, Dataset]] = field(default_factory=list)
    notifications: list[tuple[float, Dataset]] = field(default_factory=list)
    forwarded: list[tuple[float, str, Dataset]] = field(default_factory=list)
    """(when, called AE, data set) of each C-STORE the gateway made to the listener."""
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, found: Callable[[], Any], timeout: float) -> Any:
        """``found()`` once it is truthy, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (answer := found()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(min(left, 0.5))
            return answer


class DicomPeer:
    """The self-test's AE: it opens associations to the gateway and listens for what the gateway sends it."""

    def __init__(self, ae_title: str, endpoint: Endpoint, timeout: float) -> None:
        self.ae_title = ae_title
        self.endpoint = endpoint
        self.timeout = timeout
        self.received = Received()
        self._server: ThreadedAssociationServer | None = None

    def __enter__(self) -> DicomPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Accept the gateway's associations (any called AE: the listener is also the local archive in simulator
        mode); returns the port bound."""
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = 16
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.timeout
        ae.add_supported_context(Verification)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        ae.add_supported_context(InstanceAvailabilityNotification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax)
        server = ae.start_server((host, port), block=False, ssl_context=tls, evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, self._report), (evt.EVT_N_CREATE, self._created),
            (evt.EVT_C_STORE, self._stored)])
        assert server is not None  # not blocking: the server runs in its own thread
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _report(self, event: evt.Event) -> tuple[int, None]:
        with self.received.changed:
            self.received.reports.append((time.time(), int(event.event_type or 0), event.event_information))
            self.received.changed.notify_all()
        return SUCCESS, None

    def _created(self, event: evt.Event) -> tuple[int, Dataset]:
        with self.received.changed:
            self.received.notifications.append((time.time(), event.attribute_list))
            self.received.changed.notify_all()
        return SUCCESS, event.attribute_list

    def _stored(self, event: evt.Event) -> int:
        dataset = event.dataset
        called = event.assoc.acceptor.ae_title
        with self.received.changed:
            self.received.forwarded.append((time.time(), called, dataset))
            self.received.changed.notify_all()
        return SUCCESS

    def _associate(self, step: Step, contexts: list[str], ext_neg: list[Any] | None = None,
                   handlers: list[Any] | None = None) -> Association:
        ae = AE(ae_title=self.ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.timeout
        for context in contexts:
            ae.add_requested_context(context)
        target = self.endpoint
        step.sent(DICOM, f"A-ASSOCIATE-RQ {self.ae_title} -> {target.called_ae}",
                  address=f"{target.host}:{target.port}", tls=target.tls is not None, contexts=contexts)
        tls_args = None if target.tls is None else (target.tls, target.host)
        association = ae.associate(target.host, target.port, ae_title=target.called_ae, ext_neg=ext_neg,
                                   evt_handlers=handlers, tls_args=tls_args)
        if association.is_rejected:
            step.received(DICOM, "A-ASSOCIATE-RJ")
            raise StepFailed(f"the gateway ({target.called_ae} at {target.host}:{target.port}) rejected the "
                             f"association from {self.ae_title}: check the allow-list (GATEWAY_DICOM__ALLOWED_AES)")
        if not association.is_established:
            step.received(DICOM, "no association (connection refused, TLS handshake failed, or no answer)")
            raise StepFailed(f"no association with the gateway at {target.host}:{target.port}"
                             f"{' over TLS' if target.tls is not None else ''}: is it running and reachable there?")
        step.received(DICOM, "A-ASSOCIATE-AC", accepted=[
            context.abstract_syntax for context in association.accepted_contexts])
        return association

    def echo(self, step: Step) -> None:
        association = self._associate(step, [Verification])
        try:
            step.sent(DICOM, "C-ECHO-RQ")
            status = association.send_c_echo()
            _answered(step, "C-ECHO-RSP", status)
        finally:
            association.release()

    def store(self, step: Step, datasets: list[Dataset]) -> None:
        classes = sorted({str(ds.SOPClassUID) for ds in datasets})
        association = self._associate(step, classes)
        try:
            for dataset in datasets:
                step.sent(DICOM, "C-STORE-RQ", sop_instance_uid=str(dataset.SOPInstanceUID),
                          sop_class_uid=str(dataset.SOPClassUID))
                _answered(step, "C-STORE-RSP", association.send_c_store(dataset), STORED_WITH_WARNING)
        finally:
            association.release()

    def request_commitment(self, step: Step, transaction: str, references: list[tuple[str, str]]) -> None:
        association = self._associate(step, [StorageCommitmentPushModel])
        try:
            request = Dataset()
            request.TransactionUID = transaction
            request.ReferencedSOPSequence = [_reference(cls, uid) for cls, uid in references]
            step.sent(DICOM, "N-ACTION-RQ Request Storage Commitment", transaction_uid=transaction,
                      instances=len(references))
            status, _ = association.send_n_action(request, 1, StorageCommitmentPushModel,
                                                  STORAGE_COMMITMENT_INSTANCE)
            _answered(step, "N-ACTION-RSP", status)
        finally:
            association.release()

    def find(self, step: Step, level: str, keys: dict[str, str], returned: tuple[str, ...]) -> list[Dataset]:
        association = self._associate(step, [StudyRootQueryRetrieveInformationModelFind])
        try:
            query = Dataset()
            query.QueryRetrieveLevel = level
            for keyword, value in keys.items():
                setattr(query, keyword, value)
            for keyword in returned:
                if keyword not in query:
                    setattr(query, keyword, "")
            step.sent(DICOM, f"C-FIND-RQ {level}", keys=keys)
            matches = []
            for status, identifier in association.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                code = _status(status)
                if code in PENDING and identifier is not None:
                    matches.append(identifier)
                    continue
                step.received(DICOM, "C-FIND-RSP", status=f"0x{code:04X}", matches=len(matches))
                if code != SUCCESS:
                    raise StepFailed(f"C-FIND answered 0x{code:04X}")
            return matches
        finally:
            association.release()

    def get(self, step: Step, study_instance_uid: str, classes: list[str]) -> list[Dataset]:
        """C-GET of the study, the instances coming back on the same association."""
        retrieved: list[Dataset] = []

        def stored(event: evt.Event) -> int:
            retrieved.append(event.dataset)
            return SUCCESS

        roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
        association = self._associate(step, [StudyRootQueryRetrieveInformationModelGet, *classes], ext_neg=roles,
                                      handlers=[(evt.EVT_C_STORE, stored)])
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study_instance_uid
            step.sent(DICOM, "C-GET-RQ STUDY", study_instance_uid=study_instance_uid)
            final = SUCCESS
            for status, _ in association.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                final = _status(status)
            step.received(DICOM, "C-GET-RSP", status=f"0x{final:04X}", instances=len(retrieved))
            if final != SUCCESS:
                raise StepFailed(f"C-GET answered 0x{final:04X}")
            return retrieved
        finally:
            association.release()


IMAGE_CLASSES = [CTImageStorage, KeyObjectSelectionDocumentStorage]


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _status(status: Dataset | None) -> int:
    if status is None or "Status" not in status:
        raise StepFailed("the association ended without a response (timeout or abort)")
    return int(status.Status)


def _answered(step: Step, name: str, status: Dataset | None, also_success: tuple[int, ...] = ()) -> None:
    code = _status(status)
    step.received(DICOM, name, status=f"0x{code:04X}")
    if code != SUCCESS and code not in also_success:
        comment = str(status.get("ErrorComment", "")) if status is not None else ""
        raise StepFailed(f"{name} 0x{code:04X}{': ' + comment if comment else ''}")


class Api:
    """The operators' JSON API, with the token the self-test was given."""

    def __init__(self, base_url: str, token: str, tls: ssl.SSLContext | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._tls = tls
        self._timeout = timeout

    def get(self, step: Step | None, path: str, **query: str) -> tuple[int, Any]:
        url = f"{self.base_url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}",
                                                       "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._tls) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        if status == 401:
            raise StepFailed(f"the API refused the self-test's token at {path} (401): give it with --token-file")
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = body.decode(errors="replace")
        if step is not None:
            step.sent("HTTP", f"GET {path}", **query)
            step.received("HTTP", f"{status}")
        return status, answer

    def until(self, step: Step, path: str, condition: Callable[[Any], Any], timeout: float, what: str) -> Any:
        """GET ``path`` until ``condition`` holds of its answer; the exchange is recorded once, at the end."""
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            status, answer = self.get(None, path)
            polls += 1
            if status == 200 and (found := condition(answer)):
                step.sent("HTTP", f"GET {path}", polls=polls)
                step.received("HTTP", "200")
                return found
            if time.monotonic() > deadline:
                step.sent("HTTP", f"GET {path}", polls=polls)
                step.received("HTTP", f"{status}")
                raise StepFailed(f"{what} not seen within {timeout:.0f} s (last answer: HTTP {status})")
            time.sleep(0.5)


START, END = b"\x0b", b"\x1c\r"


def mllp_send(step: Step, host: str, port: int, message: str, timeout: float,
              tls: ssl.SSLContext | None = None) -> str:
    """One ADT message in its MLLP frame; returns the acknowledgment's MSA-1 (AA when applied durably)."""
    step.sent("HL7", message.split("\r", 1)[0].split("|")[8] if message.count("|") > 8 else "HL7",
              message=message.replace("\r", "\n").strip())
    with socket.create_connection((host, port), timeout=timeout) as raw:
        connection = raw if tls is None else tls.wrap_socket(raw, server_hostname=host)
        connection.sendall(START + message.encode() + END)
        answer = b""
        while END not in answer:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    text = answer.strip(b"\x0b\x1c\r\n").decode(errors="replace")
    segments = {line.split("|", 1)[0]: line.split("|") for line in text.split("\r") if line}
    code = segments.get("MSA", ["", ""])[1] if len(segments.get("MSA", [])) > 1 else ""
    step.received("HL7", f"ACK {code or '(none)'}", message=text.replace("\r", "\n"))
    return code
