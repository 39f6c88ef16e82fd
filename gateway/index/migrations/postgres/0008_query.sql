-- Query/retrieve (C-FIND, QIDO-RS): the patient's name, birth date and sex on the patient row and the study keys
-- a study-level query returns on the study row, so that a query reads one row per patient or study and the
-- patient's current attributes show in every answer. patient_name_folded is the name upper-cased (by Python,
-- whatever the script) for case-insensitive person-name matching; rows from before this migration are folded
-- by upper(), which follows the database's collation, until their patient's next instance is stored.
ALTER TABLE patients ADD COLUMN patient_name text NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN patient_name_folded text NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN patient_birth_date text NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN patient_sex text NOT NULL DEFAULT '';
ALTER TABLE studies ADD COLUMN study_id text NOT NULL DEFAULT '';
ALTER TABLE studies ADD COLUMN referring_physician_name text NOT NULL DEFAULT '';

UPDATE patients p SET patient_name = latest.name, patient_birth_date = latest.birth_date, patient_sex = latest.sex,
    patient_name_folded = upper(latest.name)
FROM (SELECT DISTINCT ON (patient_id, issuer_of_patient_id) patient_id, issuer_of_patient_id,
             coalesce(patient_attributes ->> 'PatientName', '') AS name,
             coalesce(patient_attributes ->> 'PatientBirthDate', '') AS birth_date,
             coalesce(patient_attributes ->> 'PatientSex', '') AS sex
      FROM instances WHERE status = 'stored'
      ORDER BY patient_id, issuer_of_patient_id, stored_at DESC) latest
WHERE p.patient_id = latest.patient_id AND p.issuer_of_patient_id = latest.issuer_of_patient_id;
UPDATE studies s SET study_id = latest.study_id, referring_physician_name = latest.referring_physician_name
FROM (SELECT DISTINCT ON (study_instance_uid) study_instance_uid, study_id, referring_physician_name
      FROM instances WHERE status = 'stored' ORDER BY study_instance_uid, stored_at DESC) latest
WHERE s.study_instance_uid = latest.study_instance_uid;

-- text_pattern_ops: a wildcard with a literal prefix (MÄKE*) is an index range whatever the database's collation.
CREATE INDEX patients_name ON patients (patient_name text_pattern_ops);
CREATE INDEX patients_name_folded ON patients (patient_name_folded text_pattern_ops);
CREATE INDEX studies_study_id ON studies (study_id);
CREATE INDEX instances_sop_class ON instances (sop_class_uid) WHERE is_current;
