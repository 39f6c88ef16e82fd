"""The parts of storage-commitment requests published in several bus records, kept by the index until each request
is whole, against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import time

from gateway.index import Commitment, CommitmentItem, CommitmentPart, Index
from tests.integration.test_index_contract import Store, index, new_uid, postgres_url, store

__all__ = ["index", "postgres_url", "store"]

CT = "1.2.840.10008.5.1.4.1.1.2"


def request(parts: int, per_part: int = 3) -> tuple[str, float, list[CommitmentPart]]:
    """A request's parts, in order; each a few references of its own."""
    transaction, at = new_uid(), time.time()
    return transaction, at, [
        CommitmentPart(transaction, at, number, parts, tuple(CommitmentItem(CT, new_uid()) for _ in range(per_part)))
        for number in range(1, parts + 1)]


def whole(parts: list[CommitmentPart]) -> tuple[CommitmentItem, ...]:
    return tuple(item for part in parts for item in part.items)


async def test_a_request_is_whole_once_every_part_is_kept_in_whatever_order_and_however_often(index: Index) -> None:
    _, _, parts = request(4)
    for part in (parts[2], parts[0], parts[2], parts[3]):
        assert await index.add_commitment_part(part) is None
    assert await index.add_commitment_part(parts[1]) == whole(parts)
    assert await index.add_commitment_part(parts[0]) == whole(parts), "a part again: still whole"


async def test_another_request_of_the_same_transaction_uid_is_kept_apart(index: Index) -> None:
    transaction, at, first = request(2)
    again = [CommitmentPart(transaction, at + 5, part.part, part.parts, part.items) for part in first]
    assert await index.add_commitment_part(first[0]) is None
    assert await index.add_commitment_part(again[1]) is None
    assert await index.add_commitment_part(again[0]) == whole(again)
    assert await index.add_commitment_part(first[1]) == whole(first)


async def test_a_part_of_a_request_already_recorded_returns_its_references_and_is_not_kept(index: Index) -> None:
    transaction, at, parts = request(3)
    recorded = Commitment(transaction, "MODALITY1", at, at + 600, whole(parts), {"topic": "t", "partition": 0,
                                                                                  "offset": 1})
    assert await index.add_commitment(recorded)
    assert await index.add_commitment_part(parts[1]) == whole(parts)
    assert await index.expire_commitment_parts(time.time() + 1) == []


async def test_parts_are_dropped_per_request_and_expire_by_request_time(index: Index) -> None:
    first, first_at, first_parts = request(2)
    second, _, second_parts = request(2)
    await asyncio.sleep(0.01)
    third, third_at, third_parts = request(2)
    for part in (first_parts[0], first_parts[1], second_parts[0], third_parts[0]):
        await index.add_commitment_part(part)
    await index.drop_commitment_parts(first, first_at)
    assert await index.add_commitment_part(first_parts[0]) is None, "dropped: kept afresh"
    assert await index.expire_commitment_parts(third_at) == sorted([first, second])
    assert await index.expire_commitment_parts(third_at) == []
    assert await index.add_commitment_part(third_parts[1]) == whole(third_parts), "a later request is left"


async def test_a_request_of_the_maximum_comes_back_whole_and_in_order(index: Index) -> None:
    _, _, parts = request(34, per_part=3_000)
    for part in reversed(parts[1:]):
        assert await index.add_commitment_part(part) is None
    assert await index.add_commitment_part(parts[0]) == whole(parts)


async def test_two_adapters_keeping_the_last_parts_at_once_both_see_the_request_whole_once(store: Store) -> None:
    """Two members of the notify group during a rebalance: neither may miss the part the other keeps."""
    _, _, parts = request(3)
    async with await store.open() as first, await store.open() as second:
        await first.migrate()
        await first.add_commitment_part(parts[0])
        found = await asyncio.gather(first.add_commitment_part(parts[1]), second.add_commitment_part(parts[2]))
    assert [result for result in found if result is not None] == [whole(parts)]
