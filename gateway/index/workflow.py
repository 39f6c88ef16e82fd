"""SQL of the workflow state (migrations 0003 and 0006), written once for both dialects.

The statements use ``$n`` placeholders; the SQLite adapter rewrites them to ``?n``. Times are epoch seconds
and JSON goes in as text for SQLite and as values for PostgreSQL's jsonb, so the only other difference is
that PostgreSQL claims deliveries with ``FOR UPDATE SKIP LOCKED`` (SQLite serialises writers anyway).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.index import (
    Commitment,
    CommitmentItem,
    CommitmentPart,
    Delivery,
    DeliveryState,
    Registration,
    StudyActivity,
)

TOUCH_STUDY = """
INSERT INTO study_activity AS a (study_instance_uid, last_instance_at, stable_at, generation)
VALUES ($1, $2, NULL, 1)
ON CONFLICT (study_instance_uid) DO UPDATE SET
    last_instance_at = excluded.last_instance_at, stable_at = NULL,
    generation = a.generation + CASE WHEN a.stable_at IS NULL THEN 0 ELSE 1 END"""
STUDY_ACTIVITY = ("SELECT study_instance_uid, last_instance_at, stable_at, generation FROM study_activity "
                  "WHERE study_instance_uid = $1")
DUE_STABLE = """SELECT study_instance_uid, last_instance_at, stable_at, generation FROM study_activity
WHERE stable_at IS NULL AND last_instance_at < $1 ORDER BY last_instance_at LIMIT $2"""
MARK_STABLE = """UPDATE study_activity SET stable_at = $3
WHERE study_instance_uid = $1 AND last_instance_at = $2 AND stable_at IS NULL"""
HASTEN_STABILITY = "UPDATE study_activity SET last_instance_at = 0 WHERE study_instance_uid = $1 AND stable_at IS NULL"

INSERT_COMMITMENT = """INSERT INTO commitments (transaction_uid, requester_ae, requested_at, deadline, source)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (transaction_uid) DO NOTHING RETURNING transaction_uid"""
INSERT_ITEM = """INSERT INTO commitment_items (transaction_uid, position, sop_class_uid, sop_instance_uid)
VALUES ($1, $2, $3, $4)"""
COMMITMENT = ("SELECT transaction_uid, requester_ae, requested_at, deadline, source, decided_at FROM commitments "
              "WHERE transaction_uid = $1")
EXPIRED_COMMITMENTS = ("SELECT transaction_uid, requester_ae, requested_at, deadline, source, decided_at "
                       "FROM commitments WHERE decided_at IS NULL AND deadline <= $1 ORDER BY deadline LIMIT $2")
STUDY_COMMITMENTS = """SELECT c.transaction_uid, c.requester_ae, c.requested_at, c.deadline, c.source, c.decided_at
FROM commitments c WHERE c.transaction_uid IN (SELECT ci.transaction_uid FROM commitment_items ci
JOIN instances i ON i.sop_instance_uid = ci.sop_instance_uid WHERE i.study_instance_uid = $1 AND i.is_current)
ORDER BY c.requested_at DESC LIMIT $2"""
OVERDUE_COMMITMENTS = """SELECT c.transaction_uid, c.requester_ae, c.requested_at, c.deadline, c.source, c.decided_at
FROM commitments c LEFT JOIN deliveries d ON d.subject = c.transaction_uid AND d.kind = $2
WHERE c.deadline <= $1 AND (d.state IS NULL OR d.state <> 'delivered') ORDER BY c.deadline LIMIT $3"""
WAITING_COMMITMENTS = """SELECT requested_at FROM commitments WHERE decided_at IS NULL
UNION ALL
SELECT c.requested_at FROM deliveries d JOIN commitments c ON c.transaction_uid = d.subject
WHERE d.state = 'pending' AND d.kind = $1"""
ITEMS = ("SELECT sop_class_uid, sop_instance_uid, failure_reason FROM commitment_items "
         "WHERE transaction_uid = $1 ORDER BY position")
KNOWN_REQUEST = "SELECT 1 FROM commitments WHERE transaction_uid = $1 AND abs(requested_at - $2) <= 0.001"
"""The request is a transaction already: the tolerance is the tracker's, for request times read back."""
INSERT_PART = """INSERT INTO commitment_parts (transaction_uid, requested_at, part, parts, items)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (transaction_uid, requested_at, part) DO NOTHING"""
COUNT_PARTS = "SELECT count(*) FROM commitment_parts WHERE transaction_uid = $1 AND requested_at = $2"
PARTS = "SELECT items FROM commitment_parts WHERE transaction_uid = $1 AND requested_at = $2 ORDER BY part"
DROP_PARTS = "DELETE FROM commitment_parts WHERE transaction_uid = $1 AND requested_at = $2"
EXPIRE_PARTS = "DELETE FROM commitment_parts WHERE requested_at < $1 RETURNING transaction_uid"
DECIDE = "UPDATE commitments SET decided_at = $2 WHERE transaction_uid = $1 AND decided_at IS NULL"
SET_ITEM = "UPDATE commitment_items SET failure_reason = $3 WHERE transaction_uid = $1 AND position = $2"

_DELIVERY_COLUMNS = ("delivery_id, kind, subject, target_ae, payload, created_at, next_attempt_at, source, state, "
                     "attempts, last_error, delivered_at")
INSERT_DELIVERY = f"""INSERT INTO deliveries ({_DELIVERY_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (delivery_id) DO NOTHING"""
REPLACE_DELIVERY = f"""INSERT INTO deliveries ({_DELIVERY_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (delivery_id) DO UPDATE SET payload = excluded.payload, next_attempt_at = excluded.next_attempt_at,
    source = excluded.source, state = excluded.state, attempts = excluded.attempts,
    last_error = excluded.last_error, delivered_at = excluded.delivered_at, lease_until = 0"""
DELIVERIES = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE subject = $1 ORDER BY created_at, delivery_id"


def claim(kinds: int, lock: str = "") -> str:
    """Lease due deliveries of ``kinds`` kinds ($4...): $1 now, $2 lease end, $3 limit."""
    placeholders = ", ".join(f"${n}" for n in range(4, 4 + kinds))
    due = (f"SELECT delivery_id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 "
           f"AND lease_until <= $1 AND kind IN ({placeholders}) ORDER BY next_attempt_at LIMIT $3{lock}")
    return f"UPDATE deliveries SET lease_until = $2 WHERE delivery_id IN ({due}) RETURNING {_DELIVERY_COLUMNS}"


FINISH_ATTEMPT = """UPDATE deliveries SET state = $2, attempts = attempts + 1, last_error = $3,
    next_attempt_at = $4, lease_until = 0,
    delivered_at = CASE WHEN $2 = 'delivered' THEN $5 ELSE delivered_at END
WHERE delivery_id = $1"""

_REGISTRATION_COLUMNS = ("study_instance_uid, generation, document_unique_id, entry_uuid, submission_set_unique_id, "
                         "instances, registered_at, replaces_entry_uuid, is_current")
RETIRE_REGISTRATION = "UPDATE registrations SET is_current = 0 WHERE study_instance_uid = $1 AND is_current = 1"
INSERT_REGISTRATION = f"""INSERT INTO registrations ({_REGISTRATION_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)"""
REGISTRATIONS = (f"SELECT {_REGISTRATION_COLUMNS} FROM registrations WHERE study_instance_uid = $1 "
                 "ORDER BY generation DESC")


def registration_params(registration: Registration) -> tuple[Any, ...]:
    return (registration.study_instance_uid, registration.generation, registration.document_unique_id,
            registration.entry_uuid, registration.submission_set_unique_id, registration.instances,
            registration.registered_at, registration.replaces_entry_uuid)


def registration(row: tuple[Any, ...]) -> Registration:
    study, generation, unique_id, entry_uuid, submission_set_unique_id, instances, at, replaces, current = row
    return Registration(study, generation, unique_id, entry_uuid, submission_set_unique_id, instances, at, replaces,
                        current=bool(current))


_PLACEHOLDER = re.compile(r"\$(\d+)")


def sqlite(statement: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", statement)


def delivery_params(delivery: Delivery, encode: Any) -> tuple[Any, ...]:
    """Parameters of INSERT/REPLACE_DELIVERY; ``encode`` turns a dict into what the driver stores as JSON."""
    return (delivery.delivery_id, delivery.kind, delivery.subject, delivery.target_ae, encode(delivery.payload),
            delivery.created_at, delivery.next_attempt_at, encode(delivery.source), delivery.state.value,
            delivery.attempts, delivery.last_error, delivery.delivered_at)


def delivery(row: Mapping[int, Any] | tuple[Any, ...], decode: Any) -> Delivery:
    (delivery_id, kind, subject, target_ae, payload, created_at, next_attempt_at, source, state, attempts,
     last_error, delivered_at) = tuple(row)
    return Delivery(delivery_id, kind, subject, target_ae, decode(payload), created_at, next_attempt_at,
                    decode(source), DeliveryState(state), attempts, last_error, delivered_at)


def study_activity(row: tuple[Any, ...]) -> StudyActivity:
    return StudyActivity(*row)


def commitment(row: tuple[Any, ...], items: list[tuple[Any, ...]], decode: Any) -> Commitment:
    transaction_uid, requester_ae, requested_at, deadline, source, decided_at = row
    return Commitment(transaction_uid, requester_ae, requested_at, deadline,
                      tuple(CommitmentItem(*item) for item in items), decode(source), decided_at)


def part_items(part: CommitmentPart) -> list[list[str]]:
    """A part's references as ``commitment_parts.items`` holds them."""
    return [[item.sop_class_uid, item.sop_instance_uid] for item in part.items]


def request_items(parts: list[list[list[str]]]) -> tuple[CommitmentItem, ...]:
    """The request's references from its parts' ``items``, in part order."""
    return tuple(CommitmentItem(sop_class_uid, sop_instance_uid) for items in parts
                 for sop_class_uid, sop_instance_uid in items)


def waiting_for(count: int) -> str:
    """Undecided transactions referencing any of ``count`` SOP Instance UIDs ($1..$count)."""
    placeholders = ", ".join(f"${n}" for n in range(1, count + 1))
    return f"""SELECT DISTINCT i.transaction_uid FROM commitment_items i
JOIN commitments c ON c.transaction_uid = i.transaction_uid
WHERE c.decided_at IS NULL AND i.sop_instance_uid IN ({placeholders})"""
