"""The operators' page as the people who run the gateway meet it: the page and its files answer without a token
but hold no data, with a Content-Security-Policy; in a real (headless) Chromium the page signs in with the API
token, lists today's study with its path, finds it by accession and by Study UID, shows its instance, the
forwarding destinations, and says plainly when the token is wrong (401) or its role may not act (403). An operator
reads the audit log (the most recent entries, and a patient's entries with their disclosures counted); a reader is
told the audit log needs the operator role. Screenshots of the page are kept as artefacts: in
``$GATEWAY_TEST_ARTEFACTS`` when set, otherwise in the test's own temporary directory (kept when it fails)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt

from tests.component.test_notify_embedded import CT, Gateway, Peer, running
from tests.helpers import api_headers, free_port

READER = "reader-token-" + "r" * 20
ARCHIVE = {"name": "regional-pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 9, "storage_commitment": False}


def gateway(tmp_path: Path, roles: list[str], **http: Any) -> AbstractAsyncContextManager[Gateway]:
    """The gateway in-process with ``roles``, one forwarding destination configured; yields once ready."""
    return running(tmp_path, roles, http=http,
                   forward={"destinations": [ARCHIVE], "retry_initial_seconds": 60, "retry_max_seconds": 60})


def todays_study(tmp_path: Path, patient_id: str = "") -> tuple[Path, pydicom.Dataset]:
    """CT_small as a new study received today (its own patient ID when ``patient_id`` is given)."""
    dataset = pydicom.dcmread(CT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if patient_id:
            dataset.PatientID = patient_id
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.StudyDate = "20040119"  # an old study received today: the page lists it by when it arrived
        dataset.AccessionNumber = "WEBACC0042"
        path = tmp_path / f"today-{dataset.PatientID}.dcm"
        dataset.save_as(path)
    return path, dataset


async def stored(running: Gateway, study: str, timeout: float = 30) -> None:
    """Until the index lists the study (the store role has recorded it)."""
    headers = api_headers(running.settings.data_dir)
    async with asyncio.timeout(timeout):
        while (await fetch(f"{running.api}/api/studies/{study}", headers))[0] != 200:
            await asyncio.sleep(0.1)


async def audit_log(running: Gateway, patient_id: str, wanted: Callable[[list[dict[str, Any]]], bool],
                    timeout: float = 30) -> list[dict[str, Any]]:
    """A patient's audit log entries (everyone's most recent without ``patient_id``) once ``wanted`` holds of them
    (the audit role has logged the records)."""
    async with asyncio.timeout(timeout):
        while True:
            status, log = await running.get(f"/api/audit?patient_id={patient_id}" if patient_id else "/api/audit?limit=50")
            if status == 200 and wanted(log):
                return log
            await asyncio.sleep(0.3)  # each read is audited too: not so often that they bury the rest


def artefact(tmp_path: Path, name: str) -> Path:
    """Where a screenshot is kept: ``$GATEWAY_TEST_ARTEFACTS`` when set, else the test's temporary directory."""
    directory = Path(os.environ.get("GATEWAY_TEST_ARTEFACTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers or {}) as response:
        return response.status, await response.read(), response.headers


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is not installed (apt-get install chromium): the page is tested in a real browser",
                    pytrace=False)
    return path


@asynccontextmanager
async def browser_page() -> AsyncIterator[tuple[Any, list[str]]]:
    """A page in headless Chromium, and the Content-Security-Policy violations and script errors it causes."""
    from playwright.async_api import async_playwright

    executable = chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            # tall enough that a section's screenshot needs no scrolling (the sticky nav would cover its top)
            context = await browser.new_context(viewport={"width": 1280, "height": 2400})
            page = await context.new_page()
            page.set_default_timeout(15_000)
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text)
                    if m.type == "error" and "Content Security Policy" in m.text else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            yield page, problems
        finally:
            await browser.close()


async def sign_in(page: Any, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#signin button[type=submit]")


async def test_the_page_and_its_files_answer_without_a_token_but_hold_no_data(tmp_path: Path) -> None:
    async with gateway(tmp_path, ["receiver", "store", "api"]) as running:
        path, dataset = todays_study(tmp_path)
        await running.store(path)
        study = str(dataset.StudyInstanceUID)
        await stored(running, study)
        data = (str(dataset.PatientID), str(dataset.AccessionNumber), study, str(dataset.SOPInstanceUID))
        for name, content_type in (("/", "text/html"), ("/static/app.js", "text/javascript"),
                                   ("/static/app.css", "text/css")):
            status, body, headers = await fetch(f"{running.api}{name}")
            assert status == 200, name
            assert headers["Content-Type"].startswith(content_type), name
            assert headers["Content-Security-Policy"].startswith("default-src 'self'"), name
            assert headers["X-Content-Type-Options"] == "nosniff", name
            assert "no-cache" in headers["Cache-Control"] and headers["ETag"], name
            assert not any(value.encode() in body for value in data), name
            status, _, _ = await fetch(f"{running.api}{name}", {"If-None-Match": headers["ETag"]})
            assert status == 304, name
        status, page, _ = await fetch(f"{running.api}/")
        assert b"<script src=\"static/app.js\"" in page and b"<script>" not in page, "no inline script"
        for missing in ("/static/nothing.js", "/static/..%2Fapi.py", "/static/"):
            assert (await fetch(f"{running.api}{missing}"))[0] == 404, missing
        for closed in ("/api/studies", f"/api/studies/{study}", "/api/forward/destinations", "/api/dlq", "/api/lag"):
            status, body, _ = await fetch(f"{running.api}{closed}")
            assert status == 401 and b"1CT1" not in body, closed


async def test_an_operator_signs_in_finds_todays_study_and_sees_the_destinations(tmp_path: Path) -> None:
    async with gateway(tmp_path, ["receiver", "store", "api"]) as running, browser_page() as (page, problems):
        path, dataset = todays_study(tmp_path)
        await running.store(path)
        study, sop = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
        await stored(running, study)
        token = (running.settings.data_dir / "api-token").read_text().strip()

        await page.goto(f"{running.api}/")
        assert await page.is_hidden("#content"), "nothing shows before signing in"
        await sign_in(page, token)
        await page.wait_for_selector("#whoami:has-text('Signed in as api-token (admin')")
        assert await page.is_hidden("#signin")
        assert await page.evaluate("sessionStorage.getItem('dicom-gateway-api-token')") == token
        assert await page.evaluate("document.cookie") == "" and token not in page.url

        row = page.locator(f"#studies-table tr[data-study='{study}']")
        await row.wait_for()
        assert await row.locator("td").nth(0).inner_text() == str(dataset.PatientID)
        assert await row.locator("td").nth(1).inner_text() == "WEBACC0042"
        await row.locator("[data-stage=stored]:has-text('stored 1')").wait_for()
        assert await row.locator("[data-stage=received]").inner_text() == "received 1"
        assert "today" in await page.inner_text("#studies-summary")

        await page.fill("#search-accession", "WEBACC0042")
        await page.click("#search button[type=submit]")
        await page.wait_for_selector("#studies-summary:has-text('1 studies found')")
        await row.wait_for()
        await page.fill("#search-accession", "NO-SUCH-ACCESSION")
        await page.click("#search button[type=submit]")
        await page.wait_for_selector("#studies-table:has-text('No study matches.')")

        await page.fill("#search-accession", "")
        await page.fill("#search-study", study)
        await page.click("#search button[type=submit]")
        await page.wait_for_selector("#study:not([hidden])")
        instance = page.locator(f"#study-series tr[data-sop='{sop}']")
        await instance.wait_for()
        cells = await instance.locator("td").all_inner_texts()
        assert cells[1] == sop and cells[2] == "1" and cells[3] == "stored"
        assert study in await page.inner_text("#study-facts")

        destination = page.locator("#destinations-table tr[data-destination='regional-pacs']")
        await destination.wait_for()
        assert "PACS@127.0.0.1:9" in await destination.inner_text()
        await page.wait_for_selector("#dlq-table:has-text('No open dead-letter entries.')")
        store_backlog = page.locator("#lag-table tr[data-group='dicomgw-store']")
        assert (await store_backlog.locator("td").all_inner_texts())[:3] == ["store", "dicomgw-store",
                                                                           running.settings.topics.instances]

        await page.click("#signout")
        assert await page.is_hidden("#content")
        assert await page.locator("#studies-table tbody tr").count() == 0, "signing out clears the data"
        await sign_in(page, "wrong-token-" + "w" * 30)
        await page.wait_for_selector("#messages:has-text('401: token missing or wrong')")
        assert await page.is_hidden("#content") and "Not signed in" in await page.inner_text("#whoami")
        assert await page.evaluate("sessionStorage.getItem('dicom-gateway-api-token')") is None
        assert problems == [], "the page breaks its own Content-Security-Policy or throws"


async def test_a_reader_sees_the_destinations_and_is_told_its_role_may_not_re_drive(tmp_path: Path) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"{READER} reader dashboards\n")
    async with gateway(tmp_path, ["api"], auth={"tokens_file": str(tokens)}) as running, browser_page() as (page, problems):
        await page.goto(f"{running.api}/")
        await sign_in(page, READER)
        await page.wait_for_selector("#whoami:has-text('Signed in as dashboards (reader')")
        destination = page.locator("#destinations-table tr[data-destination='regional-pacs']")
        await destination.wait_for()
        await page.wait_for_selector("#audit-summary.denied:has-text('The audit log needs the operator role')")
        assert "403" in await page.inner_text("#audit-summary")
        assert await page.is_hidden("#audit-table") and await page.is_hidden("#audit-search")
        assert await page.locator("#messages li").count() == 0, "the rest of the page works as before"
        await page.locator("#audit").screenshot(path=artefact(tmp_path, "audit-log-reader.png"))
        await destination.locator("button:has-text('Re-drive failed')").click()
        await page.wait_for_selector("#messages:has-text('403: your role may not do this')")
        await page.click("#refresh")
        await destination.locator("button:has-text('Pause')").click()
        await page.wait_for_selector("#messages:has-text('403: your role may not do this')")
        assert "paused" not in await destination.inner_text()
        assert problems == [], "the page breaks its own Content-Security-Policy or throws"


async def test_an_operator_reads_the_audit_log_and_a_patients_entries_with_their_disclosures(tmp_path: Path) -> None:
    async with (gateway(tmp_path, ["receiver", "store", "api", "audit"]) as running,
                browser_page() as (page, problems)):
        path, dataset = todays_study(tmp_path)
        other_path, other = todays_study(tmp_path, patient_id="WEBOTHER7")
        await running.store(path, other_path)
        patient, study = str(dataset.PatientID), str(dataset.StudyInstanceUID)
        await stored(running, study)
        await stored(running, str(other.StudyInstanceUID))
        headers = {**api_headers(running.settings.data_dir), "Accept": 'multipart/related; type="application/dicom"'}
        status, _, _ = await fetch(f"{running.api}/dicomweb/studies/{study}", headers)  # a disclosure to the token
        assert status == 200
        status, _, _ = await fetch(f"{running.api}/api/dlq", {"Authorization": "Bearer wrong-token-" + "w" * 30})
        assert status == 401  # a failed User Authentication

        def transferred(log: list[dict[str, Any]]) -> bool:
            return any(e["event"] == "DICOM Instances Transferred" and e["action"] == "C" for e in log)

        await audit_log(running, "WEBOTHER7", transferred)
        await audit_log(running, "", lambda log: any(e["outcome"] != "0" for e in log))
        await audit_log(running, patient, lambda log: transferred(log) and any(e["disclosure"] for e in log))
        token = (running.settings.data_dir / "api-token").read_text().strip()

        await page.goto(f"{running.api}/")
        await sign_in(page, token)
        await page.wait_for_selector("#audit-summary:has-text('most recent entries, newest first')")
        received = page.locator(f"#audit-table tr[data-patient='{patient}']",
                                has_text="DICOM Instances Transferred").filter(has_text="DICOM C-STORE")
        await received.first.wait_for()
        cells = await received.first.locator("td").all_inner_texts()
        assert cells[0] and "C create" in cells[1] and cells[2] == "success" and cells[3] == "DICOM C-STORE"
        assert cells[4] == "MODALITY1 @ 127.0.0.1" and cells[6] == patient
        assert study in cells[7] and "1 instance" in cells[7]
        assert await page.locator("#audit-table tr[data-patient='WEBOTHER7']").count() >= 1, "everyone's entries"
        assert await page.is_hidden("#audit-summary.denied")
        refused = page.locator("#audit-table tr.outcome-failed", has_text="User Authentication")
        cells = await refused.first.locator("td").all_inner_texts()
        assert cells[2] == "minor failure\nGET /api/dlq refused: unknown_token", "marked, with the outcome's text"
        assert await refused.first.locator(".badge.failed").is_visible()
        await page.locator("#audit").screenshot(path=artefact(tmp_path, "audit-log-recent.png"))

        await page.fill("#audit-patient", patient)
        await page.click("#audit-search button[type=submit]")
        summary = page.locator("#audit-summary")
        await page.wait_for_selector(f"#audit-summary:has-text('for patient {patient}')")
        counted = re.fullmatch(rf"(\d+) entr(?:y|ies) for patient {patient}, (\d+) disclosures?, oldest first",
                               await summary.inner_text())
        assert counted, await summary.inner_text()
        rows = page.locator("#audit-table tbody tr")
        assert int(counted[1]) == await rows.count() >= 3
        assert {await row.get_attribute("data-patient") for row in await rows.all()} == {patient}, "that patient's only"
        disclosed = page.locator("#audit-table tbody tr:has(.badge.disclosure)")
        assert int(counted[2]) == await disclosed.count() >= 1
        cells = await disclosed.first.locator("td").all_inner_texts()
        assert "DICOM Instances Transferred" in cells[1] and cells[3] == "DICOMweb WADO-RS"
        assert cells[4].startswith("api-token @ 127.0.0.1") and cells[5].startswith("api-token")
        assert "disclosure" in cells[5] and await disclosed.first.locator(".badge.disclosure").is_visible()
        await received.first.wait_for()
        await page.locator("#audit").screenshot(path=artefact(tmp_path, "audit-log-patient.png"))
        await page.wait_for_selector("#dlq-table:has-text('No open dead-letter entries.')")
        store_backlog = page.locator("#lag-table tr[data-group='dicomgw-store']")
        assert (await store_backlog.locator("td").all_inner_texts())[:3] == ["store", "dicomgw-store",
                                                                           running.settings.topics.instances]
        await page.screenshot(path=artefact(tmp_path, "audit-log-page.png"), full_page=True)

        today = date.today()
        await page.fill("#audit-from", today.isoformat())
        await page.fill("#audit-to", today.isoformat())
        await page.click("#audit-search button[type=submit]")
        await page.wait_for_selector(f"#audit-summary:has-text('for patient {patient} from {today.isoformat()}')")
        await received.first.wait_for()
        await page.fill("#audit-from", (today + timedelta(days=1)).isoformat())
        await page.fill("#audit-to", (today + timedelta(days=1)).isoformat())
        await page.click("#audit-search button[type=submit]")
        await page.wait_for_selector("#audit-summary:has-text('0 entries for patient')")
        await page.wait_for_selector("#audit-table:has-text('No entries for this patient.')")

        await page.click("#audit-clear")
        await page.wait_for_selector("#audit-summary:has-text('most recent entries, newest first')")
        assert await page.input_value("#audit-patient") == "" and await page.input_value("#audit-from") == ""
        assert await page.locator("#messages li.error").count() == 0
        assert problems == [], "the page breaks its own Content-Security-Policy or throws"


async def test_an_operator_follows_a_study_to_its_commitment_and_ian_and_re_drives_its_failed_forward(
        tmp_path: Path) -> None:
    """The study's path shows its storage commitment (reported) and IAN (sent); its forward failed while the
    archive was down, and once the archive is up a re-drive from the page sends it."""
    ris, port = Peer("RIS1"), free_port()
    archive = {**ARCHIVE, "port": port}
    received: list[str] = []
    scp = AE(ae_title="PACS")
    scp.supported_contexts = StoragePresentationContexts

    def store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    with ris.listening():
        async with (running(tmp_path, ["receiver", "store", "notify", "forward", "api"],
                            dicom={"remote_aes": [ris.remote()]}, notify={"ian_subscribers": ["RIS1"]},
                            forward={"destinations": [archive], "retry_initial_seconds": 0.2,
                                     "retry_max_seconds": 0.5, "retry_max_attempts": 1, "batch_delay_seconds": 0,
                                     "association_timeout_seconds": 2}) as gateway,
                    browser_page() as (page, problems)):
            path, dataset = todays_study(tmp_path)
            await gateway.store(path)
            study, sop = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
            await stored(gateway, study)
            await gateway.request_commitment([(str(dataset.SOPClassUID), sop)], calling_ae="RIS1")
            await gateway.until(f"/api/studies/{study}", lambda s: s["forwarding"] and s["forwarding"][0]["state"]
                                == "failed" and s["notifications"] and s["notifications"][0]["state"] == "delivered"
                                and s["commitments"] and (s["commitments"][0]["report"] or {}).get("state")
                                == "delivered")

            await page.goto(f"{gateway.api}/")
            await sign_in(page, (gateway.settings.data_dir / "api-token").read_text().strip())
            row = page.locator(f"#studies-table tr[data-study='{study}']")
            await row.locator("[data-stage=forwarded]:has-text('regional-pacs: failed')").wait_for()
            assert await row.locator("[data-stage=committed]").inner_text() == "committed 1, reported"
            assert await row.locator("[data-stage=ian]").inner_text() == "IAN sent"
            await page.fill("#search-study", study)
            await page.click("#search button[type=submit]")
            commitment = page.locator("#study-commitments tr[data-transaction]")
            await commitment.wait_for()
            assert "RIS1" in await commitment.inner_text() and "committed 1" in await commitment.inner_text()
            assert "1970" not in await page.inner_text("#study-facts"), "the commitment hastened stability"

            server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
            try:
                destination = page.locator("#destinations-table tr[data-destination='regional-pacs']")
                await destination.locator("button:has-text('Re-drive failed')").click()
                await page.wait_for_selector("#messages li.ok:has-text('Re-drive regional-pacs')")
                await gateway.until(f"/api/studies/{study}", lambda s: s["forwarding"][0]["state"] == "archived")
                await page.click("#refresh")  # the search names the study: it is opened again, with its path
                await page.locator("#study-path [data-stage=forwarded]:has-text('regional-pacs: archived')").wait_for()
                await page.screenshot(path=artefact(tmp_path, "study-path-re-driven.png"), full_page=True)
            finally:
                server.shutdown()
            assert received == [sop]
            assert problems == [], "the page breaks its own Content-Security-Policy or throws"
