"""The dead-letter topic: what could not be processed, why, and how to send it through again.

An entry names the stage, the reason and the offsets of the records that caused the work: an instance's
records on the instances topic (store), or the event a notification came from (notify: the storage-commitment
request, the study-stable event). To re-drive it, ``redrive`` reads those records back and publishes them
again - an instance as a new run with a new instance id - so the stage processes them as if just received; a
``redriven`` record then closes the entry, and ``entries`` lists only the open ones. Records past the bus's
retention cannot be re-driven, and say so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.bus import Bus, Record
from gateway.core import envelope
from gateway.settings import TopicSettings

REDRIVEN = "redriven"


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: str
    """The instance id of a store entry, the delivery id of a notify entry."""
    stage: str
    reason: str
    failed_at: str
    subject: str
    """The Study Instance UID, or the Transaction UID of a storage-commitment report."""
    topic: str
    partition: int
    offsets: tuple[int, ...]

    def summary(self) -> dict[str, Any]:
        """What an operator sees: identifiers and the reason, never patient data."""
        return {"entry_id": self.entry_id, "stage": self.stage, "reason": self.reason,
                "failed_at": self.failed_at, "subject": self.subject,
                "records": f"{self.topic}[{self.partition}] {len(self.offsets)} records"}


def entry_value(stage: str, reason: str, entry_id: str, subject: str, topic: str, partition: int,
                offsets: list[int]) -> bytes:
    return orjson.dumps({
        "stage": stage, "reason": reason, "failed_at": datetime.now(UTC).isoformat(), "entry_id": entry_id,
        "subject": subject, "topic": topic, "partition": partition, "offsets": offsets,
    })


async def entries(bus: Bus, topics: TopicSettings) -> list[Entry]:
    """Open entries, oldest first (read with a throwaway group, so nothing is committed)."""
    found: dict[str, Entry] = {}
    async with bus.consumer(f"dicomgw-dead-letter-reader-{uuid.uuid4().hex[:8]}", [topics.dead_letter]) as reader:
        while records := await reader.fetch(timeout=2.0):
            for record in records:
                value = orjson.loads(record.value)
                if REDRIVEN in value:
                    found.pop(value[REDRIVEN], None)
                    continue
                found[value["entry_id"]] = Entry(
                    value["entry_id"], value["stage"], value["reason"], value["failed_at"],
                    value["subject"], value["topic"], value["partition"], tuple(value["offsets"]),
                )
    return sorted(found.values(), key=lambda entry: entry.failed_at)


async def redrive(bus: Bus, topics: TopicSettings, entry: Entry) -> str:
    """Publish the entry's records again; returns the new instance id (an instance's records form a new run)."""
    records = await bus.read(entry.topic, entry.partition, entry.offsets)
    if len(records) != len(entry.offsets):
        raise LookupError(f"{len(entry.offsets) - len(records)} of the entry's records are no longer on the bus "
                          "(past retention): it cannot be re-driven; ask the sender to send it again")
    new_id = uuid.uuid4().hex
    async with bus.producer() as producer:
        deliveries = [await producer.send(entry.topic, record.key, record.value, _renamed(record, new_id))
                      for record in records]
        for delivery in deliveries:
            await delivery
        closing = orjson.dumps({REDRIVEN: entry.entry_id, "as": new_id, "at": datetime.now(UTC).isoformat()})
        await producer.publish(topics.dead_letter, entry.subject.encode(), closing)
    return new_id


def _renamed(record: Record, instance_id: str) -> list[tuple[str, bytes]]:
    headers = []
    for name, value in record.headers:
        if name == envelope.INSTANCE:
            value = instance_id.encode()
        elif name in (envelope.BEGIN, envelope.ENVELOPE):
            value = orjson.dumps({**orjson.loads(value), "instance_id": instance_id})
        headers.append((name, value))
    return headers
