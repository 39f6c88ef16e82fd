"""The dead-letter topic: what could not be processed, why, and how to send it through again.

An entry names the stage, the reason and the offsets of the instance's records on the instances topic. To
re-drive it, ``redrive`` reads those records back and publishes them again as a new run (a new instance id),
so the store pool processes them as if just received; a ``redriven`` record then closes the entry, and
``entries`` lists only the open ones. Records past the bus's retention cannot be re-driven, and say so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import envelope
from gateway.bus import Bus, Record
from gateway.settings import TopicSettings

REDRIVEN = "redriven"


@dataclass(frozen=True, slots=True)
class Entry:
    instance_id: str
    stage: str
    reason: str
    failed_at: str
    study_instance_uid: str
    topic: str
    partition: int
    offsets: tuple[int, ...]

    def summary(self) -> dict[str, Any]:
        """What an operator sees: identifiers and the reason, never patient data."""
        return {"instance_id": self.instance_id, "stage": self.stage, "reason": self.reason,
                "failed_at": self.failed_at, "study_instance_uid": self.study_instance_uid,
                "records": f"{self.topic}[{self.partition}] {len(self.offsets)} records"}


def entry_value(stage: str, reason: str, instance_id: str, study: str, records: list[Record]) -> bytes:
    return orjson.dumps({
        "stage": stage, "reason": reason, "failed_at": datetime.now(UTC).isoformat(), "instance_id": instance_id,
        "study_instance_uid": study, "topic": records[0].topic, "partition": records[0].partition,
        "offsets": [record.offset for record in records],
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
                found[value["instance_id"]] = Entry(
                    value["instance_id"], value["stage"], value["reason"], value["failed_at"],
                    value["study_instance_uid"], value["topic"], value["partition"], tuple(value["offsets"]),
                )
    return sorted(found.values(), key=lambda entry: entry.failed_at)


async def redrive(bus: Bus, topics: TopicSettings, entry: Entry) -> str:
    """Publish the entry's records again as a new run; returns the new instance id."""
    records = await bus.read(entry.topic, entry.partition, entry.offsets)
    if len(records) != len(entry.offsets):
        raise LookupError(f"{len(entry.offsets) - len(records)} of the instance's records are no longer on the bus "
                          "(past retention): it cannot be re-driven; ask the sender to send it again")
    new_id = uuid.uuid4().hex
    async with bus.producer() as producer:
        deliveries = [await producer.send(entry.topic, record.key, record.value, _renamed(record, new_id))
                      for record in records]
        for delivery in deliveries:
            await delivery
        closing = orjson.dumps({REDRIVEN: entry.instance_id, "as": new_id, "at": datetime.now(UTC).isoformat()})
        await producer.publish(topics.dead_letter, entry.study_instance_uid.encode(), closing)
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
