-- Patients, studies and series follow the newest stored instance (the C-FIND levels); instances keep every
-- version with the header values it was recorded with. A row is current unless replaced, and at most one
-- version of a SOP Instance UID is current.

CREATE TABLE patients (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id text NOT NULL,
    issuer_of_patient_id text NOT NULL,
    UNIQUE (patient_id, issuer_of_patient_id)
);

CREATE TABLE studies (
    study_instance_uid text PRIMARY KEY,
    patient_ref bigint NOT NULL REFERENCES patients (id),
    accession_number text NOT NULL,
    study_date text NOT NULL,
    study_time text NOT NULL,
    study_description text NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX studies_patient ON studies (patient_ref);
CREATE INDEX studies_study_date ON studies (study_date);
CREATE INDEX studies_accession_number ON studies (accession_number);

CREATE TABLE series (
    series_instance_uid text PRIMARY KEY,
    study_instance_uid text NOT NULL REFERENCES studies (study_instance_uid),
    modality text NOT NULL,
    series_number integer
);
CREATE INDEX series_study ON series (study_instance_uid);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sop_instance_uid text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    status text NOT NULL CHECK (status IN ('stored', 'quarantined', 'replaced')),
    is_current boolean GENERATED ALWAYS AS (status <> 'replaced') STORED,
    sop_class_uid text NOT NULL,
    study_instance_uid text NOT NULL REFERENCES studies (study_instance_uid),
    series_instance_uid text NOT NULL REFERENCES series (series_instance_uid),
    patient_id text NOT NULL,
    issuer_of_patient_id text NOT NULL,
    accession_number text NOT NULL,
    modality text NOT NULL,
    study_date text NOT NULL,
    study_time text NOT NULL,
    study_description text NOT NULL,
    series_number integer,
    instance_number integer,
    transfer_syntax_uid text NOT NULL,
    storage_key text NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    sha256 text NOT NULL,
    received_sha256 text NOT NULL,
    source_ae text NOT NULL,
    source_organization_oid text NOT NULL,
    findings jsonb NOT NULL,
    instance_id text NOT NULL,
    received_at timestamptz NOT NULL,
    stored_at timestamptz NOT NULL,
    UNIQUE (sop_instance_uid, version)
);
CREATE UNIQUE INDEX instances_current ON instances (sop_instance_uid) WHERE is_current;
CREATE INDEX instances_study ON instances (study_instance_uid) WHERE is_current;
CREATE INDEX instances_series ON instances (series_instance_uid) WHERE is_current;
