-- The local audit log (gateway/index/audit_log.py): one row per audit record, by its id, so a record delivered
-- twice is kept once. A disclosure is a row with a recipient and a patient: what a patient's information request
-- report lists.
CREATE TABLE audit_log (
    record_id text PRIMARY KEY,
    at double precision NOT NULL,
    event_code text NOT NULL,
    event text NOT NULL,
    action text NOT NULL,
    outcome text NOT NULL,
    outcome_text text NOT NULL,
    interface text NOT NULL,
    patient_id text NOT NULL,
    issuer_of_patient_id text NOT NULL,
    studies text NOT NULL,
    instances integer NOT NULL,
    actor text NOT NULL,
    actor_host text NOT NULL,
    recipient text NOT NULL,
    disclosure boolean NOT NULL
);
CREATE INDEX audit_log_patient ON audit_log (patient_id, at) WHERE patient_id <> '';
CREATE INDEX audit_log_at ON audit_log (at);
