"""DIMSE services as the association sees them (PS3.7): what a service offers, and how it is handed a request.

The association knows the upper layer and DIMSE framing; it dispatches each request on (Command Field, abstract
syntax of its presentation context) to the one registered service, and knows nothing of what the service does
with it. A service answers with a ``Response`` at once, or returns a ``DataSetSink`` that receives the request's
data set fragment by fragment (never whole) and gives the response at its end. A request no service takes is
answered 0x0211 (Unrecognized Operation) once its data set, if any, has gone by.

A request answered by a stream of responses (C-FIND matches, C-MOVE and C-GET progress) gives an ``Operation``
instead of a ``Response``: the association runs it while it goes on reading, so that a C-CANCEL stops it and
the C-STORE-RSPs of a C-GET's sub-operations reach it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from pynetdicom.presentation import PresentationContext

from gateway.core import audit
from gateway.core.errors import DicomStatusError
from gateway.dicom import dimse
from gateway.dicom.dimse import Command, SubOperations

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True, slots=True)
class Caller:
    """A calling AE the acceptor's allow-list knows, with the organisation its data is attributed to."""

    ae_title: str
    organization: str = ""
    organization_oid: str = ""
    transfer_syntax_preference: tuple[str, ...] = ()
    """Its own transfer syntax preference, before the acceptor's (empty: the acceptor's)."""
    max_associations: int | None = None
    """How many associations it may hold at once; None: the acceptor's per-AE limit."""
    permissions: frozenset[str] = frozenset({"store"})
    """What it may do: ``store``, ``query``, ``retrieve``."""


def permits(association: AssociationContext, permission: str) -> bool:
    """Whether the association's caller may do ``permission``; nothing but storing is allowed to a caller the
    allow-list does not name (no allow-list configured)."""
    caller = association.caller
    if caller is None:
        return permission == "store"
    return permission in caller.permissions


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    comment: str | None = None
    """Error Comment (0000,0902), at most 64 characters."""
    data_set: bytes | None = None
    """The identifier that follows, encoded in the context's transfer syntax."""
    counts: SubOperations | None = None


class Operation(Protocol):
    """A request answered by a stream of responses, the last of them final (not pending)."""

    detached: bool
    """Runs on to its end if the association ends first (a C-MOVE's sub-operations go on their own
    association); otherwise it is cancelled with the association."""

    def responses(self, cancelled: asyncio.Event) -> AsyncIterator[Response]:
        """``cancelled`` is set when the requestor sends C-CANCEL: the stream then ends with 0xFE00."""
        ...


class DataSetSink(Protocol):
    """Receives one request's data set. ``write`` raises ``DicomStatusError`` to refuse it: the rest of the data
    set is then discarded and the request answered with that status."""

    async def write(self, fragment: memoryview) -> None: ...

    async def finish(self) -> Response | Operation:
        """The whole data set has arrived: act on it, and say what to answer."""
        ...

    async def abort(self, reason: str) -> None:
        """The data set will not be completed (refused, or the association ended first)."""
        ...


class AssociationContext(Protocol):
    """The association a request came on, as a service may use it."""

    id: str
    calling_ae: str
    called_ae: str
    peer: str
    """``ip:port`` of the requestor."""
    caller: Caller | None
    user: str
    """The user the requestor authenticated as (User Identity Negotiation), or ""."""

    def transfer_syntax(self, context_id: int) -> str: ...

    async def send_request(self, context_id: int, command: Callable[[int], bytes],
                           data_set: bytes | AsyncIterable[bytes] | None, timeout: float) -> Command:
        """Send a request of ours on this association (e.g. an N-EVENT-REPORT, a C-GET's C-STORE; ``command``
        builds its command set from the Message ID given; a data set may stream) and return the peer's
        response. Raises ``ConnectionError`` if the association ends first, ``TimeoutError`` if no response
        comes."""
        ...

    def contexts_as_scu(self, abstract_syntax: str) -> dict[str, int]:
        """Transfer syntax -> presentation context ID of the contexts on which we may send requests of
        ``abstract_syntax`` (the requestor took the SCP role by SCP/SCU Role Selection)."""
        ...

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the association ends, however it ends."""
        ...


def requestor(association: AssociationContext) -> audit.Participant:
    """The calling AE as the requesting participant of an audit record: its title, address and user."""
    return audit.Participant(association.calling_ae, True, audit.Role.SOURCE,
                             association.peer.rpartition(":")[0].strip("[]"), association.user)


class DimseService(Protocol):
    command_fields: frozenset[int]
    """Request Command Fields the service takes (e.g. ``dimse.C_STORE_RQ``)."""

    def abstract_syntaxes(self) -> Mapping[str, Sequence[str]]:
        """SOP Classes the service serves, each with the transfer syntaxes it accepts."""
        ...

    async def request(self, association: AssociationContext, request: Command,
                      context_id: int) -> Response | DataSetSink: ...


class WholeDataSet:
    """A request's data set gathered whole, up to ``limit`` bytes (a list of references, a query identifier),
    then handed to ``finished``; a larger one is refused with ``status``."""

    def __init__(self, request: str, what: str, finished: Callable[[bytes], Awaitable[Response | Operation]],
                 limit: int, status: int) -> None:
        self._request = request
        self._what = what
        self._finished = finished
        self._limit = limit
        self._status = status
        self._data = bytearray()

    async def write(self, fragment: memoryview) -> None:
        self._data += fragment
        if len(self._data) > self._limit:
            size = f"{self._limit >> 20} MiB" if self._limit >= 1 << 20 else f"{self._limit >> 10} KiB"
            reason = f"{self._what} larger than {size}"
            log.warning(f"{self._request} refused", extra={"reason": reason})
            error = DicomStatusError(reason)
            error.status = self._status
            raise error

    async def finish(self) -> Response | Operation:
        return await self._finished(bytes(self._data))

    async def abort(self, reason: str) -> None:
        self._data = bytearray()


class VerificationService:
    """C-ECHO (PS3.4 Annex A)."""

    command_fields = frozenset({dimse.C_ECHO_RQ})

    def __init__(self, transfer_syntaxes: Sequence[str]) -> None:
        self._transfer_syntaxes = tuple(transfer_syntaxes)

    def abstract_syntaxes(self) -> Mapping[str, Sequence[str]]:
        return {VERIFICATION: self._transfer_syntaxes}

    async def request(self, association: AssociationContext, request: Command,
                      context_id: int) -> Response | DataSetSink:
        return Response(dimse.SUCCESS)


@dataclass(frozen=True, slots=True)
class CatchAll:
    """A service that also takes abstract syntaxes no service names, those ``accepts`` allows (say, any
    storage SOP Class, private ones included), with these transfer syntaxes."""

    service: DimseService
    accepts: Callable[[str], bool]
    transfer_syntaxes: Sequence[str]


class ServiceRegistry:
    """The services of one acceptor; the presentation contexts it accepts follow from them."""

    def __init__(self, services: Iterable[DimseService], catch_all: CatchAll | None = None) -> None:
        self._catch_all = catch_all
        self._by_request: dict[tuple[int, str], DimseService] = {}
        self._syntaxes: dict[str, list[str]] = {}
        self._reported: set[str] = set()
        services = list(services)
        self._gets = any(dimse.C_GET_RQ in service.command_fields for service in services)
        for service in services:
            if dimse.N_EVENT_REPORT_RQ in service.command_fields:
                self._reported.update(service.abstract_syntaxes())
            if self._gets and dimse.C_STORE_RQ in service.command_fields:
                self._reported.update(service.abstract_syntaxes())
            for abstract_syntax, transfer_syntaxes in service.abstract_syntaxes().items():
                for command_field in service.command_fields:
                    if (command_field, abstract_syntax) in self._by_request:
                        raise ValueError(f"two services for command 0x{command_field:04x} on {abstract_syntax}")
                    self._by_request[(command_field, abstract_syntax)] = service
                known = self._syntaxes.setdefault(abstract_syntax, [])
                known.extend(ts for ts in transfer_syntaxes if ts not in known)

    def find(self, command_field: int, abstract_syntax: str) -> DimseService | None:
        service = self._by_request.get((command_field, abstract_syntax))
        if service is None and self._caught(abstract_syntax):
            assert self._catch_all is not None
            if command_field in self._catch_all.service.command_fields:
                return self._catch_all.service
        return service

    def _caught(self, abstract_syntax: str) -> bool:
        return (self._catch_all is not None and abstract_syntax not in self._syntaxes
                and self._catch_all.accepts(abstract_syntax))

    @cached_property
    def presentation_contexts(self) -> tuple[PresentationContext, ...]:
        """What the acceptor accepts of the abstract syntaxes services name."""
        return tuple(_context(abstract_syntax, syntaxes, abstract_syntax in self._reported)
                     for abstract_syntax, syntaxes in self._syntaxes.items())

    def contexts_for(self, proposed: Sequence[str]) -> list[PresentationContext]:
        """What the acceptor accepts of the abstract syntaxes proposed, those the catch-all takes included."""
        known = self.presentation_contexts
        if self._catch_all is None:
            return list(known)
        caught = {uid for uid in proposed if self._caught(uid)}
        return [*known, *(_context(uid, self._catch_all.transfer_syntaxes, self._gets) for uid in sorted(caught))]


def _context(abstract_syntax: str, transfer_syntaxes: Sequence[str], reported: bool = False) -> PresentationContext:
    """When the requestor proposes roles (SCP/SCU Role Selection) it may be the SCU of each; it may be the SCP
    only where we send it requests: where a service takes its N-EVENT-REPORTs (an archive reporting on our
    storage-commitment request proposes itself as SCP of the Push Model, PS3.4 J.3.3), and on the storage SOP
    Classes when C-GET is served (the retrieved instances come back on the C-GET's association, PS3.4 C.4.3)."""
    context = PresentationContext()
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = list(transfer_syntaxes)
    context.scu_role = True
    context.scp_role = reported
    return context
