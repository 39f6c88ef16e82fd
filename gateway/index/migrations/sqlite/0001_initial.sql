-- Patients, studies and series follow the newest stored instance (the C-FIND levels); instances keep every
-- version with the header values it was recorded with. A row is current unless replaced, and at most one
-- version of a SOP Instance UID is current.
-- SQLite: timestamps are ISO 8601 UTC text (fixed width, so they sort), findings a JSON text array.

CREATE TABLE patients (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    issuer_of_patient_id TEXT NOT NULL,
    UNIQUE (patient_id, issuer_of_patient_id)
) STRICT;

CREATE TABLE studies (
    study_instance_uid TEXT PRIMARY KEY,
    patient_ref INTEGER NOT NULL REFERENCES patients (id),
    accession_number TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    study_description TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX studies_patient ON studies (patient_ref);
CREATE INDEX studies_study_date ON studies (study_date);
CREATE INDEX studies_accession_number ON studies (accession_number);

CREATE TABLE series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL REFERENCES studies (study_instance_uid),
    modality TEXT NOT NULL,
    series_number INTEGER
) STRICT;
CREATE INDEX series_study ON series (study_instance_uid);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    status TEXT NOT NULL CHECK (status IN ('stored', 'quarantined', 'replaced')),
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
    UNIQUE (sop_instance_uid, version)
) STRICT;
CREATE UNIQUE INDEX instances_current ON instances (sop_instance_uid) WHERE is_current;
CREATE INDEX instances_study ON instances (study_instance_uid) WHERE is_current;
CREATE INDEX instances_series ON instances (series_instance_uid) WHERE is_current;
