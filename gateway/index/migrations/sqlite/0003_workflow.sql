-- What happens to a study after its instances are stored: when it became stable, its storage-commitment
-- transactions, and the outbound notifications (commitment reports, IANs) with their delivery state.
-- Workflow times are UNIX epoch seconds (REAL), the same in both dialects; JSON columns are text.

CREATE TABLE study_activity (
    study_instance_uid TEXT PRIMARY KEY,
    last_instance_at REAL NOT NULL,
    stable_at REAL,
    generation INTEGER NOT NULL DEFAULT 1
) STRICT;
CREATE INDEX study_activity_due ON study_activity (last_instance_at) WHERE stable_at IS NULL;

CREATE TABLE commitments (
    transaction_uid TEXT PRIMARY KEY,
    requester_ae TEXT NOT NULL,
    requested_at REAL NOT NULL,
    deadline REAL NOT NULL,
    decided_at REAL,
    source TEXT NOT NULL CHECK (json_valid(source))
) STRICT;
CREATE INDEX commitments_open ON commitments (deadline) WHERE decided_at IS NULL;

CREATE TABLE commitment_items (
    transaction_uid TEXT NOT NULL REFERENCES commitments (transaction_uid),
    position INTEGER NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    failure_reason INTEGER,
    PRIMARY KEY (transaction_uid, position)
) STRICT;
CREATE INDEX commitment_items_instance ON commitment_items (sop_instance_uid);

CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    target_ae TEXT NOT NULL,
    payload TEXT NOT NULL CHECK (json_valid(payload)),
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    delivered_at REAL,
    source TEXT NOT NULL CHECK (json_valid(source))
) STRICT;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_subject ON deliveries (subject);
