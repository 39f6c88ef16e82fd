-- XDS-I.b registrations of each study: the manifest (KOS) registered for each generation, and which is current.
-- A new generation's manifest replaces the previous DocumentEntry (RPLC); the replaced row stays.

CREATE TABLE registrations (
    study_instance_uid text NOT NULL,
    generation integer NOT NULL,
    document_unique_id text NOT NULL UNIQUE,
    entry_uuid text NOT NULL,
    submission_set_unique_id text NOT NULL,
    instances integer NOT NULL,
    registered_at double precision NOT NULL,
    replaces_entry_uuid text,
    is_current integer NOT NULL,
    PRIMARY KEY (study_instance_uid, generation)
);
CREATE UNIQUE INDEX registrations_current ON registrations (study_instance_uid) WHERE is_current = 1;
