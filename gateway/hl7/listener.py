"""The ``hl7`` role: ADT messages over MLLP, acknowledged ``AA`` only once durable on the bus.

Each message is answered on its connection before the next is read (original mode). It is parsed in its own
character set, its sender checked against the allow-list, read as a patient change (what cannot be applied is
answered ``AE``/``AR`` with an ERR segment), checked against the patients the index holds (a merged identifier,
an A47 onto an identifier that exists: ``AE``), and published on the hl7 topic; the patient role applies it.
When the index cannot answer in time the message is published unchecked (the patient role checks again and
dead-letters what it cannot apply), so an index outage never holds up acknowledgments. A message applied before
(the same sender and MSH-10) is acknowledged again and not published again; one sent again before it was applied
is published twice and applied once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Collection
from contextlib import AsyncExitStack
from types import TracebackType

from gateway.bus import Bus, BusError, Producer, RecordTooLarge
from gateway.core import audit
from gateway.core.audit import AuditTrail, NoAudit
from gateway.core.errors import describe
from gateway.hl7 import adt, mllp
from gateway.hl7.message import ACCEPT, ERROR, REJECT, Hl7Error, Message, acknowledgment, header_of, parse
from gateway.index import IndexFailure, IndexRejected
from gateway.index.patients import PatientRefused
from gateway.listen import StreamListener, server_tls_context
from gateway.logs import bound
from gateway.metrics import Metrics
from gateway.retrieve import Holdings
from gateway.settings import Hl7Settings, TopicSettings

log = logging.getLogger(__name__)

_LOGGED = 64
"""Characters of a control ID that reach the logs."""
_HANDSHAKE_SECONDS = 30.0
"""A TLS handshake not done by then is given up (the peer holds a connection, not a message)."""


class Hl7Listener:
    name = "hl7"

    def __init__(self, settings: Hl7Settings, topics: TopicSettings, bus: Bus, metrics: Metrics,
                 trusted: Collection[str], test_identities: bool,
                 holdings: Holdings | None, drain_timeout: float, audit_trail: AuditTrail | None = None) -> None:
        """``trusted``: assigning authorities a patient identifier may have; ``holdings``: the index the
        pre-check reads (None: no pre-check); ``audit_trail`` hears of failed TLS handshakes."""
        trail: AuditTrail = audit_trail if audit_trail is not None else NoAudit()
        self._settings = settings
        self._topics = topics
        self._bus = bus
        self._metrics = metrics
        self._trusted = frozenset(trusted)
        self._test_identities = test_identities
        self._holdings = holdings
        self._stack = AsyncExitStack()
        self._producer: Producer | None = None
        self._listener = StreamListener("hl7", settings.host, self._connection, drain_timeout,
                                        min(settings.idle_timeout_seconds, _HANDSHAKE_SECONDS),
                                        max_per_peer=settings.max_connections_per_peer,
                                        on_tls_failure=lambda host, reason: trail.note(
                                            audit.tls_refused(audit.Interface.HL7, host, "-", reason)))

    @property
    def ports(self) -> list[int]:
        return self._listener.ports

    async def __aenter__(self) -> Hl7Listener:
        assert self._settings.port is not None
        self._producer = await self._stack.enter_async_context(self._bus.producer())
        try:
            await self._listener.listen(self._settings.port, server_tls_context(self._settings.tls))
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    def stop_accepting(self) -> None:
        self._listener.stop_accepting()

    async def wait(self) -> None:
        assert self._producer is not None
        await self._producer.wait()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._listener.close()
        if self._holdings is not None:
            await self._holdings.close()
        await self._stack.aclose()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("", 0)
        with bound(peer=f"{peername[0]}:{peername[1]}"):
            frames = mllp.FrameReader(reader, self._settings.max_message_bytes)
            try:
                while True:
                    try:
                        frame = await asyncio.wait_for(frames.next(), self._settings.idle_timeout_seconds)
                    except TimeoutError:
                        log.info("HL7 connection idle: closed", extra={"idle_seconds": self._settings.idle_timeout_seconds})
                        return
                    if frame is None:
                        return
                    if frame.skipped:
                        log.warning("bytes outside an MLLP frame skipped", extra={"bytes": frame.skipped})
                    answer = await self._answer(frame, str(peername[0]))
                    writer.write(mllp.frame(answer))
                    try:  # a peer that sends and never reads is not waited for beyond the idle time
                        await asyncio.wait_for(writer.drain(), self._settings.idle_timeout_seconds)
                    except TimeoutError:
                        log.info("HL7 peer does not read its acknowledgments: closed")
                        return
            except (ConnectionError, OSError) as exc:
                log.info("HL7 connection lost", extra={"error": type(exc).__name__})
            finally:
                writer.close()

    async def _answer(self, frame: mllp.Frame, address: str) -> bytes:
        """The acknowledgment of one frame; anything unforeseen is still answered (AE 207, to the sender's MSH-10),
        since a sender without an answer stops its whole queue."""
        ours = uuid.uuid4().hex[:20]
        try:
            return await self._acknowledge(frame, address, ours)
        except Exception as exc:
            log.error("HL7 message failed unexpectedly: answered AE", extra={"error": describe(exc)})
            return self._answered(header_of(frame.message or frame.head), ERROR,
                                  Hl7Error(207, "", "the gateway could not process the message"), ours)

    async def _acknowledge(self, frame: mllp.Frame, address: str, ours: str) -> bytes:
        settings = self._settings
        if frame.oversized:
            return self._answered(header_of(frame.head), ERROR, Hl7Error(
                207, "", f"message of {frame.oversized} bytes exceeds the limit of {settings.max_message_bytes}"), ours)
        try:
            message = parse(frame.message, settings.default_charset)
        except Hl7Error as exc:
            return self._answered(header_of(frame.message), exc.acknowledgment, exc, ours)
        try:
            application, facility = message.sender
            if not settings.admits(application, facility, address):
                raise Hl7Error(103, "MSH^1^3^1^1", "sending application and facility are not allowed here", REJECT)
            change = adt.change_of(message, self._trusted, self._test_identities)
            if await self._applied_before(change):
                self._metrics.hl7_messages.labels(change.trigger, "duplicate").inc()
                return acknowledgment(message, ACCEPT, control_id=ours)
            await self._publish(adt.AdtRecord(change, frame.message, time.time()))
        except Hl7Error as exc:
            return self._answered(message, exc.acknowledgment, exc, ours)
        except PatientRefused as refused:
            return self._answered(message, ERROR, Hl7Error(refused.code, refused.location, str(refused)), ours)
        return self._answered(message, ACCEPT, None, ours)

    def _answered(self, request: Message | None, code: str, error: Hl7Error | None, ours: str) -> bytes:
        """Counted and logged by trigger (one of ours, else "other": a label a sender cannot invent) and the
        control ID cut short: nothing of unbounded size from the message reaches the metrics or the logs."""
        trigger = request.type[1] if request is not None else ""
        label = trigger if trigger in adt.TRIGGERS else "other"
        self._metrics.hl7_messages.labels(label, code).inc()
        extra = {"trigger": label, "acknowledgment": code,
                 "control_id": request.control_id[:_LOGGED] if request is not None else ""}
        if error is not None:
            log.warning("HL7 message not accepted", extra={**extra, "error_code": error.code,
                                                           "location": error.location, "reason": error.text})
        else:
            log.info("HL7 message acknowledged", extra=extra)
        return acknowledgment(request, code, error, control_id=ours, application=self._settings.application,
                              facility=self._settings.facility)

    async def _applied_before(self, change: adt.PatientChange) -> bool:
        """The index's answer to the change (raising PatientRefused), or False when it cannot answer in time."""
        if self._holdings is None:
            return False
        try:
            async with asyncio.timeout(self._settings.precheck_timeout_seconds):
                index = await self._holdings.index()
                outcome = await index.check_patient_change(change, time.time())
        except IndexRejected as exc:  # the values, not an outage: the patient role would refuse them too
            raise Hl7Error(207, "", "the patient index refused the message's values") from exc
        except (IndexFailure, OSError, TimeoutError) as exc:
            log.warning("patient index unavailable: message acknowledged unchecked",
                        extra={"error": type(exc).__name__, "control_id": change.control_id})
            return False
        return outcome.action == "duplicate"

    async def _publish(self, record: adt.AdtRecord) -> None:
        assert self._producer is not None
        try:
            async with asyncio.timeout(self._settings.publish_timeout_seconds):
                await self._producer.publish(self._topics.hl7, adt.KEY, record.message, record.headers())
        except RecordTooLarge as exc:
            raise Hl7Error(207, "", "the message is too large for the bus") from exc
        except (BusError, TimeoutError) as exc:
            raise Hl7Error(207, "", "the message could not be made durable now; send it again") from exc
