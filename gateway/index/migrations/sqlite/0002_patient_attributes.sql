-- The patient attributes of each instance (ID, issuer, name, birth date, sex), so that the store stage can
-- flag an instance whose patient differs from the rest of its study.
ALTER TABLE instances ADD COLUMN patient_attributes TEXT NOT NULL DEFAULT '{}'
    CHECK (json_valid(patient_attributes));
