-- Forwarding to other archives (the forward role): each stored instance's state at each destination, the
-- storage-commitment transactions we requested, and each destination's switches and last outcome.
-- Times are UNIX epoch seconds; ``source`` is the JSON text of the bus record that queued the item.

CREATE TABLE forward_items (
    destination text NOT NULL,
    sop_instance_uid text NOT NULL,
    version integer NOT NULL,
    study_instance_uid text NOT NULL,
    series_instance_uid text NOT NULL,
    sop_class_uid text NOT NULL,
    transfer_syntax_uid text NOT NULL,
    storage_key text NOT NULL,
    size bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('queued', 'sent', 'requested', 'committed', 'delivered', 'failed')),
    queued_at double precision NOT NULL,
    due_at double precision NOT NULL,
    lease_until double precision NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    sends integer NOT NULL DEFAULT 0,
    commit_requests integer NOT NULL DEFAULT 0,
    transaction_uid text,
    transfer_syntax_sent text NOT NULL DEFAULT '',
    last_error text NOT NULL DEFAULT '',
    sent_at double precision,
    finished_at double precision,
    source text NOT NULL,
    PRIMARY KEY (destination, sop_instance_uid)
);
CREATE INDEX forward_items_due ON forward_items (destination, due_at) WHERE state IN ('queued', 'sent');
CREATE INDEX forward_items_study ON forward_items (study_instance_uid);
CREATE INDEX forward_items_transaction ON forward_items (transaction_uid) WHERE transaction_uid IS NOT NULL;
CREATE INDEX forward_items_failed ON forward_items (destination) WHERE state = 'failed';

CREATE TABLE forward_transactions (
    transaction_uid text PRIMARY KEY,
    destination text NOT NULL,
    study_instance_uid text NOT NULL,
    instances integer NOT NULL,
    requested_at double precision NOT NULL,
    deadline double precision NOT NULL,
    reported_at double precision,
    event_type integer
);
CREATE INDEX forward_transactions_open ON forward_transactions (deadline) WHERE reported_at IS NULL;

CREATE TABLE forward_destinations (
    name text PRIMARY KEY,
    paused integer NOT NULL DEFAULT 0,
    backoff_until double precision NOT NULL DEFAULT 0,
    failures integer NOT NULL DEFAULT 0,
    last_error text NOT NULL DEFAULT '',
    last_error_at double precision,
    last_success_at double precision
);
