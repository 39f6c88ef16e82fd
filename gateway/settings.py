"""Every setting of the gateway, parsed once at start-up and passed down.

Sources, strongest first: environment (``GATEWAY_`` prefix, ``__`` for nesting), secret files in
``GATEWAY_SECRETS_DIR`` (one file per setting, named like its environment variable, as Kubernetes
mounts a Secret), the YAML file given with ``--config``, then the defaults below. No other module
reads the environment.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from gateway.core.iocm import DEFAULT_RESEND, Resend, Title
from gateway.core.uid import is_uid
from gateway.hl7.message import CHARSETS

ENV_PREFIX = "GATEWAY_"
NESTED_DELIMITER = "__"
DEFAULT_SECRETS_DIR = Path("/run/secrets/dicom-gateway")
ROLES = ("receiver", "store", "register", "notify", "forward", "api", "hl7", "patient", "audit")
"""Roles this build can run; each worker role is added here when its stage exists."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AllowedAE(_Section):
    """A calling AE the receiver accepts, and the organisation later stages attribute its data to."""

    ae_title: str = Field(min_length=1, max_length=16)
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    organization: str = ""
    organization_oid: str = ""
    transfer_syntax_preference: tuple[str, ...] = ()
    """Transfer syntaxes to prefer from this AE, before ``dicom.transfer_syntax_preference``."""
    max_associations: int | None = Field(None, ge=1)
    """Associations this AE may hold at once; unset: ``dicom.max_associations_per_ae``."""
    permissions: frozenset[Literal["store", "query", "retrieve", "expire"]] = frozenset({"store"})
    """What it may do: C-STORE (and storage commitment), C-FIND, C-MOVE/C-GET, and send IOCM retention-expiry
    notes (113039, which delete). Query and retrieve show patient data and expiry deletes it, so they are only ever
    granted here, by name."""

    @field_validator("networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        """ipaddress says what is wrong with a network (host bits set, not an address); the union of the two
        network types would only say that it is neither."""
        if not isinstance(value, (list, tuple)):
            return value
        networks = []
        for network in value:
            try:
                networks.append(ipaddress.ip_network(network) if isinstance(network, str) else network)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return networks


class UserIdentitySettings(_Section):
    """DICOM User Identity Negotiation (PS3.7 D.3.3.7): usernames with passcodes, and JSON Web Tokens."""

    required: bool = False
    """Refuse associations that send no username/passcode or token (Kerberos and SAML are not supported)."""
    users: dict[str, SecretStr] = {}
    """Username -> passcode; an empty passcode lets the username alone (type 1) in. With neither users nor
    token keys, identities are taken at their word (and answered when the requestor asks)."""
    token_keys: tuple[SecretStr, ...] = ()
    """Keys that verify JWTs: HMAC secrets or PEM public keys (RS/ES/PS)."""
    token_audience: str | None = None
    token_issuer: str | None = None


class ServerTlsSettings(_Section):
    """A TLS listener's identity; enabled when a certificate is configured."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    """CAs client certificates must chain to; with it, clients may present one."""
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _complete(self) -> ServerTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CAs client certificates must chain to)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class TlsSettings(ServerTlsSettings):
    """The DICOM TLS listener, on its own port."""

    port: int = Field(2762, ge=1, le=65535)


class RemoteAE(_Section):
    """A peer the gateway opens associations to: storage-commitment requesters, IAN subscribers."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    """Connect with DICOM TLS, presenting ``dicom.tls`` cert_file/key_file and trusting its ca_file."""


class DicomSettings(_Section):
    """The edge receiver's upper layer, and the gateway's identity on outbound associations."""

    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    ae_title: str = Field("DICOMGW", min_length=1, max_length=16)
    allowed_aes: tuple[AllowedAE, ...] = ()
    max_associations: int = Field(64, ge=1)
    max_associations_per_ae: int = Field(32, ge=1)
    """Of ``max_associations``, how many one calling AE title may hold (``allowed_aes[].max_associations``
    overrides it per AE), so that one sender cannot shut out the others."""
    max_connections_per_peer: int = Field(32, ge=1)
    """Connections one IP address may hold open at once, associated or not; more are closed at once."""
    max_pdu_length: int = Field(262_144, ge=4096, le=0xFFFFFFFF)
    """Largest P-DATA-TF we accept; advertised in our A-ASSOCIATE-AC."""
    max_instance_bytes: int = Field(8 * 1024**3, ge=1024)
    transfer_syntax_preference: tuple[str, ...] = ()
    """Transfer syntaxes to accept first when a context proposes several; otherwise the requestor's order is
    followed with Implicit VR Little Endian and Explicit VR Big Endian last (see the conformance statement)."""
    extra_storage_sop_classes: tuple[str, ...] = ()
    """Private or newer storage SOP Class UIDs to accept beyond those pydicom's dictionary knows."""
    accept_any_storage_class: bool = False
    """Accept C-STORE of any SOP Class UID not known to be something other than storage."""
    user_identity: UserIdentitySettings = UserIdentitySettings()
    acse_timeout_seconds: float = Field(30.0, gt=0)
    dimse_timeout_seconds: float = Field(60.0, gt=0)
    network_timeout_seconds: float = Field(120.0, gt=0)
    """Idle time after which an open association is aborted."""
    publish_timeout_seconds: float = Field(30.0, gt=0)
    """How long a C-STORE waits for the bus before answering 0xA700."""
    processes: int = Field(1, ge=1, le=64)
    """Receiver processes sharing the DICOM port (SO_REUSEPORT); ``run --workers N`` sets it too."""
    reuse_port: bool = False
    """Set for every receiver process when there are several; not needed otherwise."""
    tls: TlsSettings = TlsSettings()
    tls_only: bool | None = None
    """With TLS configured, the plain DICOM port stays closed (unset or true), so that required client
    certificates protect something; false keeps both open."""
    remote_aes: tuple[RemoteAE, ...] = ()
    """Where the gateway connects to, by AE title (storage-commitment requesters, IAN subscribers)."""

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _uids(self) -> DicomSettings:
        lists = {"transfer_syntax_preference": self.transfer_syntax_preference,
                 "extra_storage_sop_classes": self.extra_storage_sop_classes}
        lists.update({f"allowed_aes {ae.ae_title} transfer_syntax_preference": ae.transfer_syntax_preference
                      for ae in self.allowed_aes})
        for name, uids in lists.items():
            bad = [uid for uid in uids if not is_uid(uid)]
            if bad:
                raise ValueError(f"{name}: not UIDs: {', '.join(bad)}")
        return self

    @model_validator(mode="after")
    def _unique_remote_aes(self) -> DicomSettings:
        titles = [remote.ae_title for remote in self.remote_aes]
        if len(titles) != len(set(titles)):
            raise ValueError("remote_aes: each AE title may appear once")
        return self

    @property
    def plain_port_open(self) -> bool:
        return not self.tls.enabled or self.tls_only is False

    def remote_ae(self, ae_title: str) -> RemoteAE | None:
        return next((remote for remote in self.remote_aes if remote.ae_title == ae_title), None)


API_ROLES = ("reader", "operator", "admin")
"""Each role may do what the ones before it may: read patient data; change state (re-drive); administer."""


class OidcSettings(_Section):
    """Bearer JWTs from the district's OpenID Connect provider, verified against its published keys."""

    issuer: str = ""
    """The provider's issuer URL (the ``iss`` tokens carry); empty: OpenID Connect off."""
    audience: str = ""
    """The ``aud`` a token must carry (the API's client id or resource indicator); required with an issuer."""
    jwks_url: str = ""
    """The provider's keys; empty: discovered from ``{issuer}/.well-known/openid-configuration``."""
    roles_claim: str = "roles"
    """The claim holding a token's roles (a list or a space-separated string); dots descend into objects,
    e.g. ``realm_access.roles``."""
    role_map: dict[str, Literal["reader", "operator", "admin"]] = {}
    """Claim value -> role; values named like a role map to it without an entry."""
    algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                                   "ES512", "EdDSA")
    clock_skew_seconds: float = Field(60.0, ge=0)
    keys_max_age_seconds: float = Field(3600.0, gt=0)
    """How long fetched keys are used before they are fetched again (an unknown key id fetches sooner)."""
    ca_file: Path | None = None
    """CAs the provider's HTTPS certificate must chain to; unset: the system's."""

    @model_validator(mode="after")
    def _audience(self) -> OidcSettings:
        if self.issuer and not self.audience:
            raise ValueError("an OpenID Connect issuer needs an audience (the aud tokens for this API carry)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


class HttpAuthSettings(_Section):
    """Who may call the API. With neither a tokens file nor OpenID Connect, an admin token is generated at
    first start into ``{data_dir}/api-token``: nothing that shows patient data is ever open."""

    tokens_file: Path | None = None
    """Static API tokens, one ``token role [name]`` per line (``#`` comments); re-read when it changes."""
    oidc: OidcSettings = OidcSettings()
    public_metrics: bool = True
    """Serve ``/metrics`` without a token (it holds counts and AE titles, no patient data); false: reader."""


class HttpSettings(_Section):
    """The API port: the operators' JSON API (authenticated), probes and metrics."""

    host: str = "127.0.0.1"
    """Bind address; ``0.0.0.0`` to serve other hosts (the container image and the chart set it)."""
    port: int = Field(8080, ge=0, le=65535)
    tls: ServerTlsSettings = ServerTlsSettings()
    """HTTPS on the API port."""
    auth: HttpAuthSettings = HttpAuthSettings()


class InternalSettings(_Section):
    """The internal port: routes one role calls on another (a commitment report handed to the receiver that
    holds the requester's association), behind a shared secret. Opened only by roles that have such routes."""

    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    advertised_url: str = ""
    """How the other roles reach this process's internal port (e.g. ``http://10.1.2.3:8081`` from the pod IP);
    empty: ``http://127.0.0.1:<port>``, right when every role runs in one process."""
    secret: SecretStr | None = None
    """Bearer secret every caller presents; unset: generated at first start into ``{data_dir}/internal-secret``
    (shared by processes with the same data directory)."""


class TopicSettings(_Section):
    instances: str = "dicomgw.instances"
    """Instance chunks and their final envelopes, keyed by Study Instance UID."""
    events: str = "dicomgw.events"
    dead_letter: str = "dicomgw.dead-letter"
    hl7: str = "dicomgw.hl7"
    """ADT messages the hl7 role accepted, in the order they were acknowledged (one key, one partition)."""
    audit: str = "dicomgw.audit"
    """Audit records, in the order they were written (one key, one partition); they name patients."""


class KafkaSettings(_Section):
    """Production bus. Every client setting that matters is explicit: aiokafka's defaults are wrong for us."""

    bootstrap_servers: str | None = None
    client_id: str = "dicom-gateway"
    producer_client: Literal["librdkafka", "aiokafka"] = "librdkafka"
    """librdkafka costs less than half aiokafka's CPU per GB produced (benchmarks/produce_path.py)."""
    consumer_client: Literal["librdkafka", "aiokafka"] = "librdkafka"
    """librdkafka decodes fetches on its own threads, aiokafka on the event loop (benchmarks/consume_path.py)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    partitions: int = Field(12, ge=1)
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(1, ge=1)
    linger_ms: int = Field(0, ge=0)
    """0: a C-STORE waits for its own records, so lingering only adds latency per instance."""
    max_batch_bytes: int = Field(1_048_576, ge=16_384)
    request_timeout_ms: int = Field(30_000, ge=1000)
    session_timeout_ms: int = Field(30_000, ge=6000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    fetch_max_bytes: int = Field(52_428_800, ge=1_048_576)

    @model_validator(mode="after")
    def _replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError("min_insync_replicas cannot exceed replication_factor")
        return self


class EmbeddedBusSettings(_Section):
    """The single-machine bus used when no Kafka is configured."""

    partitions: int = Field(4, ge=1)
    retention_hours: float = Field(24.0, gt=0)
    poll_interval_seconds: float = Field(0.05, gt=0)
    session_timeout_seconds: float = Field(10.0, gt=0)


class S3Settings(_Section):
    endpoint: str | None = None
    bucket: str = "dicom-gateway"
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    secure: bool = True
    region: str | None = None


class DatabaseSettings(_Section):
    url: SecretStr | None = None
    """postgresql://user:password@host/db; unset = SQLite under the data dir."""


class ValidationSettings(_Section):
    """Which validation profile checks which source (profiles: workers/validation, docs/validation-rules.md)."""

    default_profile: str = "dicom-basic"
    profiles_by_calling_ae: dict[str, str] = {}
    profile_files: tuple[Path, ...] = ()
    """Site profiles (YAML) layered over the bundled ones, e.g. fi-kanta with its procedure code list."""
    test_environment: bool = False
    """Accept test identity codes (individual number 900-999): only for the deployment test."""


class StoreSettings(_Section):
    """The store worker pool."""

    correction_policy: Literal["replace", "reject", "keep-first"] = "replace"
    """Same SOP Instance UID, different content: replace (prior version kept), reject, or keep the first."""
    orphan_timeout_seconds: float = Field(600.0, gt=0)
    """An instance whose end record has not come this long after its last record is dropped."""
    retry_max_seconds: float = Field(60.0, gt=0)
    """Longest back-off between attempts while S3, the index or the bus is down."""


class IocmSettings(_Section):
    """IHE IOCM rejection notes: what a rejected instance sent again gets, and when retention-expired ones go."""

    resend: dict[Title, Resend] = Field(default_factory=lambda: dict(DEFAULT_RESEND))
    """Per document title: ``ignore`` (Success, nothing stored), ``reject`` (0xA771) or ``restore``; titles not
    named keep the reference archive's default."""
    retention_grace_seconds: float = Field(86400.0, ge=0)
    """How long after a retention-expiry note (113039) its instances' objects are deleted."""
    check_on_receive: bool = True
    """The receiver checks before it answers: 0xA771 for a rejected instance its title refuses, and a note the
    index contradicts refused with its status. Off: those are found by the store stage after Success."""
    refresh_seconds: float = Field(2.0, gt=0)
    """How often the receiver takes in new rejections (what it refuses with 0xA771 is kept in memory)."""

    def policy(self) -> dict[Title, Resend]:
        return {**DEFAULT_RESEND, **self.resend}


class AuditSettings(_Section):
    """The audit trail (IHE ATNA): records on the bus, delivered by the ``audit`` role to the repository and kept
    in the index's disclosure log."""

    enabled: bool = True
    """Off: nothing is recorded (only for benchmarks and tests that measure without it)."""
    repository_url: str | None = None
    """The audit record repository: ``tls://host:port`` (RFC 5425) or ``udp://host:port`` (RFC 5426); unset,
    records go to the disclosure log only."""
    ca_file: Path | None = None
    """CAs the repository's TLS certificate must chain to; unset, the system's."""
    cert_file: Path | None = None
    """A client certificate for repositories that ask for one (mutual TLS), with ``key_file``."""
    key_file: Path | None = None
    source_id: str | None = None
    """AuditSourceID: unset, the gateway's AE title."""
    enterprise_site_id: str | None = None
    """AuditEnterpriseSiteID: unset, ``xds.organization_oid`` when set."""
    app_name: str = "dicom-gateway"
    """RFC 5424 APP-NAME of every message."""
    utf8_bom: bool = True
    """Start each message's XML with the UTF-8 byte-order mark (RFC 5424 section 6.4); some repositories want
    it left out."""
    retention_days: int = Field(4383, ge=1)
    """How long the disclosure log keeps an entry (the default is twelve years)."""
    retry_max_seconds: float = Field(60.0, gt=0)
    """Longest back-off while the repository is down; records wait on the bus meanwhile."""

    @field_validator("repository_url")
    @classmethod
    def _transport(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"(tls|udp)://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}", url):
            raise ValueError("must be tls://host:port or udp://host:port")
        return url

    @model_validator(mode="after")
    def _client_certificate(self) -> AuditSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        return self


class NotifySettings(_Section):
    """The notify worker: storage-commitment reports and Instance Availability Notifications."""

    commitment_timeout_seconds: float = Field(600.0, gt=0)
    """How long a commitment request waits for instances not yet stored before they are reported failed."""
    commitment_verification: Literal["hash", "size", "index"] = "hash"
    """hash: re-read each object and compare its SHA-256; size: compare the object's size; index: trust the index."""
    report_on_same_association: bool = False
    """Send the report on the requester's N-ACTION association while it keeps it open (PS3.4 J.3.3 allows
    either); a new association otherwise. The receiver holding it must be reachable at ``internal.advertised_url``."""
    ian_subscribers: tuple[str, ...] = ()
    """AE titles (from ``dicom.remote_aes``) that get an IAN for every stable study."""
    ian_subscribers_by_calling_ae: dict[str, tuple[str, ...]] = {}
    """Extra IAN subscribers for studies sent by a given calling AE."""
    ian_trigger: Literal["stable", "registered"] = "stable"
    """Send the IAN once the study is stable, or once it is registered with XDS."""
    retry_initial_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    retry_max_attempts: int = Field(10, ge=1)
    """Delivery attempts before a report or IAN lands in the dead-letter topic."""
    association_timeout_seconds: float = Field(30.0, gt=0)


class QuerySettings(_Section):
    """Query/retrieve: C-FIND, C-MOVE and C-GET on the DICOM port, QIDO-RS, WADO-RS and STOW-RS on the API."""

    enabled: bool = True
    """Offer the query/retrieve SOP Classes (to AEs whose ``permissions`` allow them) and DICOMweb."""
    max_results: int = Field(1000, ge=1)
    """Matches a C-FIND may return; a query matching more is refused with 0xA700 before any is sent (narrow it).
    Also the largest QIDO-RS ``limit``."""
    default_limit: int = Field(100, ge=1)
    """QIDO-RS page size when the request gives no ``limit``."""
    case_insensitive_names: bool = True
    """Person names (PN) match regardless of case (``MÄKELÄ`` finds ``Mäkelä``); other text matches exactly."""
    max_retrieve_instances: int = Field(65535, ge=1, le=65535)
    """Instances one C-MOVE or C-GET may retrieve (the sub-operation counts are 16-bit); more: 0xA701."""


class XdsSettings(_Section):
    """XDS-I.b registration of stable studies (RAD-68), registry queries (ITI-18), and when a study is stable."""

    stable_after_seconds: float = Field(60.0, gt=0)
    """A study is stable (complete) when no instance has arrived for this long; IANs wait for it too."""
    stability_check_seconds: float = Field(5.0, gt=0)
    """How often the store pool looks for studies that became stable."""
    trigger_on_commitment: bool = True
    """A storage-commitment request whose instances are all committed makes their study stable at once."""
    repository_url: str = ""
    """Repository endpoint for RAD-68 (Provide and Register Imaging Document Set); empty: registration off."""
    registry_url: str = ""
    """Registry endpoint for ITI-18 stored queries (FindDocuments, GetDocuments)."""
    repository_unique_id: str = ""
    """The repository's uniqueId (OID), for RAD-69/ITI-43 retrieval."""
    organization_oid: str = ""
    """The sending organisation's OID: author institution, and the submission's sourceId unless set."""
    organization_name: str = ""
    source_id: str = ""
    """SubmissionSet sourceId (OID of this Imaging Document Source); default: ``organization_oid``."""
    retrieve_location_uid: str = ""
    """Retrieve Location UID in manifests: where the images can be retrieved (this gateway or the archive)."""
    affinity_domain_file: Path | None = None
    """YAML of the affinity domain's codes (classCode, typeCode, ...); unset: the bundled placeholder profile."""
    cert_file: Path | None = None
    """Client certificate (PEM) for HTTPS to the registry and repository."""
    key_file: Path | None = None
    ca_file: Path | None = None
    """CAs the registry's and repository's server certificates must chain to."""
    timeout_seconds: float = Field(30.0, gt=0)
    retry_initial_seconds: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    retry_max_attempts: int = Field(12, ge=1)
    """Attempts for a registration the registry answers as transient failure before it is dead-lettered."""
    reregister_on_patient_change: bool = False
    """Replace the manifests of studies whose patient an ADT message changed (merge, identifier change, new name).
    Off: the registry tracks identity changes itself (ITI-8/ITI-44), and later manifests carry the new values."""

    @property
    def enabled(self) -> bool:
        return bool(self.repository_url)


class ForwardDestination(_Section):
    """An archive the forward role sends stored instances to (the national archive, a regional PACS)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """How the API, the metrics and the rules name it."""
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    """Connect with DICOM TLS, presenting ``dicom.tls`` cert_file/key_file and trusting its ca_file."""
    max_associations: int = Field(2, ge=1, le=64)
    """Associations each forward process opens to it at once (a study's instances share one)."""
    rate_per_minute: int = Field(0, ge=0)
    """Instances each forward process sends it per minute at most; 0: no limit."""
    transfer_syntaxes: tuple[str, ...] = ()
    """Transfer syntaxes it may be sent; empty: the stored one, else Explicit or Implicit VR Little Endian by a
    lossless conversion. An instance none of them can carry losslessly fails with its reason."""
    storage_commitment: bool = True
    """Ask it to commit what was sent (N-ACTION) and count an instance archived only once it reports so."""

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return value.strip()

    @field_validator("transfer_syntaxes")
    @classmethod
    def _syntaxes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [uid for uid in value if not is_uid(uid)]
        if bad:
            raise ValueError(f"not UIDs: {', '.join(bad)}")
        return value


class ForwardRule(_Section):
    """Which stored instances go to which destinations; every condition given must hold (empty: any)."""

    destinations: tuple[str, ...] = ()
    """Destination names; empty: every destination."""
    calling_aes: tuple[str, ...] = ()
    """AE titles the instance was received from."""
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    study_description: str = ""
    """A regular expression searched in Study Description, case-insensitive."""
    statuses: tuple[Literal["stored", "quarantined"], ...] = ("stored",)
    """The validation outcome: quarantined instances go only where a rule names them."""

    @field_validator("study_description")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class ForwardSettings(_Section):
    """The forward role: stored instances sent on to other archives, with storage commitment."""

    destinations: tuple[ForwardDestination, ...] = ()
    rules: tuple[ForwardRule, ...] = ()
    """No rules: every stored (not quarantined) instance goes to every destination."""
    batch_delay_seconds: float = Field(5.0, ge=0)
    """A study's instances wait this long after the last one arrived, so that they go together."""
    max_batch_delay_seconds: float = Field(60.0, ge=0)
    """Longest an instance waits for its study to go quiet."""
    batch_size: int = Field(500, ge=1, le=10_000)
    """Instances sent on one association (and listed in one commitment request)."""
    commitment_timeout_seconds: float = Field(3600.0, gt=0)
    """How long a commitment request waits for the archive's report before it is asked again."""
    commitment_requests: int = Field(3, ge=1)
    """Requests for the same instances before those still not committed are sent again."""
    resend_limit: int = Field(3, ge=1)
    """Times an instance the archive did not commit is sent before it fails (re-drivable)."""
    report_wait_seconds: float = Field(0.0, ge=0)
    """Keep the association open this long after the N-ACTION for a report on it; 0: release at once (the
    report then comes on a new association to the receiver, as dcm4chee and Orthanc send it)."""
    association_timeout_seconds: float = Field(60.0, gt=0)
    """Connecting, negotiating, and waiting for each response."""
    lease_seconds: float = Field(900.0, gt=0)
    """How long a study being sent is held by its forward process; a process killed meanwhile leaves it to
    others once this passes (instances it already sent are recorded at once and not held)."""
    retry_initial_seconds: float = Field(10.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    retry_max_attempts: int = Field(20, ge=1)
    """Attempts for an instance the archive cannot take now (refused connection, 0xA7xx) before it fails."""

    @model_validator(mode="after")
    def _names(self) -> ForwardSettings:
        names = [destination.name for destination in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destinations: each name may appear once")
        unknown = sorted({name for rule in self.rules for name in rule.destinations} - set(names))
        if unknown:
            raise ValueError(f"rules name destinations that are not configured: {', '.join(unknown)}")
        return self

    def destination(self, name: str) -> ForwardDestination | None:
        return next((destination for destination in self.destinations if destination.name == name), None)


class Hl7Sender(_Section):
    """A sending application (MSH-3) the hl7 role accepts ADT from, optionally only at one facility (MSH-4)
    and from some networks."""

    application: str = Field(min_length=1)
    facility: str = ""
    """Empty: any facility."""
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Empty: any address."""

    def admits(self, application: str, facility: str, address: str) -> bool:
        if application != self.application or (self.facility and facility != self.facility):
            return False
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


class Hl7ForwardSettings(_Section):
    """The upstream HL7 receiver every applied ADT message is passed on to (MLLP), e.g. the national service's
    interface; off while ``host`` is unset."""

    host: str | None = None
    port: int = Field(2575, ge=1, le=65535)
    tls: bool = False
    ca_file: Path | None = None
    """CAs the upstream's certificate must chain to (system CAs when unset)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    """Our client certificate, when the upstream asks for one."""
    timeout_seconds: float = Field(30.0, gt=0)
    """Connecting, and waiting for the upstream's acknowledgment."""
    retry_max_seconds: float = Field(300.0, gt=0)
    """Longest back-off while the upstream is unreachable; the message is sent again until it answers (later
    messages wait: ADT must not overtake ADT), and one it answers AE or AR is dead-lettered (re-drivable)."""

    @property
    def enabled(self) -> bool:
        return self.host is not None


class Hl7Settings(_Section):
    """The HL7 v2 ADT listener (MLLP) and how patient changes are applied and passed on."""

    host: str = "0.0.0.0"
    port: int | None = Field(None, ge=1, le=65535)
    """Off while unset."""
    tls: ServerTlsSettings = ServerTlsSettings()
    """With a certificate, the port speaks MLLP over TLS only."""
    allowed_senders: tuple[Hl7Sender, ...] = ()
    """Who may send ADT; required when the port is set (an ADT changes what every later answer says)."""
    local_authorities: tuple[str, ...] = ()
    """Assigning authorities (OIDs or namespace IDs) trusted for patient identifiers besides the personal
    identity code's 1.2.246.21, e.g. the district's temporary-ID namespace."""
    default_charset: str = "ASCII"
    """How a message without MSH-18 is decoded (HL7 table 0211: ASCII, 8859/1, UNICODE UTF-8, ...)."""
    max_message_bytes: int = Field(1_044_480, ge=1024, le=1_044_480)
    """Longest message accepted; one is one bus record (1 MiB less room for its headers)."""
    application: str = "DICOMGW"
    facility: str = ""
    """MSH-3/MSH-4 of our acknowledgments when the message did not name a receiver."""
    idle_timeout_seconds: float = Field(300.0, gt=0)
    """A connection with no message for this long is closed."""
    publish_timeout_seconds: float = Field(30.0, gt=0)
    """How long a message waits for the bus before it is answered AE (the sender then sends it again)."""
    precheck_timeout_seconds: float = Field(5.0, gt=0)
    """How long the listener waits for the index to check a message against the patients it holds (merged or
    existing identifiers) before acknowledging it unchecked; the patient role checks it again when applying."""
    max_connections_per_peer: int = Field(16, ge=1)
    forward_to: Hl7ForwardSettings = Hl7ForwardSettings()

    @field_validator("default_charset")
    @classmethod
    def _charset(cls, value: str) -> str:
        if value.upper() not in CHARSETS:
            raise ValueError(f"not one of {', '.join(CHARSETS)}")
        return value.upper()

    @model_validator(mode="after")
    def _senders(self) -> Hl7Settings:
        if self.port is not None and not self.allowed_senders:
            raise ValueError("the HL7 port needs allowed_senders (which applications may change patient data)")
        return self

    @property
    def enabled(self) -> bool:
        return self.port is not None

    def admits(self, application: str, facility: str, address: str) -> bool:
        return any(sender.admits(application, facility, address) for sender in self.allowed_senders)


class RuntimeSettings(_Section):
    drain_timeout_seconds: float = Field(30.0, gt=0)
    """Time in-flight work gets after SIGTERM before it is cancelled."""
    min_free_bytes: int = Field(64 * 1024 * 1024, ge=0)
    """Free space the local stores (embedded bus, object files, SQLite index) keep: below it the process is
    unready and refuses C-STORE with 0xA700 "disk full" until there is room again; 0: not watched."""


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = True


class Settings(BaseSettings):
    """The root: what ``--config``, the environment and the secrets directory say, validated once."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        frozen=True,
        extra="forbid",
        case_sensitive=False,
    )

    data_dir: Path = Path("./data")
    dicom: DicomSettings = DicomSettings()
    http: HttpSettings = HttpSettings()
    internal: InternalSettings = InternalSettings()
    topics: TopicSettings = TopicSettings()
    kafka: KafkaSettings = KafkaSettings()
    embedded_bus: EmbeddedBusSettings = EmbeddedBusSettings()
    s3: S3Settings = S3Settings()
    database: DatabaseSettings = DatabaseSettings()
    validation: ValidationSettings = ValidationSettings()
    store: StoreSettings = StoreSettings()
    iocm: IocmSettings = IocmSettings()
    audit: AuditSettings = AuditSettings()
    notify: NotifySettings = NotifySettings()
    xds: XdsSettings = XdsSettings()
    forward: ForwardSettings = ForwardSettings()
    query: QuerySettings = QuerySettings()
    hl7: Hl7Settings = Hl7Settings()
    runtime: RuntimeSettings = RuntimeSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _SecretFilesSource(settings_cls, _secrets_dir()),
            YamlConfigSettingsSource(settings_cls),
        )

    @property
    def embedded_bus_enabled(self) -> bool:
        return not self.kafka.bootstrap_servers


SCRIPT_VARIABLES = frozenset({"SECRETS_DIR", "KEEP_SERVICES", "KUBE_VERSIONS", "SERVICES_PORT_OFFSET",
                              "SERVICES_STATE", "TOOLS_DIR", "VENV"})
"""``GATEWAY_`` variables that are not settings: the secrets directory, and those of scripts/ and the tests."""


def _secrets_dir() -> Path:
    return Path(os.environ.get(f"{ENV_PREFIX}SECRETS_DIR", DEFAULT_SECRETS_DIR))


def _model(annotation: Any) -> type[BaseModel] | None:
    """The settings section an annotation is, through ``X | None``; None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [model for arg in typing.get_args(annotation) if (model := _model(arg)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def _field(keys: list[str]) -> FieldInfo | None:
    """The setting ``keys`` (lower-case, one per ``__`` part) name; None if they name none."""
    model: type[BaseModel] | None = Settings
    field = None
    for key in keys:
        field = model.model_fields.get(key) if model is not None else None
        if field is None:
            return None
        model = _model(field.annotation)
    return field


def _names(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every setting and section under ``model``, as the ``__``-joined keys of its variable."""
    names = []
    for name, field in model.model_fields.items():
        names.append(prefix + name)
        section = _model(field.annotation)
        if section is not None:
            names += _names(section, f"{prefix}{name}{NESTED_DELIMITER}")
    return names


def _likely(name: str, candidates: list[str], cutoff: float = 0.8) -> str | None:
    """The candidate an operator probably meant (a typo, ``_`` for ``__``), for a 'did you mean'."""
    folded = {candidate.replace("_", ""): candidate for candidate in candidates}
    if name.replace("_", "") in folded:
        return folded[name.replace("_", "")]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return close[0] if close else None


def _gateway_environment() -> dict[str, str]:
    """``GATEWAY_`` variables by upper-case name, as pydantic-settings reads them (case-insensitively)."""
    return {name.upper(): value for name, value in os.environ.items() if name.upper().startswith(ENV_PREFIX)}


def unknown_variables() -> dict[str, str | None]:
    """``GATEWAY_`` variables that name no setting and that pydantic-settings would silently ignore (those in a
    section are refused by validation), each with the variable probably meant, if any."""
    sections = {name for name in Settings.model_fields}
    candidates = [f"{ENV_PREFIX}{name}".upper() for name in _names(Settings)]
    unknown: dict[str, str | None] = {}
    for name in sorted(_gateway_environment()):
        keys = name[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER)
        if keys[0] in sections or name[len(ENV_PREFIX) :] in SCRIPT_VARIABLES:
            continue
        unknown[name] = _likely(name, candidates)
    return unknown


class _SecretFilesSource(PydanticBaseSettingsSource):
    """One file per setting, named like its variable (``GATEWAY_S3__SECRET_KEY``), as Kubernetes mounts Secrets."""

    def __init__(self, settings_cls: type[BaseSettings], directory: Path) -> None:
        super().__init__(settings_cls)
        self._directory = directory

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self._directory.is_dir():
            return {}
        values: dict[str, Any] = {}
        for path in sorted(self._directory.iterdir()):
            name = path.name.upper()
            if not name.startswith(ENV_PREFIX) or not path.is_file() or name == f"{ENV_PREFIX}SECRETS_DIR":
                continue
            keys = name[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER)
            node = values
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = self._value(keys, path)
        return values

    def _value(self, keys: list[str], path: Path) -> Any:
        """A file's text, JSON-decoded where the setting is a list or an object, as an env var's would be."""
        text = path.read_text().strip()
        field = _field(keys)
        if field is None or not self.field_is_complex(field):
            return text
        try:
            return self.decode_complex_value(keys[-1], field, text)
        except ValueError as exc:
            raise SettingsError(f"secret file {path}: not valid JSON ({exc})") from None


class SettingsError(Exception):
    """Configuration that cannot start the gateway; its message names the setting and what it accepts."""


def load_settings(config_file: Path | None = None) -> Settings:
    """Parse settings once, turning every error into one line naming the variable (or file and key) at fault."""
    from pydantic import ValidationError

    yaml_values = _read_yaml(config_file) if config_file is not None else {}
    _check_json()
    root: type[Settings] = Settings
    if config_file is not None:

        class _FromFile(Settings):
            model_config = SettingsConfigDict(yaml_file=config_file)

        root = _FromFile
    try:
        return root()
    except ValidationError as exc:
        lines = list(dict.fromkeys(_describe(error, config_file, yaml_values) for error in exc.errors()))
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _read_yaml(config_file: Path) -> dict[str, Any]:
    """The ``--config`` file's mapping, read here first so that its faults name the file, not a traceback."""
    import yaml

    try:
        text = config_file.read_text()
    except FileNotFoundError:
        raise SettingsError(f"--config {config_file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"--config {config_file}: cannot be read ({exc})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"--config {config_file}: not valid YAML: {where}{problem}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SettingsError(f"--config {config_file}: must be a mapping of settings (dicom: ..., http: ...), "
                            f"not a {type(values).__name__}")
    return values


def _check_json() -> None:
    """A list or object setting whose variable is not JSON; pydantic-settings would name only its section."""
    probe = _SecretFilesSource(Settings, Path())
    for name, value in _gateway_environment().items():
        field = _field(name[len(ENV_PREFIX) :].lower().split(NESTED_DELIMITER))
        if field is None or not probe.field_is_complex(field):
            continue
        try:
            json.loads(value)
        except ValueError as exc:
            raise SettingsError(f"{name}: not valid JSON ({exc}); this setting is a JSON list or object") from None


def _describe(error: Any, config_file: Path | None, yaml_values: Mapping[str, Any]) -> str:
    """One validation error as ``WHERE: what is wrong``: the variable that set it, else the secret file, else the
    YAML file and key, else the variable that would."""
    keys: list[str] = []
    path, intended = "", None
    node: Any = Settings
    loc = list(error["loc"])
    extra = error["type"] == "extra_forbidden"
    for i, part in enumerate(loc):
        model = _model(node)
        unknown = extra and i == len(loc) - 1
        if isinstance(part, int):
            path += f"[{part}]"
            node = _item(node)
        elif model is not None and (part in model.model_fields or unknown):
            if unknown:
                intended = _likely(str(part), list(model.model_fields), cutoff=0.6)
            if path:
                path += f".{part}"
            else:
                keys.append(str(part))
            node = model.model_fields[part].annotation if part in model.model_fields else None
        elif typing.get_origin(node) is dict or unknown:
            path += f"[{part!r}]"
            node = _item(node)
        # else: a tag pydantic adds for a member of a union, not a place in the settings
    message = "not a setting" if extra else str(error["msg"]).removeprefix("Value error, ")
    environment = _gateway_environment()
    where = ""
    for n in range(len(keys), 0, -1):
        variable = f"{ENV_PREFIX}{NESTED_DELIMITER.join(keys[:n])}".upper()
        secret = _secrets_dir() / variable
        if variable in environment or secret.is_file():
            where, path = (variable if variable in environment else f"secret file {secret}"), _join(keys[n:], path)
            break
    else:
        variable = f"{ENV_PREFIX}{NESTED_DELIMITER.join(keys)}".upper()
        if config_file is not None and _in_yaml(yaml_values, keys) and not any(
                name.startswith(f"{variable}{NESTED_DELIMITER}") for name in environment):
            where, path = str(config_file), _join(keys, path)
        else:
            where = variable
    if intended is not None:
        suggestion = intended if path else f"{ENV_PREFIX}{NESTED_DELIMITER.join([*keys[:-1], intended])}".upper()
        message += f" (did you mean {suggestion}?)"
    return f"{where}: {path}: {message}" if path else f"{where}: {message}"


def _join(keys: list[str], path: str) -> str:
    """Keys inside a variable's JSON or the YAML file, as ``dicom.allowed_aes[0].networks`` (a path starts with
    an index: keys are taken for as long as they name sections and settings)."""
    return ".".join(keys) + path


def _item(annotation: Any) -> Any:
    """The type of an item of a ``tuple[X, ...]`` or a value of a ``dict[str, X]``."""
    args = typing.get_args(annotation)
    return args[-1] if typing.get_origin(annotation) is dict else (args[0] if args else None)


def _in_yaml(values: Mapping[str, Any], keys: list[str]) -> bool:
    node: Any = values
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True
