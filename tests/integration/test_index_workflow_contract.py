"""The index's workflow state (stability, commitments, deliveries), against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from gateway.index import (
    Commitment,
    CommitmentItem,
    CorrectionPolicy,
    Delivery,
    DeliveryState,
    Index,
    InstanceStatus,
    Registration,
)
from tests.integration.test_index_contract import Store, index, make_row, new_uid, postgres_url, store

__all__ = ["index", "postgres_url", "store"]

CT = "1.2.840.10008.5.1.4.1.1.2"
KINDS = ("ian", "commitment-report")


def a_commitment(references: int = 2, deadline: float | None = None) -> Commitment:
    now = time.time()
    items = tuple(CommitmentItem(CT, new_uid()) for _ in range(references))
    return Commitment(new_uid(), "MODALITY1", now, deadline if deadline is not None else now + 600, items,
                      {"topic": "dicomgw.events", "partition": 0, "offset": 7})


def a_delivery(subject: str, kind: str = "ian", due: float | None = None, **changes: object) -> Delivery:
    now = time.time()
    delivery = Delivery(f"{kind}:{subject}:RIS1", kind, subject, "RIS1", {"generation": 1, "n": [1, 2]}, now,
                        due if due is not None else now, {"topic": "t", "partition": 1, "offset": 2})
    return replace(delivery, **changes)


async def test_a_study_becomes_due_once_quiet_and_active_again_with_a_new_generation(index: Index) -> None:
    row = make_row()
    await index.record_instance(row, CorrectionPolicy.REPLACE)
    [activity] = await index.due_stable_studies(time.time() + 1)
    assert activity.study_instance_uid == row.study_instance_uid and activity.generation == 1
    assert await index.due_stable_studies(time.time() - 60) == []

    assert await index.mark_stable(activity, at=time.time())
    assert not await index.mark_stable(activity, at=time.time())
    assert await index.due_stable_studies(time.time() + 1) == []

    await index.record_instance(make_row(study_instance_uid=row.study_instance_uid), CorrectionPolicy.REPLACE)
    [again] = await index.due_stable_studies(time.time() + 1)
    assert again.generation == 2 and again.stable_at is None


async def test_a_study_written_to_after_it_was_read_is_not_marked_stable(index: Index) -> None:
    row = make_row()
    await index.record_instance(row, CorrectionPolicy.REPLACE)
    [activity] = await index.due_stable_studies(time.time() + 1)
    await asyncio.sleep(0.01)
    await index.record_instance(make_row(study_instance_uid=row.study_instance_uid), CorrectionPolicy.REPLACE)
    assert not await index.mark_stable(activity, at=time.time())


async def test_hastened_study_is_due_at_once(index: Index) -> None:
    row = make_row()
    await index.record_instance(row, CorrectionPolicy.REPLACE)
    assert await index.due_stable_studies(time.time() - 30) == []
    await index.hasten_stability(row.study_instance_uid)
    assert [a.study_instance_uid for a in await index.due_stable_studies(time.time() - 30)] == [
        row.study_instance_uid]


async def test_quarantined_instances_count_as_activity_too(index: Index) -> None:
    row = make_row(status=InstanceStatus.QUARANTINED)
    await index.record_instance(row, CorrectionPolicy.REPLACE)
    activity = await index.study_activity(row.study_instance_uid)
    assert activity is not None and activity.stable_at is None


async def test_a_commitment_is_recorded_once_and_reads_back(index: Index) -> None:
    commitment = a_commitment(3)
    assert await index.add_commitment(commitment)
    assert not await index.add_commitment(replace(commitment, requester_ae="OTHER"))
    assert await index.commitment(commitment.transaction_uid) == commitment
    assert await index.commitment(new_uid()) is None
    assert await index.expired_commitments(commitment.deadline - 1) == []
    assert [c.transaction_uid for c in await index.expired_commitments(commitment.deadline)] == [
        commitment.transaction_uid]


async def test_waiting_commitments_are_found_by_their_instances(index: Index) -> None:
    first, second = a_commitment(2), a_commitment(700)
    await index.add_commitment(first)
    await index.add_commitment(second)
    wanted = [first.items[1].sop_instance_uid, *(item.sop_instance_uid for item in second.items), new_uid()]
    assert await index.commitments_waiting_for(wanted) == sorted([first.transaction_uid, second.transaction_uid])
    assert await index.commitments_waiting_for([new_uid()]) == []


async def test_a_studys_commitments_are_those_naming_its_instances_latest_first(index: Index) -> None:
    row = make_row()
    await index.record_instance(row, CorrectionPolicy.REPLACE)
    other = make_row()
    await index.record_instance(other, CorrectionPolicy.REPLACE)
    earlier = replace(a_commitment(1), items=(CommitmentItem(CT, row.sop_instance_uid), CommitmentItem(CT, new_uid())))
    later = replace(a_commitment(0), requested_at=earlier.requested_at + 5,
                    items=(CommitmentItem(CT, row.sop_instance_uid), CommitmentItem(CT, other.sop_instance_uid)))
    unrelated = replace(a_commitment(1), items=(CommitmentItem(CT, other.sop_instance_uid),))
    for commitment in (earlier, later, unrelated):
        await index.add_commitment(commitment)
    assert [c.transaction_uid for c in await index.study_commitments(row.study_instance_uid)] == [
        later.transaction_uid, earlier.transaction_uid]
    assert (await index.study_commitments(row.study_instance_uid))[1] == earlier
    assert [c.transaction_uid for c in await index.study_commitments(row.study_instance_uid, limit=1)] == [
        later.transaction_uid]
    assert await index.study_commitments(new_uid()) == []


async def test_deciding_records_outcomes_and_queues_the_report_atomically(index: Index) -> None:
    commitment = a_commitment(2)
    await index.add_commitment(commitment)
    decided = (commitment.items[0], replace(commitment.items[1], failure_reason=0x0112))
    report = a_delivery(commitment.transaction_uid, kind="commitment-report")
    now = time.time()

    assert await index.decide_commitment(commitment.transaction_uid, decided, report, now)
    assert not await index.decide_commitment(commitment.transaction_uid, decided, report, now)

    stored = await index.commitment(commitment.transaction_uid)
    assert stored is not None and stored.items == decided and stored.decided_at == now
    assert await index.expired_commitments(commitment.deadline + 1) == []
    assert await index.commitments_waiting_for([commitment.items[0].sop_instance_uid]) == []
    assert await index.deliveries(commitment.transaction_uid) == [report]


async def test_deliveries_are_claimed_once_per_lease_and_finish_with_their_state(index: Index) -> None:
    now = time.time()
    due, later = a_delivery(new_uid(), due=now), a_delivery(new_uid(), due=now + 3600)
    await index.put_delivery(due, replace=False)
    await index.put_delivery(later, replace=False)

    [claimed] = await index.claim_deliveries(now, lease_seconds=60, limit=10, kinds=KINDS)
    assert claimed == due
    assert await index.claim_deliveries(now, lease_seconds=60, limit=10, kinds=KINDS) == []
    # a worker that died holding the lease: the delivery comes back once the lease runs out
    [reclaimed] = await index.claim_deliveries(now + 61, lease_seconds=60, limit=10, kinds=KINDS)
    assert reclaimed.delivery_id == due.delivery_id

    await index.finish_attempt(due.delivery_id, DeliveryState.PENDING, "connection refused", now + 5, now)
    assert await index.claim_deliveries(now + 1, lease_seconds=60, limit=10, kinds=KINDS) == []
    [retried] = await index.claim_deliveries(now + 6, lease_seconds=60, limit=10, kinds=KINDS)
    assert retried.attempts == 1 and retried.last_error == "connection refused"

    await index.finish_attempt(due.delivery_id, DeliveryState.DELIVERED, "", now + 6, now + 7)
    [delivered] = await index.deliveries(due.subject)
    assert delivered.state is DeliveryState.DELIVERED and delivered.attempts == 2
    assert delivered.delivered_at == now + 7
    assert await index.claim_deliveries(now + 10_000, lease_seconds=60, limit=10, kinds=("other",)) == []
    assert await index.claim_deliveries(now + 10_000, lease_seconds=60, limit=10, kinds=KINDS) == [later]


async def test_put_delivery_keeps_an_existing_one_unless_replacing(index: Index) -> None:
    subject = new_uid()
    first = a_delivery(subject)
    await index.put_delivery(first, replace=False)
    await index.finish_attempt(first.delivery_id, DeliveryState.FAILED, "refused", 0, time.time())

    await index.put_delivery(replace(first, payload={"generation": 2}), replace=False)
    [kept] = await index.deliveries(subject)
    assert kept.state is DeliveryState.FAILED and kept.payload == first.payload

    await index.put_delivery(replace(first, payload={"generation": 2}), replace=True)
    [renewed] = await index.deliveries(subject)
    assert renewed.state is DeliveryState.PENDING and renewed.attempts == 0 and renewed.payload == {"generation": 2}


async def test_two_adapters_on_one_store_never_claim_the_same_delivery(store: Store) -> None:
    async with await store.open() as first, await store.open() as second:
        await first.migrate()
        for _ in range(20):
            await first.put_delivery(a_delivery(new_uid()), replace=False)
        now = time.time()
        claims = await asyncio.gather(*(adapter.claim_deliveries(now, 60, limit=3, kinds=KINDS)
                                        for _ in range(5) for adapter in (first, second)))
    ids = [delivery.delivery_id for batch in claims for delivery in batch]
    assert len(ids) == len(set(ids)) == 20


async def test_a_new_registration_becomes_current_and_keeps_the_previous(index: Index) -> None:
    study = new_uid()
    first = Registration(study, 1, new_uid(), "urn:uuid:1", new_uid(), 3, time.time(), None)
    second = Registration(study, 2, new_uid(), "urn:uuid:2", new_uid(), 5, time.time(), "urn:uuid:1")
    await index.record_registration(first)
    assert await index.registrations(study) == [first]
    await index.record_registration(second)
    assert await index.registrations(study) == [second, replace(first, current=False)]
    assert await index.registrations(new_uid()) == []


async def test_overdue_lists_transactions_past_their_deadline_until_their_report_is_delivered(index: Index) -> None:
    now = time.time()
    on_time, undecided, reported, unreported = (a_commitment(deadline=now + 600), a_commitment(deadline=now - 5),
                                                a_commitment(deadline=now - 4), a_commitment(deadline=now - 3))
    for commitment in (on_time, undecided, reported, unreported):
        assert await index.add_commitment(commitment)
    for commitment in (reported, unreported):
        report = a_delivery(commitment.transaction_uid, "commitment-report")
        items = tuple(replace(item, failure_reason=0x0112) for item in commitment.items)
        assert await index.decide_commitment(commitment.transaction_uid, items, report, now)
    await index.finish_attempt(f"commitment-report:{reported.transaction_uid}:RIS1", DeliveryState.DELIVERED, "",
                               now, now)

    overdue = await index.overdue_commitments(now, "commitment-report")
    assert [c.transaction_uid for c in overdue] == [undecided.transaction_uid, unreported.transaction_uid]
    assert overdue[1].decided_at is not None and [i.failure_reason for i in overdue[1].items] == [0x0112, 0x0112]
    assert [c.transaction_uid for c in await index.overdue_commitments(now, "ian")] == [
        undecided.transaction_uid, reported.transaction_uid, unreported.transaction_uid], "only the report counts"
    waiting = sorted(await index.waiting_commitments("commitment-report"))
    assert waiting == sorted([on_time.requested_at, undecided.requested_at, unreported.requested_at])
