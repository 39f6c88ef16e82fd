// The operators' page: plain JavaScript over the gateway's JSON API. Every value from the API goes into the
// DOM as text (textContent), never as markup. The token stays in sessionStorage (this tab only; never a
// cookie, never the URL) and goes out as "Authorization: Bearer" on every call.
"use strict";

(function () {
  const TOKEN_KEY = "dicom-gateway-api-token";
  const DETAIL_LIMIT = 50; // studies whose path is fetched for the list
  const DETAIL_CONCURRENCY = 4;
  const AUDIT_RECENT = 50; // entries listed when no patient is asked for
  const AUDIT_LIMIT = 5000; // the most the API answers at once
  const ACTIONS = { C: "create", R: "read", U: "update", D: "delete", E: "execute" };
  const OUTCOMES = { 0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure" };

  const $ = (id) => document.getElementById(id);
  let generation = 0; // bumped on sign-in and sign-out: late answers for an older session are dropped
  let auditRequest = 0; // bumped per audit log request: an older search's late answer is dropped

  class ApiError extends Error {
    constructor(status, reason) {
      super(describe(status, reason));
      this.status = status;
    }
  }

  function describe(status, reason) {
    if (status === 401) return "401: token missing or wrong" + (reason ? " (" + reason + ")" : "");
    if (status === 403) return "403: your role may not do this" + (reason ? " (" + reason + ")" : "");
    if (status === 0) return "the gateway did not answer" + (reason ? " (" + reason + ")" : "");
    return status + ": " + (reason || "request failed");
  }

  async function api(path, options) {
    const method = (options && options.method) || "GET";
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    let body;
    if (options && options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit",
                                     redirect: "error" });
    } catch (error) {
      throw new ApiError(0, String(error && error.message ? error.message : error));
    }
    const type = response.headers.get("Content-Type") || "";
    let answer = null;
    let text = "";
    if (type.includes("application/json")) {
      try { answer = await response.json(); } catch (_) { answer = null; }
    } else {
      text = await response.text();
    }
    if (!response.ok) {
      const reason = answer && typeof answer === "object" ? (answer.reason || answer.error || "") : text.trim();
      throw new ApiError(response.status, String(reason).slice(0, 300));
    }
    return answer;
  }

  // ---- DOM helpers: text only -------------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (key === "className") node.className = value;
        else if (key === "title") node.title = String(value);
        else if (key === "onclick") node.addEventListener("click", value);
        else node.setAttribute(key, String(value));
      }
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function body(tableId) {
    const tbody = $(tableId).tBodies[0];
    clear(tbody);
    return tbody;
  }

  function emptyRow(tbody, columns, text) {
    tbody.append(el("tr", { className: "empty" }, el("td", { colspan: columns }, text)));
  }

  function message(text, kind) {
    const list = $("messages");
    for (const item of list.children) {
      if (item.textContent === text) return;
    }
    list.append(el("li", { className: kind || "error" }, text));
  }

  function clearMessages() {
    clear($("messages"));
  }

  function failed(where, error) {
    message(where + ": " + (error instanceof Error ? error.message : String(error)), "error");
  }

  function time(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function dicomDate(value) {
    const text = String(value || "");
    return /^\d{8}$/.test(text) ? text.slice(0, 4) + "-" + text.slice(4, 6) + "-" + text.slice(6) : text;
  }

  function receivedToday(iso) {
    const received = new Date(String(iso || ""));
    return !Number.isNaN(received.getTime()) && received.toDateString() === new Date().toDateString();
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.round(Number(seconds));
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function bytes(size) {
    const n = Number(size);
    if (!Number.isFinite(n)) return "";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }

  function counts(byState) {
    const entries = Object.entries(byState || {});
    return entries.length ? entries.map(([state, n]) => state + " " + n).join(", ") : "none";
  }

  function button(text, onclick, className) {
    return el("button", { type: "button", className: className || "", onclick }, text);
  }

  // ---- Sign-in ----------------------------------------------------------------------------------------------

  async function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    generation += 1;
    clearMessages();
    try {
      const me = await api("/api/me");
      $("whoami").textContent = "Signed in as " + me.subject + " (" + me.role + ", " + me.source + ")";
      $("signin").hidden = true;
      $("signout").hidden = false;
      $("refresh").hidden = false;
      $("content").hidden = false;
      await refresh();
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      signedOut();
      failed("Sign-in", error);
    }
  }

  function signedOut() {
    generation += 1;
    $("whoami").textContent = "Not signed in.";
    $("signin").hidden = false;
    $("signout").hidden = true;
    $("refresh").hidden = true;
    $("content").hidden = true;
    $("study").hidden = true;
    for (const id of ["studies-table", "dlq-table", "destinations-table", "failed-table", "overdue-table",
                      "study-forwarding", "study-notifications", "audit-table"]) {
      body(id);
    }
    for (const id of ["study-facts", "study-registration", "study-series", "study-path", "studies-summary",
                      "audit-summary"]) {
      clear($(id));
    }
    for (const id of ["audit-patient", "audit-from", "audit-to"]) $(id).value = "";
    auditAllowed(true);
  }

  async function refresh() {
    const session = generation;
    await Promise.all([loadStudies(session), loadDeadLetters(session), loadDestinations(session),
                       loadFailed(session), loadOverdue(session), loadLag(session), loadAudit(session)]);
  }

  // ---- Studies ----------------------------------------------------------------------------------------------

  function searchCriteria() {
    return {
      patient: $("search-patient").value.trim(),
      accession: $("search-accession").value.trim(),
      study: $("search-study").value.trim(),
    };
  }

  async function loadStudies(session) {
    const criteria = searchCriteria();
    const tbody = body("studies-table");
    $("studies-summary").textContent = "Loading…";
    if (criteria.study) {
      // a Study Instance UID names one study: open it
      $("studies-summary").textContent = "";
      await openStudy(criteria.study, session);
      return;
    }
    const query = new URLSearchParams();
    if (criteria.patient) query.set("patient_id", criteria.patient);
    if (criteria.accession) query.set("accession", criteria.accession);
    let studies;
    try {
      studies = await api("/api/studies" + (query.toString() ? "?" + query.toString() : ""));
    } catch (error) {
      if (session !== generation) return;
      $("studies-summary").textContent = "";
      failed("Studies", error);
      return;
    }
    if (session !== generation) return;
    const searching = Boolean(criteria.patient || criteria.accession);
    const todayOnly = !searching && $("today-only").checked;
    const shown = todayOnly ? studies.filter((s) => receivedToday(s.last_received_at)) : studies;
    $("studies-summary").textContent = searching
      ? shown.length + " studies found"
      : todayOnly
        ? shown.length + " studies received today" + (studies.length > shown.length
          ? " (" + (studies.length - shown.length) + " received earlier not shown)" : "")
        : shown.length + " most recent studies";
    if (!shown.length) {
      emptyRow(tbody, 7, searching ? "No study matches." : "No studies.");
      return;
    }
    const pending = [];
    for (const study of shown) {
      const path = el("td", { className: "path" }, pending.length < DETAIL_LIMIT ? "…" : "");
      const row = el("tr", { "data-study": study.study_instance_uid },
        el("td", null, study.patient_id),
        el("td", null, study.accession_number),
        el("td", null, dicomDate(study.study_date)),
        el("td", null, study.study_description),
        el("td", { className: "number" }, study.instances),
        path,
        el("td", null, button("Open", () => openStudy(study.study_instance_uid, generation))));
      tbody.append(row);
      if (pending.length < DETAIL_LIMIT) pending.push([study.study_instance_uid, path]);
    }
    await fillPaths(pending, session);
  }

  async function fillPaths(pending, session) {
    const queue = pending.slice();
    async function worker() {
      while (queue.length && session === generation) {
        const [uid, cell] = queue.shift();
        try {
          const detail = await api("/api/studies/" + encodeURIComponent(uid));
          if (session !== generation) return;
          clear(cell);
          cell.append(pathOf(detail));
        } catch (error) {
          if (session !== generation) return;
          cell.textContent = error instanceof ApiError ? error.message : String(error);
        }
      }
    }
    await Promise.all(Array.from({ length: DETAIL_CONCURRENCY }, worker));
  }

  function stages(detail) {
    const instances = detail.series.flatMap((series) => series.instances);
    const current = instances.filter((i) => i.status !== "replaced");
    const quarantined = current.filter((i) => i.status === "quarantined").length;
    const received = instances.map((i) => i.received_at).sort()[0];
    const result = [];
    result.push({ name: "received", state: "done", text: "received " + instances.length,
                  title: received ? "first " + time(received) : "" });
    if (quarantined === 0) {
      result.push({ name: "stored", state: "done", text: "stored " + current.length });
    } else {
      result.push({ name: "stored", state: quarantined === current.length ? "bad" : "warn",
                    text: "stored " + (current.length - quarantined) + ", quarantined " + quarantined });
    }
    result.push(committed(detail.commitments || []));
    const stability = detail.stability;
    result.push(stability && stability.stable_at
      ? { name: "stable", state: "done", text: "stable", title: time(stability.stable_at) }
      : { name: "stable", state: "wait", text: "not stable yet",
          title: stability ? "last instance " + time(stability.last_instance_at) : "" });
    const registration = detail.registration || { state: "unknown" };
    const registered = { registered: "done", failed: "bad", "not-registered": "off" };
    result.push({ name: "registered", state: registered[registration.state] || "wait", text: registration.state,
                  title: registration.last_error || "" });
    const forwarding = detail.forwarding || [];
    if (!forwarding.length) {
      result.push({ name: "forwarded", state: "off", text: "not forwarded" });
    } else {
      for (const entry of forwarding) {
        const state = entry.state === "archived" ? "done"
          : entry.state === "failed" || entry.state === "partial" ? "bad" : "wait";
        result.push({ name: "forwarded", state, text: entry.destination + ": " + entry.state,
                      title: entry.last_error || counts(entry.instances) });
      }
    }
    result.push(announced(detail.notifications || []));
    return result;
  }

  // The latest storage-commitment transaction that named the study's instances, and whether its report went.
  function committed(commitments) {
    if (!commitments.length) return { name: "committed", state: "off", text: "no commitment asked" };
    const latest = commitments[0];
    const outcomes = latest.instances.map((i) => i.outcome);
    const failures = outcomes.filter((o) => o === "failed").length;
    const title = latest.requester_ae + ", transaction " + latest.transaction_uid;
    if (outcomes.includes("waiting")) return { name: "committed", state: "wait", text: "commitment waiting", title };
    const report = latest.report ? latest.report.state : "pending";
    const text = (failures ? "committed " + (outcomes.length - failures) + ", failed " + failures
      : "committed " + outcomes.length) + (report === "delivered" ? ", reported" : ", report " + report);
    const state = failures || report === "failed" ? "bad" : report === "delivered" ? "done" : "wait";
    return { name: "committed", state, text, title: latest.report && latest.report.last_error || title };
  }

  // The Instance Availability Notifications of the study, to each subscriber.
  function announced(notifications) {
    if (!notifications.length) return { name: "ian", state: "off", text: "no IAN" };
    const states = notifications.map((n) => n.state);
    const targets = notifications.map((n) => n.target_ae + " " + n.state).join(", ");
    if (states.includes("failed")) return { name: "ian", state: "bad", text: "IAN failed", title: targets };
    if (states.includes("pending")) return { name: "ian", state: "wait", text: "IAN pending", title: targets };
    return { name: "ian", state: "done", text: "IAN sent", title: targets };
  }

  function pathOf(detail) {
    const list = el("ol", { className: "stages" });
    for (const stage of stages(detail)) {
      list.append(el("li", { className: "stage " + stage.state, title: stage.title || stage.name,
                             "data-stage": stage.name }, stage.text));
    }
    return list;
  }

  function fact(list, term, value) {
    list.append(el("dt", null, term), el("dd", null, value === null || value === undefined ? "" : value));
  }

  async function openStudy(uid, session) {
    let detail;
    try {
      detail = await api("/api/studies/" + encodeURIComponent(uid));
    } catch (error) {
      if (session !== generation) return;
      failed("Study " + uid, error.status === 404 ? new Error("no such study") : error);
      return;
    }
    if (session !== generation) return;
    showStudy(detail);
  }

  function showStudy(detail) {
    const section = $("study");
    section.hidden = false;
    section.dataset.study = detail.study_instance_uid;
    $("study-title").textContent = "Study " + (detail.accession_number || detail.study_instance_uid);
    const facts = $("study-facts");
    clear(facts);
    fact(facts, "Patient ID", detail.patient_id + (detail.issuer_of_patient_id ? " (" + detail.issuer_of_patient_id
      + ")" : ""));
    fact(facts, "Accession", detail.accession_number);
    fact(facts, "Study UID", detail.study_instance_uid);
    fact(facts, "Study ID", detail.study_id);
    fact(facts, "Study date", dicomDate(detail.study_date));
    fact(facts, "Description", detail.study_description);
    if (detail.stability) {
      fact(facts, "Last instance", time(detail.stability.last_instance_at));
      fact(facts, "Stable at", detail.stability.stable_at ? time(detail.stability.stable_at) : "not yet");
      fact(facts, "Generation", detail.stability.generation);
    }
    const path = $("study-path");
    clear(path);
    path.append(pathOf(detail));

    const forwarding = body("study-forwarding");
    if (!detail.forwarding.length) emptyRow(forwarding, 5, "Not queued for any destination.");
    for (const entry of detail.forwarding) {
      forwarding.append(el("tr", null,
        el("td", null, entry.destination),
        el("td", null, entry.state),
        el("td", null, counts(entry.instances)),
        el("td", { className: "error-text" }, entry.last_error),
        el("td", null,
          button("Re-drive failed", () => redriveForwards(entry.destination, detail.study_instance_uid, false)),
          " ",
          button("Resend all", () => redriveForwards(entry.destination, detail.study_instance_uid, true)))));
    }

    const registration = $("study-registration");
    clear(registration);
    const reg = detail.registration;
    fact(registration, "State", reg.state);
    fact(registration, "Attempts", reg.attempts);
    if (reg.last_error) fact(registration, "Last error", reg.last_error);
    for (const manifest of reg.manifests) {
      fact(registration, "Manifest " + manifest.status, manifest.document_unique_id + " (generation "
        + manifest.generation + ", " + manifest.instances + " instances, " + time(manifest.registered_at) + ")");
    }

    const commitments = body("study-commitments");
    if (!detail.commitments.length) emptyRow(commitments, 5, "No storage commitment asked for these instances.");
    for (const commitment of detail.commitments) {
      const outcomes = {};
      for (const instance of commitment.instances) outcomes[instance.outcome] = (outcomes[instance.outcome] || 0) + 1;
      commitments.append(el("tr", { "data-transaction": commitment.transaction_uid },
        el("td", null, commitment.transaction_uid), el("td", null, commitment.requester_ae),
        el("td", null, time(commitment.requested_at)), el("td", null, counts(outcomes)),
        el("td", null, commitment.report ? commitment.report.state + (commitment.report.last_error
          ? ": " + commitment.report.last_error : "") : "not yet")));
    }

    const notifications = body("study-notifications");
    if (!detail.notifications.length) emptyRow(notifications, 5, "No notifications.");
    for (const delivery of detail.notifications) {
      notifications.append(el("tr", null,
        el("td", null, delivery.target_ae), el("td", null, delivery.state),
        el("td", { className: "number" }, delivery.attempts),
        el("td", { className: "error-text" }, delivery.last_error),
        el("td", null, time(delivery.delivered_at))));
    }

    const seriesBox = $("study-series");
    clear(seriesBox);
    for (const series of detail.series) {
      seriesBox.append(el("h4", null, (series.modality || "?") + " series " + series.series_instance_uid));
      const table = el("table", { className: "instances" },
        el("thead", null, el("tr", null, ...["#", "SOP Instance UID", "Version", "Status", "Findings",
          "Transfer syntax", "Size", "Source AE", "Received", "Variants"].map((h) => el("th", { scope: "col" }, h)))));
      const rows = el("tbody");
      const sorted = series.instances.slice().sort((a, b) =>
        (Number(a.instance_number) || 0) - (Number(b.instance_number) || 0) || a.version - b.version);
      for (const instance of sorted) {
        const findings = instance.findings.length
          ? el("ul", { className: "findings" }, ...instance.findings.map((f) => el("li", null,
            typeof f === "string" ? f : JSON.stringify(f))))
          : "";
        rows.append(el("tr", { className: "status-" + instance.status, "data-sop": instance.sop_instance_uid },
          el("td", { className: "number" }, instance.instance_number),
          el("td", { className: "uid" }, instance.sop_instance_uid),
          el("td", { className: "number" }, instance.version),
          el("td", null, el("span", { className: "badge " + instance.status }, instance.status)),
          el("td", null, findings),
          el("td", { className: "uid" }, instance.transfer_syntax_uid),
          el("td", { className: "number" }, bytes(instance.size)),
          el("td", null, instance.source_ae),
          el("td", null, time(instance.received_at)),
          el("td", null, instance.variants.map((v) => v.transfer_syntax_uid).join(", "))));
      }
      table.append(rows);
      seriesBox.append(table);
    }
    section.scrollIntoView({ block: "start" });
  }

  // ---- Dead letters -----------------------------------------------------------------------------------------

  async function loadDeadLetters(session) {
    let entries;
    try {
      entries = await api("/api/dlq");
    } catch (error) {
      if (session === generation) failed("Dead letters", error);
      return;
    }
    if (session !== generation) return;
    const tbody = body("dlq-table");
    if (!entries.length) emptyRow(tbody, 7, "No open dead-letter entries.");
    for (const entry of entries) {
      tbody.append(el("tr", null,
        el("td", { className: "uid" }, entry.entry_id), el("td", null, entry.stage),
        el("td", { className: "error-text" }, entry.reason), el("td", null, time(entry.failed_at)),
        el("td", { className: "uid" }, entry.subject), el("td", null, entry.records),
        el("td", null, button("Re-drive", () => act("Re-drive " + entry.entry_id,
          "/api/dlq/" + encodeURIComponent(entry.entry_id) + "/redrive", undefined,
          (answer) => "re-driven as " + answer.as)))));
    }
  }

  // ---- Forwarding -------------------------------------------------------------------------------------------

  async function loadDestinations(session) {
    let destinations;
    try {
      destinations = await api("/api/forward/destinations");
    } catch (error) {
      if (session === generation) failed("Forwarding destinations", error);
      return;
    }
    if (session !== generation) return;
    const tbody = body("destinations-table");
    if (!destinations.length) emptyRow(tbody, 8, "No forwarding destinations configured.");
    for (const d of destinations) {
      const address = d.ae_title + "@" + d.host + ":" + d.port + (d.tls ? " (TLS)" : "")
        + (d.storage_commitment ? ", commitment" : "");
      const state = d.paused ? "paused"
        : d.retry_after ? "backing off until " + time(d.retry_after) + " (" + d.consecutive_failures + " failures)"
          : "sending";
      const toggle = d.paused
        ? button("Resume", () => act("Resume " + d.name,
          "/api/forward/destinations/" + encodeURIComponent(d.name) + "/resume", undefined, () => "resumed"))
        : button("Pause", () => act("Pause " + d.name,
          "/api/forward/destinations/" + encodeURIComponent(d.name) + "/pause", undefined, () => "paused"));
      tbody.append(el("tr", { "data-destination": d.name, className: d.paused ? "paused" : "" },
        el("td", null, d.name), el("td", null, address), el("td", null, state),
        el("td", null, counts(d.instances)), el("td", { className: "number" }, duration(d.lag_seconds)),
        el("td", { className: "error-text" }, d.last_error ? d.last_error + " (" + time(d.last_error_at) + ")" : ""),
        el("td", null, time(d.last_success_at)),
        el("td", null, toggle, " ", button("Re-drive failed", () => redriveForwards(d.name, "", false)))));
    }
  }

  async function loadFailed(session) {
    let items;
    try {
      items = await api("/api/forward/failed");
    } catch (error) {
      if (session === generation) failed("Failed forwards", error);
      return;
    }
    if (session !== generation) return;
    const tbody = body("failed-table");
    if (!items.length) emptyRow(tbody, 8, "No failed forwards.");
    for (const item of items) {
      tbody.append(el("tr", null,
        el("td", null, item.destination),
        el("td", { className: "uid" }, button(item.study_instance_uid,
          () => openStudy(item.study_instance_uid, generation), "link")),
        el("td", { className: "uid" }, item.sop_instance_uid),
        el("td", { className: "number" }, item.version), el("td", { className: "number" }, item.attempts),
        el("td", { className: "error-text" }, item.last_error), el("td", null, time(item.finished_at)),
        el("td", null, button("Re-drive study", () => redriveForwards(item.destination, item.study_instance_uid,
          false)))));
    }
  }

  function redriveForwards(destination, study, resend) {
    const what = "Re-drive " + (destination || "all destinations") + (study ? " for study " + study : "");
    return act(what, "/api/forward/redrive", { destination, study_instance_uid: study, resend },
      (answer) => answer.queued + " instances queued again");
  }

  // ---- Storage commitment -----------------------------------------------------------------------------------

  async function loadOverdue(session) {
    let overdue;
    try {
      overdue = await api("/api/commitments/overdue");
    } catch (error) {
      if (session === generation) failed("Overdue commitments", error);
      return;
    }
    if (session !== generation) return;
    const tbody = body("overdue-table");
    if (!overdue.length) emptyRow(tbody, 5, "No overdue storage commitments.");
    for (const c of overdue) {
      const outcomes = {};
      for (const item of c.instances) outcomes[item.outcome] = (outcomes[item.outcome] || 0) + 1;
      const report = c.report ? c.report.state + " (" + c.report.attempts + " attempts"
        + (c.report.last_error ? ": " + c.report.last_error : "") + ")" : "none";
      tbody.append(el("tr", null, el("td", { className: "uid" }, c.transaction_uid), el("td", null, c.requester_ae),
        el("td", null, time(c.deadline)), el("td", null, counts(outcomes)), el("td", null, report)));
    }
  }

  async function loadLag(session) {
    let pools;
    try {
      pools = await api("/api/lag");
    } catch (error) {
      if (session === generation) failed("Worker backlog", error);
      return;
    }
    if (session !== generation) return;
    const tbody = body("lag-table");
    if (!pools.length) emptyRow(tbody, 4, "No worker pools configured.");
    for (const pool of pools) {
      tbody.append(el("tr", { "data-group": pool.group }, el("td", null, pool.role), el("td", null, pool.group),
        el("td", null, pool.topic), el("td", { className: "number" + (pool.waiting ? " error-text" : "") },
          String(pool.waiting))));
    }
  }

  // ---- Audit log (operator) ---------------------------------------------------------------------------------

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  // A date input's day (YYYY-MM-DD) as the instant its local midnight starts, `days` later: "to" is sent as
  // the next day's midnight, so both days of the form are whole and included (the API's "to" is exclusive).
  function dayStart(value, days) {
    const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
    if (!match) return "";
    return new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3]) + days).toISOString();
  }

  function auditAllowed(allowed) {
    $("audit-search").hidden = !allowed;
    $("audit-table").hidden = !allowed;
    $("audit-summary").classList.toggle("denied", !allowed);
  }

  function auditCriteria() {
    return {
      patient: $("audit-patient").value.trim(),
      from: $("audit-from").value,
      to: $("audit-to").value,
    };
  }

  async function loadAudit(session) {
    const criteria = auditCriteria();
    const request = ++auditRequest;
    const summary = $("audit-summary");
    if (criteria.from && criteria.to && criteria.from > criteria.to) {
      body("audit-table");
      summary.textContent = "The From date is after the To date.";
      return;
    }
    summary.textContent = "Loading…";
    const query = new URLSearchParams();
    if (criteria.patient) query.set("patient_id", criteria.patient);
    if (criteria.from) query.set("from", dayStart(criteria.from, 0));
    if (criteria.to) query.set("to", dayStart(criteria.to, 1));
    query.set("limit", String(criteria.patient ? AUDIT_LIMIT : AUDIT_RECENT));
    let entries;
    try {
      entries = await api("/api/audit?" + query.toString());
    } catch (error) {
      if (session !== generation || request !== auditRequest) return;
      body("audit-table");
      if (error instanceof ApiError && error.status === 403) {
        // a role below operator: say so here, once, and leave the rest of the page alone
        auditAllowed(false);
        summary.textContent = "The audit log needs the operator role: " + error.message;
        return;
      }
      summary.textContent = "";
      failed("Audit log", error);
      return;
    }
    if (session !== generation || request !== auditRequest) return;
    auditAllowed(true);
    const tbody = body("audit-table");
    const between = (criteria.from ? " from " + criteria.from : "") + (criteria.to ? " to " + criteria.to : "");
    const disclosures = entries.filter((entry) => entry.disclosure).length;
    const capped = entries.length >= AUDIT_LIMIT
      ? " (the first " + AUDIT_LIMIT + " only: narrow the dates to see the rest)" : "";
    summary.textContent = criteria.patient
      ? plural(entries.length, "entry", "entries") + " for patient " + criteria.patient + between + ", "
        + plural(disclosures, "disclosure", "disclosures") + ", oldest first" + capped
      : plural(entries.length, "most recent entry", "most recent entries") + between + ", newest first, "
        + plural(disclosures, "disclosure", "disclosures");
    if (!entries.length) {
      emptyRow(tbody, 8, criteria.patient ? "No entries for this patient." : "No audit entries.");
      return;
    }
    for (const entry of entries) tbody.append(auditRow(entry));
  }

  function auditRow(entry) {
    const failedOutcome = String(entry.outcome) !== "0";
    const action = entry.action
      ? el("span", { className: "action", title: ACTIONS[entry.action] || "" },
        entry.action + (ACTIONS[entry.action] ? " " + ACTIONS[entry.action] : ""))
      : null;
    const outcome = failedOutcome
      ? el("td", { className: "error-text" },
        el("span", { className: "badge failed" }, OUTCOMES[entry.outcome] || "failure " + entry.outcome),
        entry.outcome_text ? el("div", null, entry.outcome_text) : null)
      : el("td", null, OUTCOMES[entry.outcome] || entry.outcome, entry.outcome_text
        ? el("div", { className: "muted" }, entry.outcome_text) : null);
    const who = (entry.actor || "") + (entry.actor_host ? " @ " + entry.actor_host : "");
    const recipient = el("td", null, entry.recipient || "", entry.recipient && entry.disclosure ? " " : null,
      entry.disclosure ? el("span", { className: "badge disclosure" }, "disclosure") : null);
    const patient = entry.patient_id
      ? button(entry.patient_id + (entry.issuer_of_patient_id ? " (" + entry.issuer_of_patient_id + ")" : ""),
        () => {
          $("audit-patient").value = entry.patient_id;
          clearMessages();
          loadAudit(generation);
        }, "link")
      : "";
    const studies = el("td", { className: "uid" },
      ...(entry.studies || []).map((uid) => el("div", null, uid)),
      entry.instances ? el("div", { className: "number-note" }, plural(Number(entry.instances), "instance",
        "instances")) : null);
    return el("tr", {
      "data-record": entry.record_id, "data-patient": entry.patient_id,
      className: [failedOutcome ? "outcome-failed" : "", entry.disclosure ? "disclosed" : ""].join(" ").trim(),
    },
    el("td", null, time(entry.at)),
    el("td", null, entry.event, action ? " " : null, action),
    outcome,
    el("td", null, entry.interface),
    el("td", null, who),
    recipient,
    el("td", null, patient),
    studies);
  }

  // ---- Actions (the operator routes) ------------------------------------------------------------------------

  async function act(what, path, payload, done) {
    clearMessages();
    const session = generation;
    try {
      const answer = await api(path, { method: "POST", body: payload });
      message(what + ": " + done(answer), "ok");
    } catch (error) {
      failed(what, error);
      return;
    }
    if (session !== generation) return;
    await refresh();
    const open = $("study");
    if (!open.hidden && open.dataset.study) await openStudy(open.dataset.study, session);
  }

  // ---- Wiring -----------------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token");
      const token = input.value.trim();
      input.value = "";
      if (token) signIn(token);
    });
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      clearMessages();
      signedOut();
    });
    $("refresh").addEventListener("click", () => {
      clearMessages();
      refresh();
    });
    $("search").addEventListener("submit", (event) => {
      event.preventDefault();
      clearMessages();
      loadStudies(generation);
    });
    $("search-clear").addEventListener("click", () => {
      for (const id of ["search-patient", "search-accession", "search-study"]) $(id).value = "";
      $("today-only").checked = true;
      clearMessages();
      loadStudies(generation);
    });
    $("today-only").addEventListener("change", () => loadStudies(generation));
    $("audit-search").addEventListener("submit", (event) => {
      event.preventDefault();
      clearMessages();
      loadAudit(generation);
    });
    $("audit-clear").addEventListener("click", () => {
      for (const id of ["audit-patient", "audit-from", "audit-to"]) $(id).value = "";
      clearMessages();
      loadAudit(generation);
    });
    $("study-close").addEventListener("click", () => {
      $("study").hidden = true;
      delete $("study").dataset.study;
    });
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token);
  });
})();
