"""Associations the gateway opens: storage-commitment reports (N-EVENT-REPORT) and IANs (N-CREATE).

These are pynetdicom's AE as requestor, run in a worker thread (its association API is blocking); they are
few and small beside the inbound traffic, so the threaded model costs nothing here. A report goes on a new
association on which the gateway is the SCP of the Storage Commitment Push Model SOP Class, so it proposes
that role with SCP/SCU Role Selection (PS3.7 D.3.3.4).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role
from pynetdicom.association import Association

from gateway.core.errors import DeliveryFailed
from gateway.dicom.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from gateway.dicom.ian import INSTANCE_AVAILABILITY_NOTIFICATION

_WARNINGS = (0x0001, 0x0107, 0x0116)
"""Warning statuses of N-CREATE / N-EVENT-REPORT (PS3.7 C.4, 10.1): the operation was performed."""


@dataclass(frozen=True, slots=True)
class RemoteAE:
    """A peer the gateway opens associations to."""

    ae_title: str
    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What the gateway presents and trusts on DICOM TLS associations it opens."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Outbound:
    ae_title: str
    """Our Calling AE Title."""
    timeout: float
    resolve: Callable[[str], RemoteAE | None]
    """Where an AE title is (the configured remote AEs)."""
    tls: ClientTls = ClientTls()

    async def commitment_report(self, ae_title: str, event_type: int, event_information: Dataset) -> None:
        await asyncio.to_thread(self._report, self._remote(ae_title), event_type, event_information)

    async def availability(self, ae_title: str, notification: Dataset) -> None:
        await asyncio.to_thread(self._notify, self._remote(ae_title), notification)

    def _remote(self, ae_title: str) -> RemoteAE:
        remote = self.resolve(ae_title)
        if remote is None:
            raise DeliveryFailed(f"{ae_title} is not in dicom.remote_aes")
        return remote

    def _report(self, remote: RemoteAE, event_type: int, event_information: Dataset) -> None:
        association = self._associate(remote, STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)
        try:
            status, _ = association.send_n_event_report(
                event_information, event_type, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE)
            _check(status, "N-EVENT-REPORT")
        finally:
            _end(association)

    def _notify(self, remote: RemoteAE, notification: Dataset) -> None:
        association = self._associate(remote, INSTANCE_AVAILABILITY_NOTIFICATION, scp_role=False)
        try:
            status, _ = association.send_n_create(notification, INSTANCE_AVAILABILITY_NOTIFICATION, generate_uid())
            _check(status, "N-CREATE")
        finally:
            _end(association)

    def _associate(self, remote: RemoteAE, sop_class: str, scp_role: bool) -> Association:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        ae.add_requested_context(sop_class)
        extended: list[Any] = [build_role(sop_class, scu_role=False, scp_role=True)] if scp_role else []
        tls = (client_tls_context(self.tls), remote.host) if remote.tls else None
        try:
            association = ae.associate(remote.host, remote.port, ae_title=remote.ae_title, ext_neg=extended,
                                       tls_args=tls)
        except OSError as exc:
            raise DeliveryFailed(f"cannot connect to {remote.ae_title} at {remote.host}:{remote.port}: {exc}") from exc
        if not association.is_established:
            outcome = ("rejected the association" if association.is_rejected
                       else "unreachable, or it aborted the association")
            raise DeliveryFailed(f"{remote.ae_title} at {remote.host}:{remote.port}: {outcome}")
        context = next((cx for cx in association.accepted_contexts if cx.abstract_syntax == sop_class), None)
        if context is None or (scp_role and not context.as_scp):
            _end(association)
            role = "the SCP role for " if scp_role else ""
            raise DeliveryFailed(f"{remote.ae_title} did not accept {role}{sop_class}")
        return association



def client_tls_context(tls: ClientTls) -> ssl.SSLContext:
    """TLS 1.2 or later, the peer verified against ``ca_file`` (the system's CAs without one)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _check(status: Dataset | None, operation: str) -> None:
    if status is None or "Status" not in status:
        raise DeliveryFailed(f"no {operation} response (timeout or aborted association)")
    code = int(status.Status)
    if code != 0x0000 and code not in _WARNINGS and not 0xB000 <= code <= 0xBFFF:
        raise DeliveryFailed(f"{operation} answered with status 0x{code:04X}")


def _end(association: Association) -> None:
    if association.is_established:
        association.release()
