-- Patient identity from HL7 ADT (gateway/index/patients.py): a merged patient keeps its row, pointing at the
-- surviving one (merged_into), so instances still carrying its identifier are filed under the survivor; once an
-- ADT message set a patient's attributes (hl7_updated_at) stored instances no longer change them; every
-- message applied is recorded once (hl7_messages, by sender and control ID) and what it changed kept as history.
ALTER TABLE patients ADD COLUMN merged_into INTEGER REFERENCES patients (id);
ALTER TABLE patients ADD COLUMN hl7_updated_at REAL;
ALTER TABLE patients ADD COLUMN specific_character_set TEXT NOT NULL DEFAULT '';
CREATE INDEX patients_merged_into ON patients (merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE hl7_messages (
    message_key TEXT PRIMARY KEY,
    trigger_event TEXT NOT NULL,
    received_at REAL NOT NULL,
    applied_at REAL NOT NULL
) STRICT;

CREATE TABLE patient_changes (
    id INTEGER PRIMARY KEY,
    patient_ref INTEGER NOT NULL REFERENCES patients (id),
    message_key TEXT NOT NULL,
    trigger_event TEXT NOT NULL,
    action TEXT NOT NULL,
    other_patient_ref INTEGER REFERENCES patients (id),
    before_change TEXT NOT NULL CHECK (json_valid(before_change)),
    after_change TEXT NOT NULL CHECK (json_valid(after_change)),
    studies TEXT NOT NULL CHECK (json_valid(studies)),
    sender TEXT NOT NULL,
    applied_at REAL NOT NULL
) STRICT;
CREATE INDEX patient_changes_patient ON patient_changes (patient_ref);
CREATE INDEX patient_changes_other ON patient_changes (other_patient_ref) WHERE other_patient_ref IS NOT NULL;
