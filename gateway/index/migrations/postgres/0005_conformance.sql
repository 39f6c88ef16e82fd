-- Study attributes the KOS manifest takes from the study as stored, and the digest of each instance's attributes
-- whatever their encoding; variants: the same attributes received again in another transfer syntax, kept (with
-- their objects) beside the version they are a variant of instead of becoming a new version.
ALTER TABLE instances ADD COLUMN study_id text NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN referring_physician_name text NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN issuer_of_accession_number text NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN attributes_sha256 text NOT NULL DEFAULT '';

CREATE TABLE instance_variants (
    sop_instance_uid text NOT NULL,
    received_sha256 text NOT NULL,
    study_instance_uid text NOT NULL,
    version integer NOT NULL,
    transfer_syntax_uid text NOT NULL,
    storage_key text NOT NULL,
    size bigint NOT NULL CHECK (size >= 0),
    sha256 text NOT NULL,
    instance_id text NOT NULL,
    source_ae text NOT NULL,
    received_at timestamptz NOT NULL,
    stored_at timestamptz NOT NULL,
    PRIMARY KEY (sop_instance_uid, received_sha256)
);
CREATE INDEX instance_variants_study ON instance_variants (study_instance_uid);
