"""The index port: what the gateway has stored, one current row per SOP Instance UID, every version kept.

Two adapters implement it with the same semantics: ``postgres`` (production) and ``sqlite`` (one machine);
one contract suite checks both. ``record_instance`` is the single write: one transaction that either
inserts a new instance, recognises a re-delivery (same SOP Instance UID and same hash as received), keeps a
variant (the same attributes in another transfer syntax: kept beside the current row, not a new version), or
applies the correction policy to a changed instance. The decision is made once, here, in ``resolve``;
adapters only read the current row, lock, and persist what it returns.

The index assigns versions (the ``version`` of a row passed in is ignored), and a row is current unless its
status is ``replaced``. Patient, study and series rows follow the newest stored instance; a quarantined
instance creates them when missing but never changes them, since its header is not trusted.

It also keeps what later stages must not forget across restarts: when each study last received an instance
and whether it has been declared stable since, each storage-commitment transaction with its references (a
request that came in several bus records is gathered part by part until it is whole), and
every outbound notification (commitment report, IAN) with its delivery state, attempts and last error. A
notification is claimed with a lease, so several notify workers share the queue and a worker killed while
sending leaves it to be sent again once the lease runs out. Forwarding (``Forwarding``, SQL in
``forwarding.py``) keeps each instance's state at each destination the same way. Queries and retrieves read
it through ``Catalogue`` (SQL in ``search.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, Self

from gateway.core.iocm import DEFAULT_RESEND, Resend, Title
from gateway.core.query import Query
from gateway.core.study import InstanceStatus as InstanceStatus  # re-exported: callers find it here too
from gateway.core.study import Patient, StudyInstance

if TYPE_CHECKING:
    from gateway.core.audit import AuditRecord
    from gateway.core.iocm import RejectionNote
    from gateway.hl7.adt import PatientChange
    from gateway.index import rejections
    from gateway.index.audit_log import AuditEntry
    from gateway.index.patients import Applied


class IndexFailure(Exception):
    """The index failed; ``retriable`` says whether the same call may succeed later. The message names the
    driver's error class and code, never a value, since values may be patient data."""

    retriable = False


class IndexUnavailable(IndexFailure):
    """The database is down, overloaded or restarting; the same call may succeed later."""

    retriable = True


class IndexRejected(IndexFailure):
    """The database refused this statement for good: a value it cannot hold (a NUL in text), a constraint."""


class CorrectionPolicy(StrEnum):
    """What to do when an instance arrives again with the same SOP Instance UID but different content."""

    REPLACE = "replace"
    REJECT = "reject"
    KEEP_FIRST = "keep-first"


class Outcome(StrEnum):
    INSERTED = "inserted"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"
    REJECTED = "rejected"
    KEPT_FIRST = "kept-first"
    VARIANT = "variant"
    """The same attributes in another transfer syntax: kept as a variant of the current version."""
    IGNORED = "ignored"
    """A rejected instance sent again, dropped as its rejection's title says (IOCM)."""
    REFUSED = "refused"
    """A rejected instance sent again that its title refuses (0xA771), when the receiver could not check it."""
    RESTORED = "restored"
    """A rejected instance sent again that its title restores: visible again, the rejection lifted."""


@dataclass(frozen=True, slots=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    modality: str
    study_date: str
    study_time: str
    study_description: str
    series_number: int | None
    instance_number: int | None
    transfer_syntax_uid: str
    storage_key: str
    size: int
    sha256: str
    received_sha256: str
    """Hash of the data set as received; differs from ``sha256`` when coercion rewrote the header."""
    source_ae: str
    source_organization_oid: str
    status: InstanceStatus
    findings: tuple[dict[str, str], ...]
    """Validation findings, as ``Finding.to_dict`` gives them."""
    instance_id: str
    """The bus's per-receive id (``InstanceEnvelope.instance_id``), not a database key."""
    received_at: datetime
    stored_at: datetime
    version: int = 1
    patient_attributes: dict[str, str] = field(default_factory=dict)
    """PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex as the instance had them."""
    study_id: str = ""
    referring_physician_name: str = ""
    issuer_of_accession_number: str = ""
    attributes_sha256: str = ""
    """Of the attributes whatever the encoding (``dataset.attributes_digest``): equal for a re-send in another
    transfer syntax, which is then a variant, not a correction. Empty when the header did not parse."""

    def __post_init__(self) -> None:
        if self.received_at.tzinfo is None or self.stored_at.tzinfo is None:
            raise ValueError("received_at and stored_at must be timezone-aware")

    def study_instance(self) -> StudyInstance:
        """The value builders take."""
        return StudyInstance(
            self.sop_instance_uid, self.sop_class_uid, self.study_instance_uid, self.series_instance_uid,
            self.series_number, self.instance_number, self.modality, self.status, self.version, self.stored_at,
            self.patient_id, self.issuer_of_patient_id, self.accession_number, self.study_date, self.study_time,
            self.study_description, self.source_organization_oid, dict(self.patient_attributes), self.study_id,
            self.referring_physician_name, self.issuer_of_accession_number)

    def variant(self) -> InstanceVariant:
        return InstanceVariant(self.sop_instance_uid, self.study_instance_uid, self.version,
                               self.transfer_syntax_uid, self.storage_key, self.size, self.sha256,
                               self.received_sha256, self.instance_id, self.source_ae, self.received_at,
                               self.stored_at)


@dataclass(frozen=True, slots=True)
class InstanceVariant:
    """A copy of an instance version in another transfer syntax (``Outcome.VARIANT``), kept with its object."""

    sop_instance_uid: str
    study_instance_uid: str
    version: int
    """The version it is a variant of."""
    transfer_syntax_uid: str
    storage_key: str
    size: int
    sha256: str
    received_sha256: str
    instance_id: str
    source_ae: str
    received_at: datetime
    stored_at: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """An instance a rejection note withdrew, or will withdraw when it arrives (IOCM)."""

    sop_instance_uid: str
    title: Title
    note_uid: str
    prior_status: InstanceStatus | None
    """Its status before it was withdrawn; None while it is not held."""


@dataclass(frozen=True, slots=True)
class RecordResult:
    outcome: Outcome
    current: InstanceRow
    """The row that is current after the call."""
    previous: InstanceRow | None
    """The row it replaced (now ``replaced``) or conflicted with; None for an insert or a duplicate."""
    rejection: Rejection | None = None
    """The rejection in force for the instance (the new row is ``rejected`` under it), or the one this call
    lifted (``RESTORED``, or a restoring title's re-send stored as a new version)."""

    @property
    def written(self) -> bool:
        return self.outcome in (Outcome.INSERTED, Outcome.REPLACED)

    @property
    def kept(self) -> bool:
        """The row's object stays: it is the current version or a variant of it."""
        return self.written or self.outcome is Outcome.VARIANT


def resolve(current: InstanceRow | None, row: InstanceRow, policy: CorrectionPolicy, rejection: Rejection | None = None,
            resend: Mapping[Title, Resend] = DEFAULT_RESEND) -> RecordResult:
    """Decide ``record_instance`` for every adapter, given the current row and the instance's rejection read under
    the UID's write lock. A re-delivery of the receive that is current is a duplicate whatever its rejection says.
    An instance whose note came first is stored ``rejected``; one rejected since and sent again is ignored,
    refused or restored as ``resend`` says for its title."""
    if row.status not in (InstanceStatus.STORED, InstanceStatus.QUARANTINED):
        raise ValueError("a new instance is recorded as stored or quarantined, never as replaced or rejected")
    if rejection is None or (current is not None and current.instance_id == row.instance_id):
        return _resolve(current, row, policy)
    if rejection.prior_status is None:  # the note came first
        if current is None:
            return RecordResult(Outcome.INSERTED, replace(row, version=1, status=InstanceStatus.REJECTED), None,
                                rejection)
        return _resolve(current, row, policy)  # held already although the note found it not: as if no note
    action = resend.get(rejection.title, Resend.REJECT)
    if action is not Resend.RESTORE:
        # an instance deleted after its retention expired has no row: the dropped copy stands for it
        kept = current if current is not None else replace(row, status=InstanceStatus.REJECTED, storage_key="")
        return RecordResult(Outcome.IGNORED if action is Resend.IGNORE else Outcome.REFUSED, kept, None, rejection)
    restored = None if current is None else replace(current, status=rejection.prior_status)
    result = _resolve(restored, row, policy)
    if not result.written:  # the same instance, or a change the correction policy does not take: the held one
        return RecordResult(Outcome.RESTORED, result.current, None, rejection)
    return replace(result, rejection=rejection)


def _resolve(current: InstanceRow | None, row: InstanceRow, policy: CorrectionPolicy) -> RecordResult:
    if current is None:
        return RecordResult(Outcome.INSERTED, replace(row, version=1), None)
    if current.received_sha256 == row.received_sha256:
        return RecordResult(Outcome.DUPLICATE, current, None)
    if (row.attributes_sha256 and row.attributes_sha256 == current.attributes_sha256
            and row.transfer_syntax_uid != current.transfer_syntax_uid):
        return RecordResult(Outcome.VARIANT, current, None)
    if policy is CorrectionPolicy.REPLACE:
        return RecordResult(Outcome.REPLACED, replace(row, version=current.version + 1),
                            replace(current, status=InstanceStatus.REPLACED))
    outcome = Outcome.REJECTED if policy is CorrectionPolicy.REJECT else Outcome.KEPT_FIRST
    return RecordResult(outcome, current, current)


@dataclass(frozen=True, slots=True)
class StudySummary:
    """A study as a list shows it: its current instances' common attributes, how many there are, and when the
    last of them was received (UTC, ISO 8601): lists show the most recently received first."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    instances: int
    last_received_at: str


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    """Out of attempts: in the dead-letter topic until re-driven."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbound notification to one AE; times are UNIX epoch seconds."""

    delivery_id: str
    kind: str
    """``commitment-report`` or ``ian``."""
    subject: str
    """The transaction UID of a report, the Study Instance UID of an IAN."""
    target_ae: str
    payload: dict[str, Any]
    created_at: float
    next_attempt_at: float
    source: dict[str, Any]
    """The bus record that caused it (topic, partition, offset), which a re-drive publishes again."""
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    last_error: str = ""
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class CommitmentItem:
    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None = None
    """Meaningful once the transaction is decided: None means committed."""


@dataclass(frozen=True, slots=True)
class Commitment:
    """A storage-commitment transaction as the notify worker tracks it; times are UNIX epoch seconds."""

    transaction_uid: str
    requester_ae: str
    requested_at: float
    deadline: float
    """Instances not stored by then are reported as failed."""
    items: tuple[CommitmentItem, ...]
    source: dict[str, Any]
    decided_at: float | None = None


@dataclass(frozen=True, slots=True)
class CommitmentPart:
    """One bus record of a storage-commitment request published in several. A request is its Transaction UID
    and request time: a requester sending it again (the same Transaction UID) makes another request."""

    transaction_uid: str
    requested_at: float
    part: int
    """From 1 to ``parts``."""
    parts: int
    items: tuple[CommitmentItem, ...]
    """This part's references, in the request's order."""


@dataclass(frozen=True, slots=True)
class StudyActivity:
    study_instance_uid: str
    last_instance_at: float
    stable_at: float | None
    generation: int
    """Counts the times the study became active again after it had been declared stable."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A manifest registered with XDS for one generation of a study; times are UNIX epoch seconds."""

    study_instance_uid: str
    generation: int
    document_unique_id: str
    """The KOS SOP Instance UID, the DocumentEntry's uniqueId."""
    entry_uuid: str
    submission_set_unique_id: str
    instances: int
    registered_at: float
    replaces_entry_uuid: str | None
    current: bool = True


class InstanceIndex(Protocol):
    """What is stored: one current row per SOP Instance UID, every version kept."""

    async def record_instance(self, row: InstanceRow, policy: CorrectionPolicy,
                              resend: Mapping[Title, Resend] = DEFAULT_RESEND) -> RecordResult:
        """Record a stored (or quarantined) instance in one transaction, as ``resolve`` decides."""

    async def record_instances(self, rows: Sequence[InstanceRow], policy: CorrectionPolicy,
                               resend: Mapping[Title, Resend] = DEFAULT_RESEND) -> list[RecordResult]:
        """Record several instances in one transaction, in order, each decided as if recorded alone after the
        ones before it: the store stage's poll batch costs one commit, not one per instance. All or nothing:
        a row the index refuses refuses the batch (``IndexRejected``), and the caller records them singly."""

    async def current_instance(self, sop_instance_uid: str) -> InstanceRow | None: ...

    async def current_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRow]:
        """The current rows of those of the instances the index has, by SOP Instance UID: one look-up for a
        storage-commitment transaction's references, not one per reference."""

    async def instance_versions(self, sop_instance_uid: str) -> list[InstanceRow]:
        """Every version of the instance, oldest first, replaced ones included."""

    async def study_variants(self, study_instance_uid: str) -> list[InstanceVariant]:
        """The variants kept of the study's instances, in the order they came."""

    async def study_instances(self, study_instance_uid: str, include_quarantined: bool = False,
                              include_replaced: bool = False, include_rejected: bool = False) -> list[InstanceRow]:
        """The rows of a study by series and instance number: stored ones, and on request the quarantined, the
        replaced (prior versions) and the rejected."""

    async def find_studies(self, patient_id: str = "", accession_number: str = "", limit: int = 100) -> list[StudySummary]:
        """Studies with current instances, the most recently received first; empty filters match everything."""


class StudyClock(Protocol):
    """When each study last received an instance, and whether it has been declared stable since."""

    async def study_activity(self, study_instance_uid: str) -> StudyActivity | None: ...

    async def due_stable_studies(self, quiet_since: float, limit: int = 100) -> list[StudyActivity]:
        """Studies not declared stable whose last instance was recorded before ``quiet_since``."""

    async def mark_stable(self, activity: StudyActivity, at: float) -> bool:
        """Declare the study stable unless an instance was recorded since ``activity`` was read."""

    async def hasten_stability(self, study_instance_uid: str) -> None:
        """Make a study due for stability now (a storage commitment covered it)."""


class CommitmentLog(Protocol):
    """Storage-commitment transactions, their references and, once decided, each one's outcome."""

    async def add_commitment(self, commitment: Commitment) -> bool:
        """Record a new transaction; False when its Transaction UID is already known."""

    async def add_commitment_part(self, part: CommitmentPart) -> tuple[CommitmentItem, ...] | None:
        """Keep one part of a request until the request is whole, in one transaction; the request's references in
        order once every part is kept (they come in any order, each as often as the bus delivers it), else None.
        When the request is a transaction already (same Transaction UID and request time: a part delivered or
        re-driven again), the part is not kept and the transaction's references are returned at once."""

    async def drop_commitment_parts(self, transaction_uid: str, requested_at: float) -> None:
        """Forget the parts kept of a request, once it is whole and acted on."""

    async def expire_commitment_parts(self, requested_before: float) -> list[str]:
        """Forget the parts of requests made before ``requested_before``; the Transaction UIDs whose parts went."""

    async def commitment(self, transaction_uid: str) -> Commitment | None: ...

    async def expired_commitments(self, now: float, limit: int = 100) -> list[Commitment]:
        """Transactions not yet decided whose deadline has passed by ``now``, earliest first."""

    async def commitments_waiting_for(self, sop_instance_uids: list[str]) -> list[str]:
        """Transaction UIDs of undecided transactions that reference any of the instances."""

    async def study_commitments(self, study_instance_uid: str, limit: int = 20) -> list[Commitment]:
        """The transactions that named any instance of the study the index holds, the latest request first."""

    async def overdue_commitments(self, now: float, report_kind: str, limit: int = 100) -> list[Commitment]:
        """Transactions past their deadline whose report (the delivery of ``report_kind``) has not been
        delivered: undecided, or decided with the report pending or failed; earliest deadline first."""

    async def waiting_commitments(self, report_kind: str) -> list[float]:
        """When each transaction not yet reported was requested: undecided, or its report still pending."""

    async def decide_commitment(self, transaction_uid: str, items: tuple[CommitmentItem, ...],
                                report: Delivery, at: float) -> bool:
        """Record the outcome of each reference and queue the report, in one transaction; False if already
        decided."""


class OutboundQueue(Protocol):
    """Outbound notifications with their delivery state, claimed with a lease by the workers sending them."""

    async def put_delivery(self, delivery: Delivery, replace: bool) -> None:
        """Queue a delivery; an existing one with its id is left alone, or with ``replace`` queued anew."""

    async def claim_deliveries(self, now: float, lease_seconds: float, limit: int,
                               kinds: tuple[str, ...]) -> list[Delivery]:
        """Pending deliveries of ``kinds`` due by ``now`` and not leased, leased to the caller until
        ``now + lease``."""

    async def finish_attempt(self, delivery_id: str, state: DeliveryState, error: str, next_attempt_at: float,
                             at: float) -> None:
        """Record one attempt: delivered, pending again at ``next_attempt_at``, or failed for good."""

    async def deliveries(self, subject: str) -> list[Delivery]: ...


class Registrations(Protocol):
    """The XDS manifests registered for each study generation."""

    async def record_registration(self, registration: Registration) -> None:
        """Record a registered manifest as the study's current one; the previous stays, no longer current."""

    async def retire_registration(self, study_instance_uid: str) -> None:
        """The study has no current manifest any more (its entry was deprecated: every instance was withdrawn)."""

    async def registrations(self, study_instance_uid: str) -> list[Registration]:
        """The study's registrations, newest generation first."""


class ForwardState(StrEnum):
    QUEUED = "queued"
    """To be sent (again) once ``due_at`` comes."""
    SENT = "sent"
    """Stored by the destination, its storage commitment not yet requested."""
    REQUESTED = "requested"
    """In a commitment request (``transaction_uid``) waiting for the destination's report."""
    COMMITTED = "committed"
    DELIVERED = "delivered"
    """Stored by a destination that is not asked to commit."""
    FAILED = "failed"
    """Given up, with its reason: until re-driven."""


FINISHED_FORWARD_STATES = (ForwardState.COMMITTED, ForwardState.DELIVERED)


@dataclass(frozen=True, slots=True)
class ForwardItem:
    """One instance (its current version) to be sent to one destination; times are UNIX epoch seconds."""

    destination: str
    sop_instance_uid: str
    version: int
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    """As stored."""
    storage_key: str
    size: int
    source: dict[str, Any]
    """The bus record that queued it (topic, partition, offset)."""
    state: ForwardState = ForwardState.QUEUED
    queued_at: float = 0.0
    due_at: float = 0.0
    attempts: int = 0
    """Failed attempts in a row (refused connections, 0xA7xx)."""
    sends: int = 0
    """Times the destination stored it."""
    commit_requests: int = 0
    """Commitment requests since it was last sent."""
    transaction_uid: str = ""
    transfer_syntax_sent: str = ""
    last_error: str = ""
    sent_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """What one attempt made of an item of the given version, next due at ``due_at``: ``stored`` when the
    destination took it (state ``SENT``, or ``DELIVERED`` without commitment), ``failed_attempt`` when the
    attempt counts toward the retry budget (``QUEUED``, ``FAILED``, or ``SENT`` whose request did not go
    through); neither for an item handed back untried."""

    sop_instance_uid: str
    version: int
    state: ForwardState
    due_at: float = 0.0
    error: str = ""
    transfer_syntax_sent: str = ""
    stored: bool = False
    failed_attempt: bool = False


@dataclass(frozen=True, slots=True)
class ForwardTransaction:
    """A storage-commitment request we sent; ``event_type`` 0 means it expired without a report."""

    transaction_uid: str
    destination: str
    study_instance_uid: str
    instances: int
    requested_at: float
    deadline: float
    reported_at: float | None = None
    event_type: int | None = None


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    name: str
    paused: bool = False
    failures: int = 0
    """Attempts in a row that could not reach it."""
    backoff_until: float = 0.0
    last_error: str = ""
    last_error_at: float | None = None
    last_success_at: float | None = None
    items: dict[str, int] = field(default_factory=dict)
    """Instances by ``ForwardState`` value."""
    oldest_waiting_since: float | None = None
    """When the oldest instance not yet finished (queued, sent, requested) was queued."""


class Forwarding(Protocol):
    """Each stored instance's state at each destination it is forwarded to, claimed study by study with a lease."""

    async def enqueue_forwards(self, items: Sequence[ForwardItem], now: float, delay: float, max_delay: float) -> int:
        """Queue items, due after ``delay``, unless the destination has (or is getting) that version already; a
        newer version, or a failed item, is queued anew. The queued items of their studies wait ``delay`` more,
        at most ``max_delay`` after they were queued, so a study goes together. Returns how many were queued."""

    async def claim_forwards(self, destination: str, now: float, lease_seconds: float,
                             limit: int) -> list[ForwardItem]:
        """Lease the due items (queued, or sent and awaiting a commitment request) of one study for the
        destination, at most ``limit``, oldest first; none when nothing is due."""

    async def record_forward_results(self, destination: str, results: Sequence[ForwardResult], at: float) -> None:
        """Record attempts and release their leases; a result for a version no longer queued is ignored."""

    async def request_forward_commitment(self, transaction: ForwardTransaction,
                                         sop_instance_uids: Sequence[str]) -> None:
        """Before the N-ACTION: the transaction, and its instances ``requested`` under it."""

    async def cancel_forward_commitment(self, transaction_uid: str, due_at: float, error: str) -> None:
        """The N-ACTION did not go through: its instances are ``sent`` again, to be requested at ``due_at``."""

    async def apply_forward_report(self, transaction_uid: str, committed: Sequence[str],
                                   failed: Sequence[tuple[str, str, bool]], at: float, resend_limit: int,
                                   resend_at: float) -> tuple[ForwardTransaction, int] | None:
        """Apply a report: committed instances are done; failed ones ``(uid, reason, permanent)`` are queued to
        be sent again at ``resend_at`` while they were sent fewer than ``resend_limit`` times, else failed.
        Returns the transaction as it was before and how many instances this report committed; None when the
        transaction is unknown. A report applied before changes nothing."""

    async def expire_forward_commitments(self, now: float, requests: int, resend_limit: int,
                                         limit: int = 100) -> list[ForwardTransaction]:
        """Transactions past their deadline without a report: their instances are requested again (fewer than
        ``requests`` requests so far), sent again (fewer than ``resend_limit`` sends), or failed."""

    async def forward_destinations(self, finished: bool = True) -> list[DestinationStatus]:
        """Every destination that has items or a recorded state; without ``finished``, committed and delivered
        items are not counted (a cheap look for metrics: they are most of the table)."""

    async def update_forward_destination(self, name: str, at: float, *, paused: bool | None = None,
                                         error: str | None = None, backoff_until: float = 0.0,
                                         succeeded: bool = False) -> None:
        """Pause or resume it, or record that it could not be reached (``error``) or was reached."""

    async def forward_items(self, *, study_instance_uid: str = "", destination: str = "",
                            state: ForwardState | None = None, limit: int = 1000) -> list[ForwardItem]: ...

    async def withdraw_forwards(self, study_instance_uid: str, sop_instance_uids: Collection[str],
                                now: float) -> list[str]:
        """Instances withdrawn (IOCM): not sent anywhere any more; the destinations that have any of them."""
        ...

    async def redrive_forwards(self, now: float, *, destination: str = "", study_instance_uid: str = "",
                               resend: bool = False) -> int:
        """Queue failed items again (``resend``: every item, committed ones too), for one destination or study or
        all; returns how many."""


@dataclass(frozen=True, slots=True)
class Stored:
    """Where a matched instance's object is, for a retrieve."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    study_instance_uid: str
    series_instance_uid: str
    patient: Patient | None = None
    """The current patient when it differs from the one the object was stored with: written over it on the way
    out (``gateway.dicom.transcode.with_patient``)."""


class Catalogue(Protocol):
    """Query/retrieve over the current stored instances (``gateway.index.search``)."""

    async def search(self, query: Query, returns: Sequence[str] = (), *, after: Any = None, limit: int = 100,
                     offset: int = 0) -> list[tuple[Any, dict[str, Any], Stored | None]]:
        """One page of matches: (the unique key to continue ``after``, values by keyword, for the IMAGE level
        where the object is). ``returns`` names the computed keys wanted (counts, Modalities in Study)."""
        ...

    async def count_matches(self, query: Query, up_to: int) -> int:
        """How many match, counted no further than ``up_to``."""
        ...


class Patients(Protocol):
    """Patient identity from HL7 ADT (``gateway.index.patients``)."""

    async def apply_patient_change(self, change: PatientChange, received_at: float, now: float,
                                   touch: bool = False) -> Applied:
        """Apply a change once (a message applied before is a ``duplicate``, with the studies it changed); raises
        ``PatientRefused`` when what the index holds contradicts it (a merged identifier, a new identifier that
        exists). ``touch``: the studies changed become stable again, in the same transaction (re-registration)."""
        ...

    async def check_patient_change(self, change: PatientChange, now: float) -> Applied:
        """What ``apply_patient_change`` would do or raise, with nothing written."""
        ...

    async def patient_record(self, patient_id: str, issuer: str = "") -> list[dict[str, Any]]: ...

    async def patients_of_studies(self, study_instance_uids: Sequence[str]) -> dict[str, Patient]:
        """Each study's current patient: what objects served or built later carry."""
        ...

    async def patients_to_write(self, sop_instance_uids: Sequence[str]) -> dict[str, Patient]:
        """The current patient of those instances that were stored with another (to write over them)."""
        ...


class Rejections(Protocol):
    """IHE IOCM rejection notes and the instances they withdraw (``gateway.index.rejections``)."""

    async def apply_rejection(self, note: RejectionNote, received_sha256: str, source_ae: str, now: float,
                              delete_after: float | None) -> rejections.Applied:
        """Apply a note once, in one transaction (the same note again is a ``duplicate``, with what it withdrew);
        raises ``NoteRefused`` when what the index holds contradicts it."""
        ...

    async def check_rejection(self, note: RejectionNote, received_sha256: str, now: float) -> rejections.Applied:
        """What ``apply_rejection`` would do or raise, with nothing written."""
        ...

    async def rejections_of(self, sop_instance_uids: Sequence[str]) -> dict[str, Rejection]: ...

    async def rejections_since(self, since: float) -> list[tuple[str, Title, bool, float]]:
        """(SOP Instance UID, title, held, when) of the rejections made or changed from ``since`` on."""
        ...

    async def rejection_notes_of(self, study_instance_uid: str) -> set[str]: ...

    async def study_rejections(self, study_instance_uid: str) -> dict[str, Any]: ...

    async def expired_rejections(self, now: float, limit: int = 100) -> list[tuple[str, str]]: ...

    async def forget_instance(self, sop_instance_uid: str, now: float) -> list[str]: ...


class AuditLog(Protocol):
    """The local audit log (``gateway.index.audit_log``)."""

    async def log_audit(self, records: Sequence[AuditRecord]) -> None: ...

    async def audit_entries(self, patient_id: str, since: float, until: float, limit: int) -> list[AuditEntry]: ...

    async def purge_audit(self, before: float) -> None: ...


class Index(InstanceIndex, StudyClock, CommitmentLog, OutboundQueue, Registrations, Forwarding, Catalogue,
            Patients, Rejections, AuditLog, Protocol):
    """Every port at once: what an adapter implements. A consumer types against the ports it uses."""

    async def migrate(self) -> None:
        """Apply the pending schema migrations; safe to call from several processes at once."""

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
