-- Study attributes the KOS manifest takes from the study as stored, and the digest of each instance's attributes
-- whatever their encoding; variants: the same attributes received again in another transfer syntax, kept (with
-- their objects) beside the version they are a variant of instead of becoming a new version.
ALTER TABLE instances ADD COLUMN study_id TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN referring_physician_name TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN issuer_of_accession_number TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN attributes_sha256 TEXT NOT NULL DEFAULT '';

CREATE TABLE instance_variants (
    sop_instance_uid TEXT NOT NULL,
    received_sha256 TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    sha256 TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    source_ae TEXT NOT NULL,
    received_at TEXT NOT NULL,
    stored_at TEXT NOT NULL,
    PRIMARY KEY (sop_instance_uid, received_sha256)
) STRICT;
CREATE INDEX instance_variants_study ON instance_variants (study_instance_uid);
