"""Forwarding state (migration 0007): the SQL once for both dialects, and the ``Forwarding`` port built on it.

``ForwardQueries`` implements the port over three primitives each adapter gives: a transaction of statements
(each run for one or many parameter tuples), a read, and a write that returns rows. Statements are written for
PostgreSQL with ``$n`` placeholders; ``sqlite`` rewrites them (placeholders, ``LEAST``/``GREATEST``). A claim
is one UPDATE whose row locks decide between competing workers: PostgreSQL re-checks the lease condition of a row
another transaction changed, and SQLite serialises writers, so an item is never leased twice.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from gateway.index import (
    DestinationStatus,
    ForwardItem,
    ForwardResult,
    ForwardState,
    ForwardTransaction,
)

_ITEM_COLUMNS = ("destination, sop_instance_uid, version, study_instance_uid, series_instance_uid, sop_class_uid, "
                 "transfer_syntax_uid, storage_key, size, source, state, queued_at, due_at, attempts, sends, "
                 "commit_requests, transaction_uid, transfer_syntax_sent, last_error, sent_at, finished_at")
_TRANSACTION_COLUMNS = ("transaction_uid, destination, study_instance_uid, instances, requested_at, deadline, "
                        "reported_at, event_type")

ENQUEUE = """INSERT INTO forward_items (destination, sop_instance_uid, version, study_instance_uid,
    series_instance_uid, sop_class_uid, transfer_syntax_uid, storage_key, size, source, state, queued_at, due_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', $11, $12)
ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET
    version = excluded.version, study_instance_uid = excluded.study_instance_uid,
    series_instance_uid = excluded.series_instance_uid, sop_class_uid = excluded.sop_class_uid,
    transfer_syntax_uid = excluded.transfer_syntax_uid, storage_key = excluded.storage_key, size = excluded.size,
    source = excluded.source, state = 'queued', queued_at = excluded.queued_at, due_at = excluded.due_at,
    lease_until = 0, attempts = 0, sends = 0, commit_requests = 0, transaction_uid = NULL,
    transfer_syntax_sent = '', last_error = '', sent_at = NULL, finished_at = NULL
WHERE forward_items.version < excluded.version OR forward_items.state = 'failed'"""
DEBOUNCE = """UPDATE forward_items SET due_at = LEAST(GREATEST(due_at, $3), queued_at + $4)
WHERE destination = $1 AND study_instance_uid = $2 AND state = 'queued' AND attempts = 0 AND lease_until <= $5"""


def claim(lock: str = "") -> str:
    """$1 destination, $2 now, $3 lease end, $4 limit: one study's due items."""
    due = "destination = $1 AND state IN ('queued', 'sent') AND due_at <= $2 AND lease_until <= $2"
    study = f"SELECT study_instance_uid FROM forward_items WHERE {due} ORDER BY due_at LIMIT 1"
    items = (f"SELECT sop_instance_uid FROM forward_items WHERE {due} AND study_instance_uid = ({study}) "
             f"ORDER BY series_instance_uid, queued_at, sop_instance_uid LIMIT $4{lock}")
    return (f"UPDATE forward_items SET lease_until = $3 WHERE destination = $1 AND lease_until <= $2 "
            f"AND sop_instance_uid IN ({items}) RETURNING {_ITEM_COLUMNS}")


RESULT = """UPDATE forward_items SET state = $4, due_at = $5, last_error = $6,
    transfer_syntax_sent = CASE WHEN $7 = '' THEN transfer_syntax_sent ELSE $7 END,
    attempts = CASE WHEN $8 = 1 THEN 0 ELSE attempts + $10 END,
    sends = sends + $8,
    commit_requests = CASE WHEN $8 = 1 THEN 0 ELSE commit_requests END,
    sent_at = CASE WHEN $8 = 1 THEN CAST($9 AS double precision) ELSE sent_at END,
    finished_at = CASE WHEN $4 IN ('delivered', 'failed') THEN CAST($9 AS double precision) ELSE NULL END,
    lease_until = CASE WHEN $4 = 'sent' AND $8 = 1 THEN lease_until ELSE 0 END
WHERE destination = $1 AND sop_instance_uid = $2 AND version = $3 AND state IN ('queued', 'sent')"""
"""An instance just stored keeps its batch's lease until the batch's commitment request takes it (``REQUEST``):
released at once, another worker would request its commitment a second time."""
INSERT_TRANSACTION = f"""INSERT INTO forward_transactions ({_TRANSACTION_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)"""
REQUEST = """UPDATE forward_items SET state = 'requested', transaction_uid = $3,
    commit_requests = commit_requests + 1, lease_until = 0
WHERE destination = $1 AND sop_instance_uid = $2 AND state = 'sent'"""
CANCEL_ITEMS = """UPDATE forward_items SET state = 'sent', due_at = $2, last_error = $3, lease_until = 0,
    commit_requests = commit_requests - 1
WHERE transaction_uid = $1 AND state = 'requested'"""
DELETE_TRANSACTION = "DELETE FROM forward_transactions WHERE transaction_uid = $1"
TRANSACTION = f"SELECT {_TRANSACTION_COLUMNS} FROM forward_transactions WHERE transaction_uid = $1"
REPORTED = "UPDATE forward_transactions SET reported_at = $2, event_type = $3 WHERE transaction_uid = $1"
COUNT_COMMITTED = "SELECT count(*) FROM forward_items WHERE transaction_uid = $1 AND state = 'committed'"
COMMITTED = """UPDATE forward_items SET state = 'committed', finished_at = $3, last_error = ''
WHERE transaction_uid = $1 AND sop_instance_uid = $2 AND state IN ('requested', 'sent', 'queued')"""
NOT_COMMITTED = """UPDATE forward_items SET
    state = CASE WHEN $4 = 1 OR sends >= $5 THEN 'failed' ELSE 'queued' END,
    finished_at = CASE WHEN $4 = 1 OR sends >= $5 THEN CAST($6 AS double precision) ELSE NULL END,
    due_at = $7, last_error = $3, lease_until = 0
WHERE transaction_uid = $1 AND sop_instance_uid = $2 AND state = 'requested'"""
EXPIRED = (f"SELECT {_TRANSACTION_COLUMNS} FROM forward_transactions WHERE reported_at IS NULL AND deadline <= $1 "
           "ORDER BY deadline LIMIT $2")
EXPIRE_ITEMS = """UPDATE forward_items SET
    state = CASE WHEN commit_requests < $2 THEN 'sent' WHEN sends < $3 THEN 'queued' ELSE 'failed' END,
    finished_at = CASE WHEN commit_requests < $2 OR sends < $3 THEN NULL ELSE CAST($4 AS double precision) END,
    due_at = $4, last_error = 'no storage commitment report before the timeout', lease_until = 0
WHERE transaction_uid = $1 AND state = 'requested'"""
ITEM_COUNTS = """SELECT destination, state, count(*), min(queued_at) FROM forward_items
WHERE $1 = 1 OR state IN ('queued', 'sent', 'requested', 'failed') GROUP BY destination, state"""
DESTINATIONS = ("SELECT name, paused, failures, backoff_until, last_error, last_error_at, last_success_at "
                "FROM forward_destinations")
PAUSE = """INSERT INTO forward_destinations (name, paused) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"""
UNREACHABLE = """INSERT INTO forward_destinations (name, failures, last_error, last_error_at, backoff_until)
VALUES ($1, 1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET failures = forward_destinations.failures + 1, last_error = excluded.last_error,
    last_error_at = excluded.last_error_at, backoff_until = excluded.backoff_until"""
REACHED = """INSERT INTO forward_destinations (name, last_success_at) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET failures = 0, backoff_until = 0, last_success_at = excluded.last_success_at"""
ITEMS = f"""SELECT {_ITEM_COLUMNS} FROM forward_items
WHERE ($1 = '' OR study_instance_uid = $1) AND ($2 = '' OR destination = $2) AND ($3 = '' OR state = $3)
ORDER BY destination, study_instance_uid, series_instance_uid, queued_at, sop_instance_uid LIMIT $4"""
REDRIVE = """UPDATE forward_items SET state = 'queued', due_at = $1, lease_until = 0, attempts = 0, sends = 0,
    commit_requests = 0, transaction_uid = NULL, last_error = '', finished_at = NULL
WHERE (state = 'failed' OR $4 = 1) AND ($2 = '' OR destination = $2) AND ($3 = '' OR study_instance_uid = $3)
  AND sop_instance_uid NOT IN (SELECT sop_instance_uid FROM rejections WHERE prior_status IS NOT NULL)"""
WITHDRAW = """DELETE FROM forward_items WHERE sop_instance_uid = $1 AND study_instance_uid = $2
    AND state IN ('queued', 'failed') AND lease_until <= $3"""
"""Not yet sent, nor being sent: an item a sender holds (leased) finishes its attempt."""
REACHED_BY = """SELECT destination, sop_instance_uid FROM forward_items WHERE study_instance_uid = $1
    AND (sends > 0 OR lease_until > $2)"""
"""Items whose destination has (or may just be receiving) the instance."""

_PLACEHOLDER = re.compile(r"\$(\d+)")

Steps = Sequence[tuple[str, Sequence[tuple[Any, ...]]]]
"""Statements to run in one transaction, each once per parameter tuple."""


def sqlite(statement: str) -> str:
    """SQLite locks the whole database for a write transaction, so row locks (``FOR UPDATE``) are dropped."""
    return (_PLACEHOLDER.sub(r"?\1", statement).replace("LEAST(", "min(").replace("GREATEST(", "max(")
            .replace(" FOR UPDATE", ""))


def _item(row: Sequence[Any]) -> ForwardItem:
    (destination, sop_instance_uid, version, study, series, sop_class, syntax, key, size, source, state, queued_at,
     due_at, attempts, sends, commit_requests, transaction_uid, syntax_sent, last_error, sent_at, finished_at) = row
    return ForwardItem(destination, sop_instance_uid, version, study, series, sop_class, syntax, key, size,
                       orjson.loads(source), ForwardState(state), queued_at, due_at, attempts, sends,
                       commit_requests, transaction_uid or "", syntax_sent, last_error, sent_at, finished_at)


def _transaction(row: Sequence[Any]) -> ForwardTransaction:
    return ForwardTransaction(*row)


class ForwardQueries:
    """The ``Forwarding`` port for an adapter that provides the three primitives below."""

    async def _forward_write(self, steps: Steps) -> list[int]:
        """Run ``steps`` in one write transaction; rows changed by each single-tuple step (-1 otherwise)."""
        raise NotImplementedError

    async def _select_rows(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _forward_returning(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """A write that returns rows, in its own transaction."""
        raise NotImplementedError

    _claim_lock = ""

    async def enqueue_forwards(self, items: Sequence[ForwardItem], now: float, delay: float, max_delay: float) -> int:
        if not items:
            return 0
        due = now + delay
        rows = [(item.destination, item.sop_instance_uid, item.version, item.study_instance_uid,
                 item.series_instance_uid, item.sop_class_uid, item.transfer_syntax_uid, item.storage_key, item.size,
                 orjson.dumps(item.source).decode(), now, due) for item in items]
        studies = sorted({(item.destination, item.study_instance_uid) for item in items})
        counts = await self._forward_write([
            *((ENQUEUE, [row]) for row in rows),
            (DEBOUNCE, [(destination, study, due, max_delay, now) for destination, study in studies]),
        ])
        return sum(counts[: len(rows)])

    async def claim_forwards(self, destination: str, now: float, lease_seconds: float,
                             limit: int) -> list[ForwardItem]:
        rows = await self._forward_returning(claim(self._claim_lock), (destination, now, now + lease_seconds, limit))
        return sorted((_item(row) for row in rows),
                      key=lambda item: (item.series_instance_uid, item.queued_at, item.sop_instance_uid))

    async def record_forward_results(self, destination: str, results: Sequence[ForwardResult], at: float) -> None:
        if results:
            await self._forward_write([(RESULT, [
                (destination, result.sop_instance_uid, result.version, result.state.value, result.due_at,
                 result.error, result.transfer_syntax_sent, int(result.stored), at, int(result.failed_attempt))
                for result in results])])

    async def request_forward_commitment(self, transaction: ForwardTransaction,
                                         sop_instance_uids: Sequence[str]) -> None:
        await self._forward_write([
            (INSERT_TRANSACTION, [(transaction.transaction_uid, transaction.destination,
                                   transaction.study_instance_uid, transaction.instances, transaction.requested_at,
                                   transaction.deadline)]),
            (REQUEST, [(transaction.destination, uid, transaction.transaction_uid) for uid in sop_instance_uids]),
        ])

    async def cancel_forward_commitment(self, transaction_uid: str, due_at: float, error: str) -> None:
        await self._forward_write([(CANCEL_ITEMS, [(transaction_uid, due_at, error)]),
                                   (DELETE_TRANSACTION, [(transaction_uid,)])])

    async def apply_forward_report(self, transaction_uid: str, committed: Sequence[str],
                                   failed: Sequence[tuple[str, str, bool]], at: float, resend_limit: int,
                                   resend_at: float) -> tuple[ForwardTransaction, int] | None:
        rows = await self._select_rows(TRANSACTION, (transaction_uid,))
        if not rows:
            return None
        [(before,)] = await self._select_rows(COUNT_COMMITTED, (transaction_uid,))
        event_type = 2 if failed else 1
        await self._forward_write([
            (REPORTED, [(transaction_uid, at, event_type)]),
            (COMMITTED, [(transaction_uid, uid, at) for uid in committed]),
            (NOT_COMMITTED, [(transaction_uid, uid, reason, int(permanent), resend_limit, at, resend_at)
                             for uid, reason, permanent in failed]),
        ])
        [(after,)] = await self._select_rows(COUNT_COMMITTED, (transaction_uid,))
        return _transaction(rows[0]), after - before

    async def expire_forward_commitments(self, now: float, requests: int, resend_limit: int,
                                         limit: int = 100) -> list[ForwardTransaction]:
        expired = [_transaction(row) for row in await self._select_rows(EXPIRED, (now, limit))]
        if expired:
            await self._forward_write([
                (EXPIRE_ITEMS, [(txn.transaction_uid, requests, resend_limit, now) for txn in expired]),
                (REPORTED, [(txn.transaction_uid, now, 0) for txn in expired]),
            ])
        return expired

    async def forward_destinations(self, finished: bool = True) -> list[DestinationStatus]:
        known = {row[0]: row for row in await self._select_rows(DESTINATIONS, ())}
        counts: dict[str, dict[str, int]] = {}
        oldest: dict[str, float] = {}
        for destination, state, count, queued_at in await self._select_rows(ITEM_COUNTS, (int(finished),)):
            counts.setdefault(destination, {})[state] = count
            if state in ("queued", "sent", "requested"):
                oldest[destination] = min(queued_at, oldest.get(destination, queued_at))
        statuses = []
        for name in sorted(set(known) | set(counts)):
            row = known.get(name)
            fields: dict[str, Any] = {} if row is None else {
                "paused": bool(row[1]), "failures": row[2], "backoff_until": row[3], "last_error": row[4],
                "last_error_at": row[5], "last_success_at": row[6]}
            statuses.append(DestinationStatus(name, items=counts.get(name, {}),
                                              oldest_waiting_since=oldest.get(name), **fields))
        return statuses

    async def update_forward_destination(self, name: str, at: float, *, paused: bool | None = None,
                                         error: str | None = None, backoff_until: float = 0.0,
                                         succeeded: bool = False) -> None:
        steps: list[tuple[str, list[tuple[Any, ...]]]] = []
        if paused is not None:
            steps.append((PAUSE, [(name, int(paused))]))
        if error is not None:
            steps.append((UNREACHABLE, [(name, error, at, backoff_until)]))
        if succeeded:
            steps.append((REACHED, [(name, at)]))
        if steps:
            await self._forward_write(steps)

    async def forward_items(self, *, study_instance_uid: str = "", destination: str = "",
                            state: ForwardState | None = None, limit: int = 1000) -> list[ForwardItem]:
        rows = await self._select_rows(ITEMS, (study_instance_uid, destination,
                                                "" if state is None else state.value, limit))
        return [_item(row) for row in rows]

    async def withdraw_forwards(self, study_instance_uid: str, sop_instance_uids: Collection[str],
                                now: float) -> list[str]:
        """Instances withdrawn from the study by a rejection note: those not yet sent are sent nowhere (their items
        go; a re-drive skips rejected ones too), those being sent finish. Returns the destinations that have or may
        have any of them, where the note must go: read before the items go (one sent before, then re-queued) and
        after (one leased meanwhile)."""
        if not sop_instance_uids:
            return []
        before = await self._select_rows(REACHED_BY, (study_instance_uid, now))
        await self._forward_write([(WITHDRAW, [(uid, study_instance_uid, now) for uid in sorted(sop_instance_uids)])])
        after = await self._select_rows(REACHED_BY, (study_instance_uid, now))
        return sorted({destination for destination, uid in (*before, *after) if uid in sop_instance_uids})

    async def redrive_forwards(self, now: float, *, destination: str = "", study_instance_uid: str = "",
                               resend: bool = False) -> int:
        [count] = await self._forward_write([(REDRIVE, [(now, destination, study_instance_uid, int(resend))])])
        return count
