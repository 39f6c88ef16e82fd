-- Storage-commitment requests too large for one bus record come in parts: each part is kept here until the
-- request is whole, which is then recorded in commitments as one transaction. A request is its Transaction UID and
-- request time (a Transaction UID used again is another request); items are the part's [class, instance] pairs.
CREATE TABLE commitment_parts (
    transaction_uid text NOT NULL,
    requested_at double precision NOT NULL,
    part integer NOT NULL CHECK (part >= 1),
    parts integer NOT NULL CHECK (part <= parts),
    items jsonb NOT NULL,
    PRIMARY KEY (transaction_uid, requested_at, part)
);
CREATE INDEX commitment_parts_requested_at ON commitment_parts (requested_at);
