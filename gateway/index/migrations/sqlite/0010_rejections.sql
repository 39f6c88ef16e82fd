-- IHE IOCM rejection notes (gateway/index/rejections.py): an instance a note withdraws is 'rejected' (current, kept,
-- never served); each note is applied once (rejection_notes, by its SOP Instance UID and the hash of what arrived);
-- each instance it names has a rejections row, also when it is not held yet (prior_status NULL), so that it is
-- rejected when it arrives. A retention-expiry rejection carries when its objects go (delete_after); changed_at
-- says when a row last changed, for the receivers that keep what they refuse in memory.
-- SQLite cannot change a CHECK constraint: the instances table is rebuilt with 'rejected' allowed.
CREATE TABLE instances_new (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    status TEXT NOT NULL CHECK (status IN ('stored', 'quarantined', 'replaced', 'rejected')),
    is_current INTEGER GENERATED ALWAYS AS (status <> 'replaced') STORED,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL REFERENCES studies (study_instance_uid),
    series_instance_uid TEXT NOT NULL REFERENCES series (series_instance_uid),
    patient_id TEXT NOT NULL,
    issuer_of_patient_id TEXT NOT NULL,
    accession_number TEXT NOT NULL,
    modality TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    study_description TEXT NOT NULL,
    series_number INTEGER,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,
    received_sha256 TEXT NOT NULL,
    source_ae TEXT NOT NULL,
    source_organization_oid TEXT NOT NULL,
    findings TEXT NOT NULL CHECK (json_valid(findings)),
    instance_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    stored_at TEXT NOT NULL,
    patient_attributes TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(patient_attributes)),
    study_id TEXT NOT NULL DEFAULT '',
    referring_physician_name TEXT NOT NULL DEFAULT '',
    issuer_of_accession_number TEXT NOT NULL DEFAULT '',
    attributes_sha256 TEXT NOT NULL DEFAULT '',
    UNIQUE (sop_instance_uid, version)
) STRICT;
INSERT INTO instances_new (id, sop_instance_uid, version, status, sop_class_uid, study_instance_uid,
    series_instance_uid, patient_id, issuer_of_patient_id, accession_number, modality, study_date, study_time,
    study_description, series_number, instance_number, transfer_syntax_uid, storage_key, size, sha256,
    received_sha256, source_ae, source_organization_oid, findings, instance_id, received_at, stored_at,
    patient_attributes, study_id, referring_physician_name, issuer_of_accession_number, attributes_sha256)
SELECT id, sop_instance_uid, version, status, sop_class_uid, study_instance_uid,
    series_instance_uid, patient_id, issuer_of_patient_id, accession_number, modality, study_date, study_time,
    study_description, series_number, instance_number, transfer_syntax_uid, storage_key, size, sha256,
    received_sha256, source_ae, source_organization_oid, findings, instance_id, received_at, stored_at,
    patient_attributes, study_id, referring_physician_name, issuer_of_accession_number, attributes_sha256
FROM instances;
DROP TABLE instances;
ALTER TABLE instances_new RENAME TO instances;
CREATE UNIQUE INDEX instances_current ON instances (sop_instance_uid) WHERE is_current;
CREATE INDEX instances_study ON instances (study_instance_uid) WHERE is_current;
CREATE INDEX instances_series ON instances (series_instance_uid) WHERE is_current;
CREATE INDEX instances_sop_class ON instances (sop_class_uid) WHERE is_current;

CREATE TABLE rejection_notes (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    title TEXT NOT NULL,
    received_sha256 TEXT NOT NULL,
    source_ae TEXT NOT NULL,
    instances INTEGER NOT NULL,
    applied_at REAL NOT NULL
) STRICT;
CREATE INDEX rejection_notes_study ON rejection_notes (study_instance_uid);

CREATE TABLE rejections (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    title TEXT NOT NULL,
    note_uid TEXT NOT NULL,
    prior_status TEXT,
    rejected_at REAL NOT NULL,
    delete_after REAL,
    deleted_at REAL,
    changed_at REAL NOT NULL
) STRICT;
CREATE INDEX rejections_study ON rejections (study_instance_uid);
CREATE INDEX rejections_note ON rejections (note_uid);
CREATE INDEX rejections_changed ON rejections (changed_at);
CREATE INDEX rejections_due ON rejections (delete_after) WHERE delete_after IS NOT NULL AND deleted_at IS NULL;
