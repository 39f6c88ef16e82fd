-- Patient identity from HL7 ADT (gateway/index/patients.py): a merged patient keeps its row, pointing at the
-- surviving one (merged_into), so instances still carrying its identifier are filed under the survivor; once an
-- ADT message set a patient's attributes (hl7_updated_at) stored instances no longer change them; every
-- message applied is recorded once (hl7_messages, by sender and control ID) and what it changed kept as history.
ALTER TABLE patients ADD COLUMN merged_into bigint REFERENCES patients (id);
ALTER TABLE patients ADD COLUMN hl7_updated_at double precision;
ALTER TABLE patients ADD COLUMN specific_character_set text NOT NULL DEFAULT '';
CREATE INDEX patients_merged_into ON patients (merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE hl7_messages (
    message_key text PRIMARY KEY,
    trigger_event text NOT NULL,
    received_at double precision NOT NULL,
    applied_at double precision NOT NULL
);

CREATE TABLE patient_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_ref bigint NOT NULL REFERENCES patients (id),
    message_key text NOT NULL,
    trigger_event text NOT NULL,
    action text NOT NULL,
    other_patient_ref bigint REFERENCES patients (id),
    before_change text NOT NULL,
    after_change text NOT NULL,
    studies text NOT NULL,
    sender text NOT NULL,
    applied_at double precision NOT NULL
);
CREATE INDEX patient_changes_patient ON patient_changes (patient_ref);
CREATE INDEX patient_changes_other ON patient_changes (other_patient_ref) WHERE other_patient_ref IS NOT NULL;
