-- What happens to a study after its instances are stored: when it became stable, its storage-commitment
-- transactions, and the outbound notifications (commitment reports, IANs) with their delivery state.
-- Workflow times are UNIX epoch seconds (double precision), the same in both dialects.

CREATE TABLE study_activity (
    study_instance_uid text PRIMARY KEY,
    last_instance_at double precision NOT NULL,
    stable_at double precision,
    generation integer NOT NULL DEFAULT 1
);
CREATE INDEX study_activity_due ON study_activity (last_instance_at) WHERE stable_at IS NULL;

CREATE TABLE commitments (
    transaction_uid text PRIMARY KEY,
    requester_ae text NOT NULL,
    requested_at double precision NOT NULL,
    deadline double precision NOT NULL,
    decided_at double precision,
    source jsonb NOT NULL
);
CREATE INDEX commitments_open ON commitments (deadline) WHERE decided_at IS NULL;

CREATE TABLE commitment_items (
    transaction_uid text NOT NULL REFERENCES commitments (transaction_uid),
    position integer NOT NULL,
    sop_class_uid text NOT NULL,
    sop_instance_uid text NOT NULL,
    failure_reason integer,
    PRIMARY KEY (transaction_uid, position)
);
CREATE INDEX commitment_items_instance ON commitment_items (sop_instance_uid);

CREATE TABLE deliveries (
    delivery_id text PRIMARY KEY,
    kind text NOT NULL,
    subject text NOT NULL,
    target_ae text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    lease_until double precision NOT NULL DEFAULT 0,
    last_error text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    delivered_at double precision,
    source jsonb NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_subject ON deliveries (subject);
