-- IHE IOCM rejection notes (gateway/index/rejections.py): an instance a note withdraws is 'rejected' (current, kept,
-- never served); each note is applied once (rejection_notes, by its SOP Instance UID and the hash of what arrived);
-- each instance it names has a rejections row, also when it is not held yet (prior_status NULL), so that it is
-- rejected when it arrives. A retention-expiry rejection carries when its objects go (delete_after); changed_at
-- says when a row last changed, for the receivers that keep what they refuse in memory.
ALTER TABLE instances DROP CONSTRAINT instances_status_check;
ALTER TABLE instances ADD CONSTRAINT instances_status_check
    CHECK (status IN ('stored', 'quarantined', 'replaced', 'rejected'));

CREATE TABLE rejection_notes (
    sop_instance_uid text PRIMARY KEY,
    study_instance_uid text NOT NULL,
    title text NOT NULL,
    received_sha256 text NOT NULL,
    source_ae text NOT NULL,
    instances integer NOT NULL,
    applied_at double precision NOT NULL
);
CREATE INDEX rejection_notes_study ON rejection_notes (study_instance_uid);

CREATE TABLE rejections (
    sop_instance_uid text PRIMARY KEY,
    study_instance_uid text NOT NULL,
    series_instance_uid text NOT NULL,
    sop_class_uid text NOT NULL,
    title text NOT NULL,
    note_uid text NOT NULL,
    prior_status text,
    rejected_at double precision NOT NULL,
    delete_after double precision,
    deleted_at double precision,
    changed_at double precision NOT NULL
);
CREATE INDEX rejections_study ON rejections (study_instance_uid);
CREATE INDEX rejections_note ON rejections (note_uid);
CREATE INDEX rejections_changed ON rejections (changed_at);
CREATE INDEX rejections_due ON rejections (delete_after) WHERE delete_after IS NOT NULL AND deleted_at IS NULL;
