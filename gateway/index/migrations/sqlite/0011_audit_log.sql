-- The local audit log (gateway/index/audit_log.py): one row per audit record, by its id, so a record delivered
-- twice is kept once. A disclosure is a row with a recipient and a patient: what a patient's information request
-- report lists.
CREATE TABLE audit_log (
    record_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    event_code TEXT NOT NULL,
    event TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    outcome_text TEXT NOT NULL,
    interface TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    issuer_of_patient_id TEXT NOT NULL,
    studies TEXT NOT NULL CHECK (json_valid(studies)),
    instances INTEGER NOT NULL,
    actor TEXT NOT NULL,
    actor_host TEXT NOT NULL,
    recipient TEXT NOT NULL,
    disclosure INTEGER NOT NULL
) STRICT;
CREATE INDEX audit_log_patient ON audit_log (patient_id, at) WHERE patient_id <> '';
CREATE INDEX audit_log_at ON audit_log (at);
