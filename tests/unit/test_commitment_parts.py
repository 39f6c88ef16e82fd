"""Storage commitment requests up to the documented maximum: the limits agree with each other and with the
statement, a part of the worst case fits a bus record, and the parts travel as versioned events."""

from __future__ import annotations

import orjson
import pytest

from gateway.bus import MAX_RECORD_BYTES, record_size
from gateway.core import events
from gateway.core.events import CommitmentRequested
from gateway.dicom import commitment
from gateway.dicom.acse import UNCOMPRESSED
from gateway.dicom.dataset import encode
from gateway.ingest import conformance
from gateway.ingest.stgcmt import ACTION_INFORMATION_LIMIT, REFERENCES_PER_RECORD
from tests.component.test_commitment_large import action_information_bytes
from tests.component.test_commitment_receiver import action_information

CT = "1.2.840.10008.5.1.4.1.1.2"


def longest_uid(n: int) -> str:
    """A UID of the full 64 characters, the n-th of its kind."""
    prefix = f"1.2.826.0.1.3680043.10.{n}."
    return prefix + "9" * (64 - len(prefix))


def worst_case_part() -> CommitmentRequested:
    """The largest record a part can be: 64-character UIDs, AE titles of 16, the longest peer address."""
    return CommitmentRequested(
        transaction_uid=longest_uid(0), requester_ae="R" * 16, called_ae="C" * 16,
        peer="[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535",
        references=tuple((longest_uid(1), longest_uid(n)) for n in range(REFERENCES_PER_RECORD)),
        requested_at="2026-11-30T08:00:00.123456+00:00", reply_to="https://" + "r" * 240 + ":65535",
        part=34, parts=34)


def test_a_worst_case_part_stays_well_under_the_bus_record_limit() -> None:
    part = worst_case_part()
    size = record_size(part.key, events.encode(part), ())
    assert size < 410_000 < MAX_RECORD_BYTES // 2, size


def test_the_maximum_request_fits_the_action_information_limit() -> None:
    """Measured per reference on a thousand of the longest, in each syntax a request may come in."""
    sample = 1_000
    for syntax in UNCOMPRESSED:
        empty = len(encode(action_information(longest_uid(0), []), syntax))
        full = len(encode(action_information(longest_uid(0), [(longest_uid(1), longest_uid(n))
                                                              for n in range(sample)]), syntax))
        per_reference = (full - empty) / sample + 16  # items of undefined length: their delimiter and more
        assert per_reference * commitment.MAX_REFERENCES < ACTION_INFORMATION_LIMIT, (syntax, per_reference)


def test_the_statement_names_the_maximum_its_refusal_and_the_part_size() -> None:
    text = conformance.STATEMENT.read_text(encoding="utf-8")
    assert f"**Maximum references per request: {commitment.MAX_REFERENCES:,}**" in text
    assert f"too many references (N > {commitment.MAX_REFERENCES})" in text
    assert f"at most {REFERENCES_PER_RECORD:,} references" in text


def test_a_request_in_one_record_is_written_as_before_and_parts_as_version_2() -> None:
    single = CommitmentRequested(transaction_uid="1.2.9", requester_ae="CT1", called_ae="DICOMGW", peer="p",
                                 references=((CT, "1.2.3.4"),), requested_at="2026-11-30T08:00:00+00:00")
    written = orjson.loads(events.encode(single))
    assert written["v"] == 1 and (written["part"], written["parts"]) == (1, 1)
    part = worst_case_part()
    assert orjson.loads(events.encode(part))["v"] == 2
    assert events.decode(events.encode(part)) == part


def test_a_request_written_before_parts_existed_is_the_whole_request() -> None:
    record = {"type": "commitment.requested", "transaction_uid": "1.2.9", "requester_ae": "CT1",
              "called_ae": "DICOMGW", "peer": "p", "references": [[CT, "1.2.3.4"]], "requested_at": "t"}
    decoded = events.decode(orjson.dumps(record))
    assert isinstance(decoded, CommitmentRequested) and (decoded.part, decoded.parts) == (1, 1)


@pytest.mark.parametrize("syntax", UNCOMPRESSED)
def test_references_are_read_from_their_raw_values_in_every_syntax(syntax: str) -> None:
    references = [(CT, "1.2.3"), (CT, "1.2.34"), ("1.2.840.10008.5.1.4.1.1.4", longest_uid(7))]  # odd: padded
    parsed = commitment.parse_action_information(encode(action_information("1.2.9", references), syntax), syntax)
    assert parsed == ("1.2.9", tuple(references))


@pytest.mark.parametrize("uid", ["1.2.3 .4", "1.2.3\\1.2.4", "1." + "2" * 63, "1.2.\u00e9"])
def test_a_reference_that_is_not_a_uid_is_refused(uid: str) -> None:
    data = action_information_bytes("1.2.9", [(CT, "1.2.3"), (CT, uid)])
    with pytest.raises(ValueError, match="not a UID"):
        commitment.parse_action_information(data, UNCOMPRESSED[0])
