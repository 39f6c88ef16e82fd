-- Storage-commitment requests too large for one bus record come in parts: each part is kept here until the
-- request is whole, which is then recorded in commitments as one transaction. A request is its Transaction UID and
-- request time (a Transaction UID used again is another request); items are the part's [class, instance] pairs.
CREATE TABLE commitment_parts (
    transaction_uid TEXT NOT NULL,
    requested_at REAL NOT NULL,
    part INTEGER NOT NULL CHECK (part >= 1),
    parts INTEGER NOT NULL CHECK (part <= parts),
    items TEXT NOT NULL CHECK (json_valid(items)),
    PRIMARY KEY (transaction_uid, requested_at, part)
) STRICT;
CREATE INDEX commitment_parts_requested_at ON commitment_parts (requested_at);
