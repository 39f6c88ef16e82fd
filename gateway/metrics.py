"""Every metric the gateway exports, in one place, on a registry the caller owns (tests pass their own).

Names use the ``dicomgw_`` prefix and base units; no UID is ever a label.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.exposition = self.registry
        """What /metrics serves: this registry, or one that merges in other processes' metrics."""
        self.refresh: Callable[[], Awaitable[None]] | None = None
        """Awaited before each exposition: fetches what ``exposition`` merges in, off the event loop's back."""
        r = self.registry
        self.up = Gauge("dicomgw_ready", "1 while the process accepts work", registry=r)
        self.bus_records_published = Counter(
            "dicomgw_bus_records_published_total", "Records made durable on the bus", ["topic"], registry=r
        )
        self.bus_bytes_published = Counter(
            "dicomgw_bus_published_bytes_total", "Record value bytes made durable on the bus", ["topic"], registry=r
        )
        self.bus_publish_failures = Counter(
            "dicomgw_bus_publish_failures_total", "Publishes that did not become durable", ["topic"], registry=r
        )
        self.bus_records_consumed = Counter(
            "dicomgw_bus_records_consumed_total", "Records handed to a consumer", ["topic", "group"], registry=r
        )
        self.bus_commits = Counter(
            "dicomgw_bus_offset_commits_total", "Offset commits made by consumers", ["group"], registry=r
        )
        self.consumer_lag = Gauge(
            "dicomgw_consumer_lag_records", "Records waiting on this member's partitions", ["group", "topic"],
            registry=r,
        )
        self.associations_open = Gauge("dicomgw_associations_open", "Associations currently open", registry=r)
        self.associations = Counter(
            "dicomgw_associations_total", "Associations by outcome", ["outcome"], registry=r
        )
        self.instances_received = Counter(
            "dicomgw_instances_received_total", "Instances acknowledged with C-STORE Success", registry=r
        )
        self.bytes_received = Counter(
            "dicomgw_received_bytes_total", "Data set bytes of acknowledged instances", registry=r
        )
        self.dimse_statuses = Counter(
            "dicomgw_dimse_responses_total", "DIMSE responses sent", ["command", "status"], registry=r
        )
        self.publish_latency = Histogram(
            "dicomgw_instance_publish_seconds",
            "From the last fragment received to the whole instance durable on the bus",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "dicomgw_instances_rejected_total", "Instances withdrawn by IOCM rejection notes, by document title",
            ["title"], registry=r)
        self.instances_stored = Counter(
            "dicomgw_instances_stored_total", "Instances through the store stage, by event", ["event"], registry=r
        )
        self.bytes_stored = Counter(
            "dicomgw_stored_bytes_total", "Bytes of objects written by the store stage", registry=r
        )
        self.validation_findings = Counter(
            "dicomgw_validation_findings_total", "Validation findings by rule and severity", ["code", "severity"],
            registry=r,
        )
        self.object_store_seconds = Histogram(
            "dicomgw_object_store_complete_seconds", "Time to complete an object (last part, tags)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.dead_letters = Counter(
            "dicomgw_dead_letters_total", "Instances sent to the dead-letter topic", ["stage"], registry=r
        )
        self.audit_records = Counter(
            "dicomgw_audit_records_total", "Audit records made durable on the audit topic, by event", ["event"],
            registry=r)
        self.audit_failures = Counter(
            "dicomgw_audit_records_lost_total",
            "Audit records of refusals the bus did not take or dropped while too many waited for it, and records "
            "the index refused for the audit log (each logged)",
            registry=r)
        self.audit_delivered = Counter(
            "dicomgw_audit_records_delivered_total",
            "Audit records the repository took (several receipts may go as one message), by transport",
            ["transport"], registry=r)
        self.stage_retries = Counter(
            "dicomgw_stage_retries_total", "Back-offs while a service a stage needs was down", ["stage"], registry=r
        )
        self.commitment_requests = Counter(
            "dicomgw_commitment_requests_total", "Storage Commitment requests accepted (N-ACTION Success)",
            registry=r,
        )
        self.commitments_decided = Counter(
            "dicomgw_commitments_decided_total", "Storage Commitment transactions decided, by event type",
            ["event_type"], registry=r,
        )
        self.commitments_waiting = Gauge(
            "dicomgw_commitments_waiting", "Storage Commitment transactions not yet reported (undecided, or the "
            "report not yet delivered), by time since the request", ["age"], registry=r,
        )
        self.deliveries = Counter(
            "dicomgw_deliveries_total", "Outbound notifications (commitment reports, IANs) by kind and outcome",
            ["kind", "outcome"], registry=r,
        )
        self.studies_stable = Counter(
            "dicomgw_studies_stable_total", "Studies that became stable (no new instance for the set time)",
            registry=r,
        )
        self.protocol_errors = Counter(
            "dicomgw_protocol_errors_total", "Malformed or out-of-order input that aborted an association",
            ["reason"], registry=r,
        )
        self.commitment_reports_received = Counter(
            "dicomgw_commitment_reports_received_total", "Storage Commitment reports taken from forwarding "
            "destinations (N-EVENT-REPORT Success)", ["calling_ae"], registry=r,
        )
        self.forwarded = Counter(
            "dicomgw_forward_instances_total", "Instances the forward role tried to send, by destination and outcome "
            "(sent, warning, retry, failed, committed, not_committed)", ["destination", "outcome"], registry=r,
        )
        self.forwarded_bytes = Counter(
            "dicomgw_forward_bytes_total", "Stored bytes of instances a destination took", ["destination"], registry=r,
        )
        self.forward_items = Gauge(
            "dicomgw_forward_items", "Instances at each destination by state", ["destination", "state"], registry=r,
        )
        self.forward_lag = Gauge(
            "dicomgw_forward_lag_seconds", "Since the oldest instance not yet archived at the destination was queued",
            ["destination"], registry=r,
        )
        self.forward_commit_latency = Histogram(
            "dicomgw_forward_commitment_seconds", "From our storage-commitment request to the destination's report",
            ["destination"], buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600), registry=r,
        )
        self.forward_associations = Gauge(
            "dicomgw_forward_associations_open", "Associations open to each destination", ["destination"], registry=r,
        )
        self.hl7_messages = Counter(
            "dicomgw_hl7_messages_total", "HL7 messages answered by the hl7 role, by trigger event and acknowledgment "
            "(AA, AE, AR; duplicate for one applied before)", ["trigger", "acknowledgment"], registry=r,
        )
        self.patient_changes = Counter(
            "dicomgw_patient_changes_total", "ADT changes the patient role applied, by action (updated, created, "
            "merged, identifier-changed, duplicate, refused)", ["action"], registry=r,
        )
        self.hl7_forwarded = Counter(
            "dicomgw_hl7_forwarded_total", "ADT messages passed on upstream, by outcome (accepted, refused)",
            ["outcome"], registry=r,
        )
        self.queries = Counter(
            "dicomgw_queries_total", "Queries by interface (dimse, qido) and outcome (answered, invalid, too_many, "
            "failed)", ["interface", "outcome"], registry=r,
        )
        self.retrieved = Counter(
            "dicomgw_retrieved_instances_total", "Instances sent by retrieves, by interface (c-move, c-get, wado) "
            "and outcome (completed, warning, failed)", ["interface", "outcome"], registry=r,
        )
        self.retrieved_bytes = Counter(
            "dicomgw_retrieved_bytes_total", "Bytes of the stored objects retrieves sent, by interface",
            ["interface"], registry=r,
        )
        self.http_auth_failures = Counter(
            "dicomgw_http_auth_failures_total", "HTTP requests refused: no, unknown, invalid or insufficient token",
            ["reason"], registry=r,
        )
