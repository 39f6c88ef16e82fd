-- Query/retrieve (C-FIND, QIDO-RS): the patient's name, birth date and sex on the patient row and the study keys
-- a study-level query returns on the study row, so that a query reads one row per patient or study and the
-- patient's current attributes show in every answer. patient_name_folded is the name upper-cased (by Python,
-- whatever the script) for case-insensitive person-name matching; rows from before this migration are folded
-- by SQLite's upper(), which knows ASCII only, until their patient's next instance is stored.
ALTER TABLE patients ADD COLUMN patient_name TEXT NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN patient_name_folded TEXT NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN patient_birth_date TEXT NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN patient_sex TEXT NOT NULL DEFAULT '';
ALTER TABLE studies ADD COLUMN study_id TEXT NOT NULL DEFAULT '';
ALTER TABLE studies ADD COLUMN referring_physician_name TEXT NOT NULL DEFAULT '';

UPDATE patients SET (patient_name, patient_birth_date, patient_sex) = (
    SELECT coalesce(json_extract(i.patient_attributes, '$.PatientName'), ''),
           coalesce(json_extract(i.patient_attributes, '$.PatientBirthDate'), ''),
           coalesce(json_extract(i.patient_attributes, '$.PatientSex'), '')
    FROM instances i
    WHERE i.patient_id = patients.patient_id AND i.issuer_of_patient_id = patients.issuer_of_patient_id
      AND i.status = 'stored'
    ORDER BY i.stored_at DESC LIMIT 1)
WHERE EXISTS (SELECT 1 FROM instances i WHERE i.patient_id = patients.patient_id
              AND i.issuer_of_patient_id = patients.issuer_of_patient_id AND i.status = 'stored');
UPDATE patients SET patient_name_folded = upper(patient_name);
UPDATE studies SET (study_id, referring_physician_name) = (
    SELECT i.study_id, i.referring_physician_name FROM instances i
    WHERE i.study_instance_uid = studies.study_instance_uid AND i.status = 'stored'
    ORDER BY i.stored_at DESC LIMIT 1)
WHERE EXISTS (SELECT 1 FROM instances i WHERE i.study_instance_uid = studies.study_instance_uid
              AND i.status = 'stored');

CREATE INDEX patients_name ON patients (patient_name);
CREATE INDEX patients_name_folded ON patients (patient_name_folded);
CREATE INDEX studies_study_id ON studies (study_id);
CREATE INDEX instances_sop_class ON instances (sop_class_uid) WHERE is_current;
