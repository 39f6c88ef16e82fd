"""Association establishment (PS3.8 section 7.1): who may associate, and which contexts we accept.

The PDUs are decoded and encoded with pynetdicom's codecs and presentation contexts negotiated with its
``negotiate_as_acceptor``; the policy (AE allow-list, called AE, limits, user identity) is ours, given as values:
which contexts follow from the registered services (``service.ServiceRegistry``).

The transfer syntax of a context is ours to choose among those proposed (PS3.8 7.1.1.14). Since instances are
stored as received, the choice decides what is stored: the requestor's order is followed, so its own encoding
(usually proposed first) is kept and a compressed image stays compressed, except that Implicit VR Little Endian
and the retired Explicit VR Big Endian come last (implicit VR loses the VR of private attributes). A configured
preference list, per calling AE or for all, comes before that order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from gateway.dicom.identity import Authenticator, UserIdentity
from gateway.dicom.service import Caller

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"
IMPLEMENTATION_VERSION = "DICOMGW_010"
_FIXED_FIELDS_END = 74
"""PDU header (6) and the fixed fields of an A-ASSOCIATE-RQ (68: version, called and calling AE, reserved)."""

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)
REJECT_TOO_MANY = (0x02, 0x03, 0x02)
REJECT_USER_IDENTITY = (0x01, 0x02, 0x01)
"""PS3.7 D.3.3.7: an identity that is not accepted: rejected-permanent, service-provider (ACSE), no reason."""

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
UNCOMPRESSED = (IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG)
LAST_RESORT = (IMPLICIT_LITTLE, EXPLICIT_BIG)


def choose_transfer_syntax(proposed: Sequence[str], supported: Sequence[str],
                           preference: Sequence[str] = ()) -> str | None:
    """The transfer syntax to accept among ``proposed`` (in the requestor's order): the first of ``preference``
    proposed, else the first proposed that is not a last resort, else the first proposed; only ``supported``."""
    candidates = [ts for ts in proposed if ts in supported]
    for wanted in preference:
        if wanted in candidates:
            return wanted
    return next((ts for ts in candidates if ts not in LAST_RESORT), candidates[0] if candidates else None)


@dataclass(frozen=True, slots=True)
class AcceptorPolicy:
    """Who may associate with the acceptor, and within which limits."""

    ae_title: str
    max_associations: int
    max_pdu_length: int
    """Largest P-DATA-TF we accept; advertised in our A-ASSOCIATE-AC."""
    identify: Callable[[str, str], Caller | None] | None = None
    """(calling AE title, peer IP) -> the allowed caller, or None when not allowed; no function: anyone may."""
    transfer_syntax_preference: tuple[str, ...] = ()
    """Preferred transfer syntaxes for callers without their own (``Caller.transfer_syntax_preference``)."""
    authenticator: Authenticator = field(default_factory=Authenticator)
    max_associations_per_ae: int | None = None
    """How many of ``max_associations`` one calling AE title may hold (unless its Caller says otherwise)."""


class Occupancy:
    """The associations an acceptor holds, in all and per calling AE title, so that one sender (or one that
    spoofs its title) cannot hold them all. Counted from acceptance: connections that never associate do not
    fill the caps."""

    def __init__(self) -> None:
        self.total = 0
        self._by_ae: dict[str, int] = {}

    def of(self, calling_ae: str) -> int:
        return self._by_ae.get(calling_ae, 0)

    def admit(self, calling_ae: str) -> Callable[[], None]:
        """Count an accepted association; returns what to call when it ends."""
        self.total += 1
        self._by_ae[calling_ae] = self.of(calling_ae) + 1

        def release() -> None:
            self.total -= 1
            remaining = self._by_ae.pop(calling_ae, 1) - 1
            if remaining:
                self._by_ae[calling_ae] = remaining

        return release


@dataclass(frozen=True, slots=True)
class Accepted:
    pdu: bytes
    calling_ae: str
    called_ae: str
    peer_max_pdu: int
    """Largest P-DATA-TF the requestor accepts from us (0 = unlimited)."""
    contexts: dict[int, str] = field(default_factory=dict)
    """Accepted presentation context ID -> transfer syntax UID."""
    abstract_syntaxes: dict[int, str] = field(default_factory=dict)
    as_scu: frozenset[int] = frozenset()
    """Context IDs on which we may send requests: the requestor took the SCP role (SCP/SCU Role Selection)."""
    caller: Caller | None = None
    user: str = ""
    """Who the requestor's User Identity said it is, once accepted ("" when none was sent or checked)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    pdu: bytes
    reason: str
    calling_ae: str
    called_ae: str


def reject_pdu(result: int, source: int, diagnostic: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _ae_title(field: bytes) -> str:
    return field.decode("ascii", "replace").strip()


def negotiate(pdu: bytes, policy: AcceptorPolicy, contexts: Callable[[Sequence[str]], Sequence[PresentationContext]],
              peer_ip: str, occupancy: Occupancy) -> Accepted | Rejected:
    """Answer an A-ASSOCIATE-RQ PDU (whole, header included). Raises ValueError if it does not decode.

    ``contexts`` gives what the acceptor accepts of the abstract syntaxes proposed; ``occupancy`` counts the
    associations already accepted, in all and per calling AE title. Called and
    calling AE titles are checked from their fixed places in the PDU (PS3.8 9.3.2) before the rest is decoded,
    so a large request from a caller that may not associate costs nothing."""
    if len(pdu) < _FIXED_FIELDS_END:
        raise ValueError("A-ASSOCIATE-RQ does not decode: shorter than its fixed fields")
    called, calling = _ae_title(pdu[10:26]), _ae_title(pdu[26:42])

    def rejected(rsd: tuple[int, int, int], reason: str) -> Rejected:
        return Rejected(reject_pdu(*rsd), reason, calling, called)

    if called != policy.ae_title:
        return rejected(REJECT_CALLED_AE, "called AE title not recognised")
    caller = policy.identify(calling, peer_ip) if policy.identify is not None else None
    if policy.identify is not None and caller is None:
        return rejected(REJECT_CALLING_AE, "calling AE title or its address not allowed")
    request = A_ASSOCIATE_RQ()
    try:
        request.decode(pdu)
        primitive = request.to_primitive()
    except Exception as exc:
        raise ValueError(f"A-ASSOCIATE-RQ does not decode: {exc}") from exc
    if not request.protocol_version & 0x0001:
        return rejected(REJECT_PROTOCOL_VERSION, "protocol version not supported")
    if str(primitive.application_context_name) != APPLICATION_CONTEXT:
        return rejected(REJECT_APPLICATION_CONTEXT, "application context name not supported")
    if occupancy.total >= policy.max_associations:
        return rejected(REJECT_TOO_MANY, "too many associations open")
    per_ae = caller.max_associations if caller is not None and caller.max_associations else \
        policy.max_associations_per_ae
    if per_ae is not None and occupancy.of(calling) >= per_ae:
        return rejected(REJECT_TOO_MANY, "too many associations open from this calling AE")

    peer_max_pdu = 0
    roles: dict[str, tuple[bool | None, bool | None]] = {}
    identity: UserIdentity | None = None
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max_pdu = item.maximum_length_received or 0
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None:
            roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
        elif isinstance(item, UserIdentityNegotiation) and item.user_identity_type is not None:
            identity = UserIdentity(item.user_identity_type, item.primary_field or b"", item.secondary_field or b"",
                                    bool(item.positive_response_requested))
    verdict = policy.authenticator.judge(identity)
    if verdict.refusal:
        return rejected(REJECT_USER_IDENTITY, f"user identity refused: {verdict.refusal}")

    proposed = primitive.presentation_context_definition_list
    acceptable = list(contexts([str(cx.abstract_syntax) for cx in proposed]))
    results, role_items = negotiate_as_acceptor(proposed, acceptable, roles)  # type: ignore[arg-type]
    accepted = [cx for cx in results if cx.result == 0x00]
    preference = (caller.transfer_syntax_preference if caller is not None and caller.transfer_syntax_preference
                  else policy.transfer_syntax_preference)
    supported = {cx.abstract_syntax: cx.transfer_syntax for cx in acceptable}
    requested = {cx.context_id: cx.transfer_syntax for cx in proposed}
    for cx in accepted:
        chosen = choose_transfer_syntax(requested[cx.context_id], supported[cx.abstract_syntax], preference)
        if chosen is not None:
            cx.transfer_syntax = [chosen]

    answer = A_ASSOCIATE()
    answer.application_context_name = APPLICATION_CONTEXT
    answer.calling_ae_title = primitive.calling_ae_title
    answer.called_ae_title = primitive.called_ae_title
    answer.result = 0x00
    answer.result_source = 0x01
    answer.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = policy.max_pdu_length
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    answer.user_information = [max_length, class_uid, version, *role_items]
    if verdict.response is not None:
        identity_ac = UserIdentityNegotiation()
        identity_ac.server_response = verdict.response
        answer.user_information.append(identity_ac)
    pdu_ac = A_ASSOCIATE_AC()
    pdu_ac.from_primitive(answer)
    return Accepted(
        pdu=bytes(pdu_ac.encode()),
        calling_ae=calling,
        called_ae=called,
        peer_max_pdu=peer_max_pdu,
        contexts={cx.context_id: str(cx.transfer_syntax[0]) for cx in accepted if cx.context_id is not None},
        abstract_syntaxes={
            cx.context_id: str(cx.abstract_syntax) for cx in accepted if cx.context_id is not None
        },
        as_scu=frozenset(cx.context_id for cx in accepted if cx.context_id is not None and cx.as_scu),
        caller=caller,
        user=verdict.user,
    )

