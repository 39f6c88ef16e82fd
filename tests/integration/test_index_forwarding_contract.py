"""The index's forwarding state (each instance at each destination), against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from gateway.index import ForwardItem, ForwardResult, ForwardState, ForwardTransaction, Index
from tests.integration.test_index_contract import index, new_uid, postgres_url, store

__all__ = ["index", "postgres_url", "store"]

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def an_item(study: str, destination: str = "kanta", version: int = 1, series: str = "1.2.3") -> ForwardItem:
    uid = new_uid()
    return ForwardItem(destination, uid, version, study, series, CT, EXPLICIT, f"objects/{uid}", 1234,
                       {"topic": "dicomgw.events", "partition": 0, "offset": 3})


async def test_items_wait_for_their_study_to_go_quiet_then_one_study_is_claimed_at_a_time(index: Index) -> None:
    now = time.time()
    study, other = new_uid(), new_uid()
    first = [an_item(study) for _ in range(3)]
    assert await index.enqueue_forwards(first, now, delay=5, max_delay=60) == 3
    assert await index.claim_forwards("kanta", now + 1, 30, 100) == []
    # a later instance of the study pushes the whole study back
    assert await index.enqueue_forwards([an_item(study)], now + 4, delay=5, max_delay=60) == 1
    assert await index.claim_forwards("kanta", now + 6, 30, 100) == []
    await index.enqueue_forwards([an_item(other)], now + 4, delay=5, max_delay=60)

    claimed = await index.claim_forwards("kanta", now + 10, 30, 100)
    assert len(claimed) == 4 and {item.study_instance_uid for item in claimed} == {study}
    assert all(item.state is ForwardState.QUEUED for item in claimed)
    [second] = await index.claim_forwards("kanta", now + 10, 30, 100)
    assert second.study_instance_uid == other
    assert await index.claim_forwards("kanta", now + 10, 30, 100) == []  # leased
    assert len(await index.claim_forwards("kanta", now + 41, 30, 100)) == 4  # the lease ran out: a worker died


async def test_a_study_pushed_back_forever_still_goes_after_the_longest_wait(index: Index) -> None:
    now = time.time()
    study = new_uid()
    for second in range(0, 70, 4):
        await index.enqueue_forwards([an_item(study)], now + second, delay=5, max_delay=60)
    assert len(await index.claim_forwards("kanta", now + 66, 30, 100)) >= 1


async def test_the_same_version_is_queued_once_a_newer_version_or_a_failed_one_again(index: Index) -> None:
    now = time.time()
    item = an_item(new_uid())
    assert await index.enqueue_forwards([item], now, 0, 0) == 1
    assert await index.enqueue_forwards([item], now, 0, 0) == 0
    [claimed] = await index.claim_forwards("kanta", now + 1, 30, 10)
    await index.record_forward_results("kanta", [ForwardResult(item.sop_instance_uid, 1, ForwardState.FAILED,
                                                               error="refused 0xC000", failed_attempt=True)],
                                       now + 2)
    [failed] = await index.forward_items(destination="kanta")
    assert failed.state is ForwardState.FAILED and failed.last_error == "refused 0xC000"
    assert await index.enqueue_forwards([item], now + 3, 0, 0) == 1  # its event again: a re-drive
    assert await index.enqueue_forwards([replace(item, version=2, storage_key="v2")], now + 3, 0, 0) == 1
    [current] = await index.forward_items(destination="kanta")
    assert current.version == 2 and current.state is ForwardState.QUEUED and current.storage_key == "v2"


async def test_a_result_for_a_version_replaced_meanwhile_changes_nothing(index: Index) -> None:
    now = time.time()
    item = an_item(new_uid())
    await index.enqueue_forwards([item], now, 0, 0)
    await index.claim_forwards("kanta", now + 1, 30, 10)
    await index.enqueue_forwards([replace(item, version=2)], now + 2, 0, 0)
    await index.record_forward_results(
        "kanta", [ForwardResult(item.sop_instance_uid, 1, ForwardState.SENT, stored=True)], now + 3)
    [current] = await index.forward_items()
    assert current.version == 2 and current.state is ForwardState.QUEUED and current.sends == 0


async def test_sent_committed_and_failed_commitments_follow_the_report(index: Index) -> None:
    now = time.time()
    study = new_uid()
    items = [an_item(study) for _ in range(4)]
    await index.enqueue_forwards(items, now, 0, 0)
    claimed = await index.claim_forwards("kanta", now + 1, 30, 10)
    await index.record_forward_results("kanta", [
        ForwardResult(item.sop_instance_uid, 1, ForwardState.SENT, transfer_syntax_sent=EXPLICIT, stored=True)
        for item in claimed], now + 2)
    transaction = ForwardTransaction(new_uid(), "kanta", study, 4, now + 3, now + 600)
    await index.request_forward_commitment(transaction, [item.sop_instance_uid for item in items])
    assert {item.state for item in await index.forward_items(study_instance_uid=study)} == {ForwardState.REQUESTED}

    committed = [item.sop_instance_uid for item in items[:2]]
    failed = [(items[2].sop_instance_uid, "0x0112", False), (items[3].sop_instance_uid, "0x0119", True)]
    applied = await index.apply_forward_report(transaction.transaction_uid, committed, failed, now + 4, 3, now + 10)
    assert applied is not None
    before, newly_committed = applied
    assert before.reported_at is None and before.requested_at == now + 3 and newly_committed == 2
    states = {item.sop_instance_uid: item for item in await index.forward_items(study_instance_uid=study)}
    assert [states[uid].state for uid in committed] == [ForwardState.COMMITTED] * 2
    assert states[items[2].sop_instance_uid].state is ForwardState.QUEUED  # sent again
    assert states[items[2].sop_instance_uid].last_error == "0x0112"
    assert states[items[3].sop_instance_uid].state is ForwardState.FAILED  # permanent
    # the same report again changes nothing; an unknown transaction is None
    again = await index.apply_forward_report(transaction.transaction_uid, committed,
                                             [(committed[0], "0x0110", False)], now + 5, 3, now + 10)
    assert again is not None and again[1] == 0
    assert (await index.forward_items(study_instance_uid=study))[0].state in (ForwardState.COMMITTED,
                                                                             ForwardState.QUEUED,
                                                                             ForwardState.FAILED)
    assert states[committed[0]].state is ForwardState.COMMITTED
    assert await index.apply_forward_report(new_uid(), committed, [], now, 3, now) is None

    [resent] = await index.claim_forwards("kanta", now + 11, 30, 10)
    assert resent.sop_instance_uid == items[2].sop_instance_uid and resent.sends == 1


async def test_an_instance_sent_as_often_as_allowed_fails_when_not_committed(index: Index) -> None:
    now = time.time()
    study = new_uid()
    item = an_item(study)
    await index.enqueue_forwards([item], now, 0, 0)
    for attempt in range(2):
        await index.claim_forwards("kanta", now + 100 * attempt + 1, 30, 10)
        await index.record_forward_results(
            "kanta", [ForwardResult(item.sop_instance_uid, 1, ForwardState.SENT, stored=True)], now + 100 * attempt + 2)
        transaction = ForwardTransaction(new_uid(), "kanta", study, 1, now, now + 600)
        await index.request_forward_commitment(transaction, [item.sop_instance_uid])
        await index.apply_forward_report(transaction.transaction_uid, [], [(item.sop_instance_uid, "0x0112", False)],
                                         now + 100 * attempt + 3, 2, now + 100 * attempt + 4)
    [done] = await index.forward_items(study_instance_uid=study)
    assert done.state is ForwardState.FAILED and done.sends == 2 and done.finished_at is not None

    assert await index.redrive_forwards(now + 300, study_instance_uid=study) == 1
    [again] = await index.forward_items(study_instance_uid=study)
    assert again.state is ForwardState.QUEUED and again.sends == 0 and again.last_error == ""


async def test_a_commitment_without_report_is_requested_again_then_the_instance_sent_again(index: Index) -> None:
    now = time.time()
    study = new_uid()
    item = an_item(study)
    await index.enqueue_forwards([item], now, 0, 0)
    await index.claim_forwards("kanta", now + 1, 30, 10)
    await index.record_forward_results(
        "kanta", [ForwardResult(item.sop_instance_uid, 1, ForwardState.SENT, stored=True)], now + 2)
    for round_ in range(2):
        transaction = ForwardTransaction(new_uid(), "kanta", study, 1, now, now + 10 + round_ * 100)
        await index.request_forward_commitment(transaction, [item.sop_instance_uid])
        assert await index.expire_forward_commitments(now + 5 + round_ * 100, 2, 3) == []
        [expired] = await index.expire_forward_commitments(now + 11 + round_ * 100, 2, 3)
        assert expired.transaction_uid == transaction.transaction_uid
        [state] = await index.forward_items(study_instance_uid=study)
        assert state.state is (ForwardState.SENT if round_ == 0 else ForwardState.QUEUED), round_
        if round_ == 0:
            await index.claim_forwards("kanta", now + 12, 30, 10)  # what the sender does: lease, then request
    assert await index.expire_forward_commitments(now + 1000, 2, 3) == []


async def test_an_instance_stored_keeps_its_lease_until_its_commitment_is_requested(index: Index) -> None:
    """Another worker must not take the batch's stored instances and ask for their commitment a second time."""
    now = time.time()
    study = new_uid()
    items = [an_item(study) for _ in range(2)]
    await index.enqueue_forwards(items, now, 0, 0)
    await index.claim_forwards("kanta", now + 1, 30, 10)
    await index.record_forward_results(
        "kanta", [ForwardResult(items[0].sop_instance_uid, 1, ForwardState.SENT, stored=True)], now + 2)
    assert await index.claim_forwards("kanta", now + 3, 30, 10) == []
    transaction = ForwardTransaction(new_uid(), "kanta", study, 1, now, now + 600)
    await index.request_forward_commitment(transaction, [items[0].sop_instance_uid])
    [requested] = await index.forward_items(state=ForwardState.REQUESTED, study_instance_uid=study)
    assert requested.transaction_uid == transaction.transaction_uid


async def test_a_commitment_request_that_did_not_go_through_is_undone(index: Index) -> None:
    now = time.time()
    study = new_uid()
    item = an_item(study)
    await index.enqueue_forwards([item], now, 0, 0)
    await index.claim_forwards("kanta", now + 1, 30, 10)
    await index.record_forward_results(
        "kanta", [ForwardResult(item.sop_instance_uid, 1, ForwardState.SENT, stored=True)], now + 2)
    transaction = ForwardTransaction(new_uid(), "kanta", study, 1, now, now + 600)
    await index.request_forward_commitment(transaction, [item.sop_instance_uid])
    await index.cancel_forward_commitment(transaction.transaction_uid, now + 30, "connection refused")
    [state] = await index.forward_items(study_instance_uid=study)
    assert state.state is ForwardState.SENT and state.last_error == "connection refused" and state.due_at == now + 30
    assert await index.apply_forward_report(transaction.transaction_uid, [item.sop_instance_uid], [], now, 3,
                                            now) is None
    assert await index.claim_forwards("kanta", now + 29, 30, 10) == []
    assert [c.state for c in await index.claim_forwards("kanta", now + 31, 30, 10)] == [ForwardState.SENT]


async def test_destinations_show_counts_pauses_and_reachability(index: Index) -> None:
    now = time.time()
    await index.enqueue_forwards([an_item(new_uid(), "pacs"), an_item(new_uid(), "pacs")], now, 0, 0)
    await index.update_forward_destination("pacs", now, paused=True)
    await index.update_forward_destination("pacs", now + 1, error="connection refused", backoff_until=now + 60)
    await index.update_forward_destination("pacs", now + 2, error="connection refused", backoff_until=now + 90)
    [pacs] = [status for status in await index.forward_destinations() if status.name == "pacs"]
    assert pacs.paused and pacs.failures == 2 and pacs.backoff_until == now + 90
    assert pacs.items == {"queued": 2} and pacs.oldest_waiting_since == now
    assert pacs.last_error == "connection refused" and pacs.last_error_at == now + 2
    await index.update_forward_destination("pacs", now + 3, paused=False, succeeded=True)
    [pacs] = [status for status in await index.forward_destinations() if status.name == "pacs"]
    assert not pacs.paused and pacs.failures == 0 and pacs.last_success_at == now + 3


async def test_competing_workers_never_lease_the_same_item(index: Index) -> None:
    now = time.time()
    studies = [new_uid() for _ in range(6)]
    await index.enqueue_forwards([an_item(study) for study in studies for _ in range(5)], now, 0, 0)
    uids: list[str] = []
    for _ in range(6):  # a worker that lost a race for a study finds nothing this round, the next study later
        claims = await asyncio.gather(*(index.claim_forwards("kanta", now + 1, 30, 100) for _ in range(10)))
        uids += [item.sop_instance_uid for claim in claims for item in claim]
    assert len(uids) == len(set(uids)) == 30


async def test_withdrawn_instances_go_nowhere_more_and_the_note_goes_where_they_are(index: Index) -> None:
    """Stored at one destination, being sent to another, waiting for a third: the first two get the note, the
    third nothing (its item goes); a newer version of the same UID in another study (a move) stays queued."""
    now = time.time()
    study = new_uid()
    stored, sending, waiting = an_item(study, "kanta"), an_item(study, "pacs"), an_item(study, "viewer")
    sending, waiting = replace(sending, sop_instance_uid=stored.sop_instance_uid), \
        replace(waiting, sop_instance_uid=stored.sop_instance_uid)
    await index.enqueue_forwards([stored, sending, waiting], now, 0, 0)
    await index.claim_forwards("kanta", now + 1, 30, 10)
    await index.record_forward_results(
        "kanta", [ForwardResult(stored.sop_instance_uid, 1, ForwardState.DELIVERED, stored=True)], now + 2)
    await index.claim_forwards("pacs", now + 1, 30, 10)  # leased: the attempt is under way
    moved = replace(an_item(new_uid(), "archive"), sop_instance_uid=stored.sop_instance_uid, version=2)
    await index.enqueue_forwards([moved], now, 0, 0)

    reached = await index.withdraw_forwards(study, {stored.sop_instance_uid}, now + 3)

    assert reached == ["kanta", "pacs"]
    left = {(item.destination, item.study_instance_uid) for item in await index.forward_items(limit=100)
            if item.sop_instance_uid == stored.sop_instance_uid}
    assert left == {("kanta", study), ("pacs", study), ("archive", moved.study_instance_uid)}
