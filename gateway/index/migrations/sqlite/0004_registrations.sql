-- XDS-I.b registrations of each study: the manifest (KOS) registered for each generation, and which is current.
-- A new generation's manifest replaces the previous DocumentEntry (RPLC); the replaced row stays.

CREATE TABLE registrations (
    study_instance_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    document_unique_id TEXT NOT NULL UNIQUE,
    entry_uuid TEXT NOT NULL,
    submission_set_unique_id TEXT NOT NULL,
    instances INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    replaces_entry_uuid TEXT,
    is_current INTEGER NOT NULL,
    PRIMARY KEY (study_instance_uid, generation)
) STRICT;
CREATE UNIQUE INDEX registrations_current ON registrations (study_instance_uid) WHERE is_current = 1;
