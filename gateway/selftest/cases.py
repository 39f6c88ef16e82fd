"""The cases of the national deployment test, in the order a deployment report lists them: archiving (a study
in, committed, registered, announced, forwarded), reading (found and retrieved back over DICOM and from the
registry), corrections (an ADT update, a rejection note). Each case says why it did not run when the deployment
does not offer what it tests."""

from __future__ import annotations

import asyncio
import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.hetu import HETU_OID
from gateway.selftest.peer import DICOM, IMAGE_CLASSES, Api, DicomPeer, mllp_send
from gateway.selftest.report import Case, Report, Step, StepFailed, Verdict
from gateway.selftest.study import SyntheticStudy, adt
from gateway.settings import XdsSettings
from gateway.xds.client import APPROVED, XdsClient
from gateway.xds.metadata import patient_cx

REPORT_EVENT_SUCCESS, REPORT_EVENT_FAILURES = 1, 2


@dataclass(frozen=True)
class Hl7Endpoint:
    host: str
    port: int
    application: str
    """MSH-3 and MSH-4 the gateway admits (``hl7.allowed_senders``)."""
    facility: str
    receiver: str
    tls: ssl.SSLContext | None = None


@dataclass
class Target:
    """What the running configuration offers the self-test, and what it lacks (each lack names its setting)."""

    dicom: DicomPeer
    api: Api
    timeout: float
    reports_to_us: str = ""
    """Why the gateway cannot send the self-test a commitment report or an IAN; empty when it can."""
    ian: str = ""
    """Why no IAN is expected; empty when the self-test's AE is an IAN subscriber."""
    query: str = ""
    """Why the self-test may not query and retrieve; empty when it may."""
    xds: XdsSettings | None = None
    forward: tuple[str, ...] = ()
    local_archive: str = ""
    """The destination that is the self-test's own listener (simulator mode): what it received is checked too."""
    hl7: Hl7Endpoint | None = None
    description: dict[str, Any] = field(default_factory=dict)


class Selftest:
    def __init__(self, target: Target, seed: int | None = None, procedure_code: tuple[str, str] | None = None) -> None:
        self.target = target
        self._rng = random.Random(seed)
        self._procedure_code = procedure_code
        self.study = SyntheticStudy.create(self._rng, procedure_code=procedure_code)
        self.report = Report(target={**target.description, "patient_id": self.study.patient_id,
                                     "study_instance_uid": self.study.study_instance_uid,
                                     "accession_number": self.study.accession_number})
        self._manifest: dict[str, Any] | None = None

    def run(self) -> Report:
        target = self.target
        plan: list[tuple[str, str, str, Callable[[Case], None], tuple[str, ...], str]] = [
            ("echo", "Verification (C-ECHO)", "archiving", self.echo, (), ""),
            ("store", "Storage of a test study (C-STORE)", "archiving", self.store, ("echo",), ""),
            ("commitment", "Storage commitment (N-ACTION, N-EVENT-REPORT)", "archiving", self.commitment,
             ("store",), target.reports_to_us),
            ("registration", "Registration in XDS-I.b (RAD-68)", "archiving", self.registration, ("commitment",),
             "" if target.xds else "no XDS repository is configured (GATEWAY_XDS__REPOSITORY_URL)"),
            ("ian", "Instance Availability Notification", "archiving", self.availability, ("commitment",),
             target.reports_to_us or target.ian),
            ("forward", "Forwarding to the archives", "archiving", self.forwarding, ("store",),
             "" if target.forward else "no forwarding destination is configured (GATEWAY_FORWARD__DESTINATIONS)"),
            ("find", "Query (C-FIND)", "reading", self.find, ("store",), target.query),
            ("retrieve", "Retrieve back (C-GET)", "reading", self.retrieve, ("store",), target.query),
            ("registry-search", "Registry search (ITI-18 FindDocuments)", "reading", self.registry_search,
             ("registration",), "" if target.xds and target.xds.registry_url else
             "no XDS registry is configured (GATEWAY_XDS__REGISTRY_URL)"),
            ("registry-retrieve", "Manifest retrieve (ITI-43)", "reading", self.registry_retrieve,
             ("registry-search",), "" if target.xds and target.xds.repository_unique_id else
             "no repository uniqueId is configured (GATEWAY_XDS__REPOSITORY_UNIQUE_ID)"),
            ("adt-update", "Patient update (HL7 ADT^A08)", "correction", self.adt_update, ("store",),
             "" if target.hl7 else "no HL7 port, or no sender the self-test may use (GATEWAY_HL7__PORT, "
                                   "GATEWAY_HL7__ALLOWED_SENDERS)"),
            ("adt-merge", "Patient merge (HL7 ADT^A40)", "correction", self.adt_merge, ("adt-update",), ""),
            ("rejection", "Rejection note (IOCM, 113001)", "correction", self.rejection, ("store",), ""),
        ]
        verdicts: dict[str, Verdict] = {}
        for case_id, title, group, run, needs, lacking in plan:
            case = Case(case_id, title, group)
            self.report.cases.append(case)
            missing = [need for need in needs if verdicts.get(need) is not Verdict.PASSED]
            if lacking:
                case.not_run(lacking)
            elif missing:
                case.not_run(f"needs {', '.join(missing)}, which did not pass")
            else:
                try:
                    run(case)
                except StepFailed as exc:
                    case.verdict, case.reason = Verdict.FAILED, str(exc)
            verdicts[case_id] = case.verdict
        return self.report

    def _study_path(self) -> str:
        return f"/api/studies/{self.study.study_instance_uid}"

    def echo(self, case: Case) -> None:
        with case.step("C-ECHO") as step:
            self.target.dicom.echo(step)

    def store(self, case: Case) -> None:
        with case.step(f"C-STORE {len(self.study.instances)} instances of {len(self.study.series)} series") as step:
            self.target.dicom.store(step, self.study.instances)
        with case.step("stored and indexed (operators' API)") as step:
            expected = {str(ds.SOPInstanceUID) for ds in self.study.instances}

            def stored(study: dict[str, Any]) -> bool:
                held = {i["sop_instance_uid"]: i for s in study["series"] for i in s["instances"]}
                quarantined = [uid for uid in expected if held.get(uid, {}).get("status") == "quarantined"]
                if quarantined:
                    findings = sorted({f"{f.get('code')}: {f.get('message')}" for uid in quarantined
                                       for f in held[uid]["findings"]})
                    raise StepFailed(f"quarantined by validation: {'; '.join(findings)}")
                return all(held.get(uid, {}).get("status") == "stored" for uid in expected)

            self.target.api.until(step, self._study_path(), stored, self.target.timeout, "every instance stored")

    def commitment(self, case: Case) -> None:
        transaction = generate_uid()
        received = self.target.dicom.received
        with case.step("N-ACTION Request Storage Commitment") as step:
            self.target.dicom.request_commitment(step, transaction, self.study.references)
        with case.step("N-EVENT-REPORT received") as step:
            found = received.wait(lambda: next((r for r in received.reports
                                                if str(r[2].get("TransactionUID", "")) == transaction), None),
                                  self.target.timeout)
            if found is None:
                raise StepFailed(f"no storage commitment report within {self.target.timeout:.0f} s")
            _, event_type, information = found
            committed = {str(item.ReferencedSOPInstanceUID) for item in information.get("ReferencedSOPSequence", [])}
            failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0))
                      for item in information.get("FailedSOPSequence", [])}
            step.received(DICOM, f"N-EVENT-REPORT-RQ event type {event_type}", transaction_uid=transaction,
                          committed=len(committed), failed={uid: f"0x{reason:04X}" for uid, reason in failed.items()})
            if event_type != REPORT_EVENT_SUCCESS or failed:
                raise StepFailed(f"event type {event_type}: {len(failed)} instances not committed")
            if committed != {uid for _, uid in self.study.references}:
                raise StepFailed("the report does not list exactly the instances requested")

    def registration(self, case: Case) -> None:
        with case.step("registered (RAD-68 accepted by the repository)") as step:
            def registered(study: dict[str, Any]) -> Any:
                registration = study["registration"]
                if registration["state"] == "failed":
                    raise StepFailed(f"registration failed: {registration['last_error']}")
                current = [m for m in registration["manifests"] if m["status"] == "current"]
                return registration["state"] == "registered" and current and current[0]

            self._manifest = self.target.api.until(step, self._study_path(), registered, self.target.timeout,
                                                   "the study registered")
            step.detail = f"manifest {self._manifest['document_unique_id']}"

    def availability(self, case: Case) -> None:
        with case.step("IAN received (N-CREATE)") as step:
            self._wait_ian(step, {uid for _, uid in self.study.references}, set())

    def _wait_ian(self, step: Step, online: set[str], unavailable: set[str]) -> None:
        received = self.target.dicom.received
        study_uid = self.study.study_instance_uid

        def matching() -> dict[str, str] | None:
            for _, notification in reversed(received.notifications):
                if str(notification.get("StudyInstanceUID", "")) != study_uid:
                    continue
                states = {str(item.ReferencedSOPInstanceUID): str(item.get("InstanceAvailability", ""))
                          for series in notification.get("ReferencedSeriesSequence", [])
                          for item in series.get("ReferencedSOPSequence", [])}
                wanted = {uid: "ONLINE" for uid in online} | {uid: "UNAVAILABLE" for uid in unavailable}
                if all(states.get(uid) == state for uid, state in wanted.items()):
                    return states
            return None

        states = received.wait(matching, self.target.timeout)
        if states is None:
            seen = sum(str(n.get("StudyInstanceUID", "")) == study_uid for _, n in received.notifications)
            raise StepFailed(f"no IAN listing the instances as expected within {self.target.timeout:.0f} s "
                             f"({seen} IANs of this study received)")
        step.received(DICOM, "N-CREATE-RQ Instance Availability Notification", study_instance_uid=study_uid,
                      instances=states)

    def forwarding(self, case: Case) -> None:
        for destination in self.target.forward:
            with case.step(f"archived at {destination}") as step:
                def archived(study: dict[str, Any], name: str = destination) -> bool:
                    state = next((f for f in study["forwarding"] if f["destination"] == name), None)
                    if state is not None and state["state"] in ("failed", "partial"):
                        raise StepFailed(f"forwarding to {name} {state['state']}: {state['last_error']}")
                    return state is not None and state["state"] == "archived"

                self.target.api.until(step, self._study_path(), archived, self.target.timeout,
                                      f"the study archived at {destination}")
            if destination == self.target.local_archive:
                with case.step(f"received by {destination} (the self-test's own archive)") as step:
                    received = self.target.dicom.received
                    arrived = {str(ds.SOPInstanceUID) for _, _, ds in received.forwarded}
                    missing = {uid for _, uid in self.study.references} - arrived
                    if missing:
                        raise StepFailed(f"{len(missing)} instances reported archived never arrived")
                    step.received(DICOM, "C-STORE-RQ from the gateway", instances=len(self.study.references))

    def find(self, case: Case) -> None:
        dicom = self.target.dicom
        with case.step("C-FIND STUDY by Patient ID") as step:
            matches = dicom.find(step, "STUDY", {"PatientID": self.study.patient_id},
                                 ("StudyInstanceUID", "NumberOfStudyRelatedInstances", "AccessionNumber"))
            found = [m for m in matches if str(m.get("StudyInstanceUID", "")) == self.study.study_instance_uid]
            if not found:
                raise StepFailed("the study is not among the patient's studies")
            count = found[0].get("NumberOfStudyRelatedInstances")
            if count is not None and int(count) != len(self.study.instances):
                raise StepFailed(f"{count} instances listed, {len(self.study.instances)} stored")
        with case.step("C-FIND IMAGE within each series") as step:
            instances = self._instances_found(step)
            if instances != {uid for _, uid in self.study.references}:
                raise StepFailed(f"C-FIND finds {len(instances)} of the {len(self.study.references)} instances stored")

    def _instances_found(self, step: Step) -> set[str]:
        """The study's instances the gateway answers for, series by series (hierarchical: the series is a key)."""
        found = set()
        for series_uid in self.study.series:
            matches = self.target.dicom.find(step, "IMAGE", {"StudyInstanceUID": self.study.study_instance_uid,
                                                             "SeriesInstanceUID": series_uid,
                                                             "SOPInstanceUID": ""}, ())
            found |= {str(m.get("SOPInstanceUID", "")) for m in matches}
        return found

    def retrieve(self, case: Case) -> None:
        with case.step("C-GET the study") as step:
            retrieved = {str(ds.SOPInstanceUID): ds for ds in self.target.dicom.get(
                step, self.study.study_instance_uid, IMAGE_CLASSES)}
        with case.step("the pixels as sent") as step:
            for sent in self.study.instances:
                back = retrieved.get(str(sent.SOPInstanceUID))
                if back is None:
                    raise StepFailed(f"instance {sent.SOPInstanceUID} not retrieved")
                if back.PixelData != sent.PixelData or str(back.PatientID) != self.study.patient_id:
                    raise StepFailed(f"instance {sent.SOPInstanceUID} came back different")
            step.detail = f"{len(self.study.instances)} instances identical in Patient ID and pixel data"

    def _xds(self, query: Callable[[XdsClient], Any]) -> Any:
        assert self.target.xds is not None

        async def asked() -> Any:
            async with XdsClient(self.target.xds) as client:  # type: ignore[arg-type]
                return await query(client)

        return asyncio.run(asked())

    def registry_search(self, case: Case) -> None:
        assert self._manifest is not None
        patient = patient_cx(self.study.patient_id, HETU_OID, test_environment=True)
        with case.step("ITI-18 FindDocuments for the test patient") as step:
            step.sent("XDS", "ITI-18 RegistryStoredQuery FindDocuments", patient_id=patient, status=APPROVED)
            entries = self._xds(lambda client: client.find_documents(patient))
            step.received("XDS", "AdhocQueryResponse", entries=[e.unique_id for e in entries])
            if not any(e.unique_id == self._manifest["document_unique_id"] for e in entries):
                raise StepFailed("the registry does not list the study's manifest as approved")

    def registry_retrieve(self, case: Case) -> None:
        assert self._manifest is not None and self.target.xds is not None
        unique_id, repository = self._manifest["document_unique_id"], self.target.xds.repository_unique_id
        with case.step("ITI-43 RetrieveDocumentSet of the manifest") as step:
            step.sent("XDS", "ITI-43 RetrieveDocumentSetRequest", document_unique_id=unique_id,
                      repository_unique_id=repository)
            data = self._xds(lambda client: client.retrieve_document(unique_id, repository))
            step.received("XDS", "RetrieveDocumentSetResponse", bytes=len(data))
        with case.step("the manifest references the study") as step:
            manifest = dcmread(BytesIO(data))
            referenced = {str(item.ReferencedSOPInstanceUID)
                          for study in manifest.get("CurrentRequestedProcedureEvidenceSequence", [])
                          for series in study.get("ReferencedSeriesSequence", [])
                          for item in series.get("ReferencedSOPSequence", [])}
            if str(manifest.get("PatientID", "")) != self.study.patient_id:
                raise StepFailed("the manifest names another patient")
            if referenced != {uid for _, uid in self.study.references}:
                raise StepFailed(f"the manifest references {len(referenced)} instances, "
                                 f"{len(self.study.references)} stored")
            step.detail = f"KOS {manifest.SOPInstanceUID}, {len(referenced)} instances"

    def adt_update(self, case: Case) -> None:
        hl7 = self.target.hl7
        assert hl7 is not None
        new_name = "SELFTEST^MUUTETTU"
        with case.step("ADT^A08 with a new name") as step:
            message = adt("A08", self.study.patient_id, hl7.application, hl7.facility, hl7.receiver, _control_id(),
                          name=new_name)
            code = mllp_send(step, hl7.host, hl7.port, message, self.target.timeout, hl7.tls)
            if code != "AA":
                raise StepFailed(f"acknowledged {code or 'without MSA'}, not AA")
        with case.step("the patient updated (operators' API)") as step:
            self.target.api.until(step, f"/api/patients/{self.study.patient_id}",
                                  lambda patient: patient.get("PatientName") == new_name, self.target.timeout,
                                  "the new name")
        if not self.target.query:
            with case.step("C-FIND answers the new name") as step:
                matches = self.target.dicom.find(step, "STUDY", {"StudyInstanceUID": self.study.study_instance_uid},
                                                 ("PatientName",))
                names = {str(m.get("PatientName", "")) for m in matches}
                if names != {new_name}:
                    raise StepFailed(f"C-FIND answers {sorted(names)}")

    def adt_merge(self, case: Case) -> None:
        """A study stored under a second test identity, which the HIS then merges into the first."""
        hl7 = self.target.hl7
        assert hl7 is not None
        prior = SyntheticStudy.create(self._rng, series=1, per_series=1, procedure_code=self._procedure_code)
        with case.step("C-STORE a study under a second test identity") as step:
            self.target.dicom.store(step, prior.instances)
        with case.step("stored (operators' API)") as step:
            self.target.api.until(step, f"/api/studies/{prior.study_instance_uid}",
                                  lambda study: all(i["status"] == "stored" for s in study["series"]
                                                    for i in s["instances"]), self.target.timeout, "the study stored")
        with case.step("ADT^A40 merging the second identity into the first") as step:
            message = adt("A40", self.study.patient_id, hl7.application, hl7.facility, hl7.receiver, _control_id(),
                          prior=prior.patient_id)
            code = mllp_send(step, hl7.host, hl7.port, message, self.target.timeout, hl7.tls)
            if code != "AA":
                raise StepFailed(f"acknowledged {code or 'without MSA'}, not AA")
        with case.step("the study belongs to the surviving patient (operators' API)") as step:
            self.target.api.until(
                step, f"/api/studies/{prior.study_instance_uid}",
                lambda study: study["patient"] and study["patient"].get("PatientID") == self.study.patient_id,
                self.target.timeout, "the merged study under the surviving identity")
        if not self.target.query:
            with case.step("C-FIND finds both studies under the surviving identity") as step:
                matches = self.target.dicom.find(step, "STUDY", {"PatientID": self.study.patient_id},
                                                 ("StudyInstanceUID",))
                found = {str(m.get("StudyInstanceUID", "")) for m in matches}
                if not {self.study.study_instance_uid, prior.study_instance_uid} <= found:
                    raise StepFailed(f"C-FIND finds {len(found)} studies for the surviving identity, 2 expected")

    def rejection(self, case: Case) -> None:
        withdrawn = self.study.instances[-1]
        note = self.study.rejection_note(withdrawn)
        with case.step("C-STORE a rejection note (113001) for one instance") as step:
            self.target.dicom.store(step, [note])
        with case.step("the rejection applied (operators' API)") as step:
            uid = str(withdrawn.SOPInstanceUID)
            self.target.api.until(step, f"{self._study_path()}/rejections",
                                  lambda found: any(i["sop_instance_uid"] == uid and i["held"]
                                                    for i in found["instances"]),
                                  self.target.timeout, "the instance rejected")
        kept = {str(ds.SOPInstanceUID) for ds in self.study.instances[:-1]}
        if not self.target.query:
            with case.step("C-FIND no longer finds the instance") as step:
                found = self._instances_found(step)
                if found != kept:
                    raise StepFailed(f"C-FIND finds {len(found)} instances, {len(kept)} expected")
        if not (self.target.reports_to_us or self.target.ian):
            with case.step("IAN lists the instance UNAVAILABLE") as step:
                self._wait_ian(step, kept, {str(withdrawn.SOPInstanceUID)})
        if self.target.xds is not None and self._manifest is not None:
            first = self._manifest["document_unique_id"]
            with case.step("the manifest replaced (RPLC) without the instance") as step:
                def replaced(study: dict[str, Any]) -> Any:
                    current = [m for m in study["registration"]["manifests"] if m["status"] == "current"]
                    return current and current[0]["document_unique_id"] != first \
                        and current[0]["instances"] == len(kept) and current[0]

                manifest = self.target.api.until(step, self._study_path(), replaced, self.target.timeout,
                                                 "a replacement manifest")
                step.detail = f"manifest {manifest['document_unique_id']} replaces {first}"


def _control_id() -> str:
    return f"ST{uuid.uuid4().hex[:16]}"
