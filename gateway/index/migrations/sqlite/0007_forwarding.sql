-- Forwarding to other archives (the forward role): each stored instance's state at each destination, the
-- storage-commitment transactions we requested, and each destination's switches and last outcome.
-- Times are UNIX epoch seconds; ``source`` is the JSON of the bus record that queued the item.

CREATE TABLE forward_items (
    destination TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'requested', 'committed', 'delivered', 'failed')),
    queued_at REAL NOT NULL,
    due_at REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    sends INTEGER NOT NULL DEFAULT 0,
    commit_requests INTEGER NOT NULL DEFAULT 0,
    transaction_uid TEXT,
    transfer_syntax_sent TEXT NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT '',
    sent_at REAL,
    finished_at REAL,
    source TEXT NOT NULL CHECK (json_valid(source)),
    PRIMARY KEY (destination, sop_instance_uid)
) STRICT;
CREATE INDEX forward_items_due ON forward_items (destination, due_at) WHERE state IN ('queued', 'sent');
CREATE INDEX forward_items_study ON forward_items (study_instance_uid);
CREATE INDEX forward_items_transaction ON forward_items (transaction_uid) WHERE transaction_uid IS NOT NULL;
CREATE INDEX forward_items_failed ON forward_items (destination) WHERE state = 'failed';

CREATE TABLE forward_transactions (
    transaction_uid TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    instances INTEGER NOT NULL,
    requested_at REAL NOT NULL,
    deadline REAL NOT NULL,
    reported_at REAL,
    event_type INTEGER
) STRICT;
CREATE INDEX forward_transactions_open ON forward_transactions (deadline) WHERE reported_at IS NULL;

CREATE TABLE forward_destinations (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    backoff_until REAL NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    last_error_at REAL,
    last_success_at REAL
) STRICT;
