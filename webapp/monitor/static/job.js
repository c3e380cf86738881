/* One job: record, timeline and progress kept live; cancel, retry and requeue. */
"use strict";
(() => {
  const page = document.getElementById("job-page");
  const jobId = page.dataset.jobId;
  const timeline = document.querySelector("#job-timeline tbody");
  const seen = new Set();
  let status = null;

  const FIELDS = [["status", "Status"], ["service_required", "Service"], ["pool", "Pool"],
    ["priority", "Priority"], ["customer_id", "Customer"], ["workflow_id", "Workflow"],
    ["current_step", "Step"], ["total_steps", "Steps"], ["worker_id", "Worker"],
    ["machine_id", "Machine"], ["attempts", "Attempts"], ["max_retries", "Max retries"],
    ["created_at", "Submitted"], ["assigned_at", "Assigned"], ["started_at", "Started"],
    ["completed_at", "Completed"], ["failed_at", "Failed"], ["cancelled_at", "Cancelled"]];

  function setStatus(value) {
    status = value;
    const el = document.getElementById("job-status");
    el.outerHTML = EMP.badge(value).replace("<span ", '<span id="job-status" ');
    const can = {cancel: ["pending", "assigned", "in_progress"], retry: ["failed", "cancelled"],
                 requeue: ["assigned", "in_progress"]};
    for (const [action, states] of Object.entries(can)) {
      const button = document.getElementById("job-" + action);
      if (button) button.disabled = !states.includes(value);
    }
  }

  function setProgress(percent, message) {
    const bar = document.getElementById("job-progress");
    const p = Math.round(Math.max(0, Math.min(100, Number(percent) || 0)));
    bar.style.width = p + "%"; bar.textContent = p + "%";
    bar.parentElement.setAttribute("aria-valuenow", p);
    bar.className = "progress-bar" + (status === "completed" ? " bg-success" : status === "failed" ? " bg-danger" : status === "cancelled" ? " bg-warning" : "");
    if (message !== undefined) document.getElementById("job-progress-message").textContent = message || "";
  }

  /* A cold start (the record's preparing field, or a job_preparing event) in words. */
  function preparingText(p) {
    if (typeof p === "string") { try { p = JSON.parse(p); } catch (e) { return p; } }
    if (!p || !p.model) return "";
    const mb = (n) => (Number(n || 0) / 1e6).toFixed(1);
    const eta = p.eta_seconds === null || p.eta_seconds === undefined ? "" : `, about ${Math.ceil(p.eta_seconds)} s left`;
    return p.tier === "remote" ? `Preparing: downloading ${p.model} ${mb(p.bytes_done)}/${mb(p.bytes_total)} MB${eta}`
      : `Preparing: ${p.model} on ${p.tier}`;
  }

  /* Numbers as an operator reads them: at most one decimal (progress 1.6666666 -> 1.7). */
  function number(v) { return typeof v === "number" && !Number.isInteger(v) ? String(Math.round(v * 10) / 10) : v; }

  function details(name, data) {
    const skip = new Set(["timestamp", "job_id", "type", "event_id", "pool", "event"]);
    return Object.entries(data || {}).filter(([k]) => !skip.has(k))
      .map(([k, v]) => `<span class="me-2"><span class="text-body-secondary">${EMP.esc(k)}</span> ${EMP.esc(typeof v === "object" && v !== null ? JSON.stringify(v) : number(v))}</span>`).join("");
  }

  /* The timeline is drawn from every event seen, in log order, whichever way it came (the
     page's load or the live stream). Consecutive progress events fold into one row that
     updates (a 60-step job made 60 rows); its "show all" lists them. */
  const events = [];
  const expanded = new Set();  // first event id of each progress run shown in full

  function order(id) { const [ms, seq] = String(id).split("-"); return [Number(ms), Number(seq || 0)]; }

  function eventRow(e, extra = "") {
    return `<tr data-event-id="${EMP.esc(e.id)}" data-event="${EMP.esc(e.name)}" ${extra}><td>${EMP.time(e.at[0])}</td><td>${EMP.esc(e.name)}</td><td>${details(e.name, e.data)}</td></tr>`;
  }

  function summaryRow(run) {
    const first = run[0], last = run[run.length - 1], open = expanded.has(first.id);
    const d = last.data || {};
    const text = d.message ? ` · ${EMP.esc(d.message)}` : "";
    const many = run.length === 1 ? "1 progress event" : `${run.length} progress events since ${EMP.time(first.at[0]).replace(/\.\d+$/, "")}`;
    return `<tr class="progress-summary" data-event="update_job_progress" data-run="${EMP.esc(first.id)}">
      <td>${EMP.time(last.at[0])}</td><td>progress</td><td><strong>${Math.round(Number(d.progress) || 0)}%</strong>${text}
      <span class="text-body-secondary ms-2">${many}</span>
      <button type="button" class="btn btn-link btn-sm p-0 ms-2 align-baseline timeline-toggle" aria-expanded="${open}">${open ? "hide" : "show all"}</button></td></tr>` +
      (open ? run.map((e) => eventRow(e, `class="progress-event" data-run="${EMP.esc(first.id)}"`)).join("") : "");
  }

  function drawTimeline() {
    const rows = [];
    for (let i = 0; i < events.length;) {
      if (events[i].name !== "update_job_progress") { rows.push(eventRow(events[i])); i += 1; continue; }
      let j = i;
      while (j < events.length && events[j].name === "update_job_progress") j += 1;
      rows.push(summaryRow(events.slice(i, j)));
      i = j;
    }
    timeline.innerHTML = rows.join("");
  }

  function addEvent(id, name, data) {
    if (seen.has(id)) return false;
    seen.add(id);
    const e = {id, name, data, at: order(id)};
    let i = events.length;
    while (i > 0 && (e.at[0] < events[i - 1].at[0] || (e.at[0] === events[i - 1].at[0] && e.at[1] < events[i - 1].at[1]))) i -= 1;
    events.splice(i, 0, e);
    return true;
  }

  timeline.addEventListener("click", (event) => {
    const button = event.target.closest(".timeline-toggle");
    if (!button) return;
    const run = button.closest("tr").dataset.run;
    if (!expanded.delete(run)) expanded.add(run);
    drawTimeline();
  });

  /* A pending job no live worker can serve says so, with the reason, above everything else. */
  function servability(check) {
    const box = document.getElementById("job-servability");
    box.classList.toggle("d-none", !check || check.servable);
    if (check && !check.servable) box.textContent = check.reason;
  }

  function render(job) {
    setStatus(job.status);
    setProgress(job.status === "completed" ? 100 : job.progress,
      job.status === "assigned" && job.preparing ? preparingText(job.preparing) : job.progress_message);
    document.getElementById("job-fields").innerHTML = FIELDS.filter(([k]) => job[k] !== undefined && job[k] !== "")
      .map(([k, label]) => `<dt class="col-5">${label}</dt><dd class="col-7 mb-1" data-field="${k}">${
        k.endsWith("_at") ? EMP.esc(new Date(job[k]).toLocaleString()) : EMP.esc(job[k])}</dd>`).join("");
    // A failed or cancelled job says why (the record's last_error); a completed one, its result.
    const ended = job.status === "failed" || job.status === "cancelled";
    document.getElementById("job-outcome-title").textContent =
      job.status === "failed" ? "Error" : job.status === "cancelled" ? "Cancelled because" : "Result";
    const outcome = document.getElementById("job-outcome");
    outcome.textContent = ended ? job.last_error || "(no reason recorded)"
      : job.result !== undefined ? EMP.json(job.result) : "—";
    outcome.classList.toggle("text-danger", job.status === "failed");
    servability(job.status === "pending" ? job.servability : null);
    document.getElementById("job-payload").textContent = EMP.json(job.payload);
    document.getElementById("job-requirements").textContent = EMP.json(job.requirements || {});
    routing(job.routing);
  }

  /* Where the router filed the job and why (routing on: EMP_POOLS_FILE), with the other pools. */
  function routing(decision) {
    const box = document.getElementById("job-routing-box");
    box.classList.toggle("d-none", !decision || typeof decision !== "object");
    if (!decision || typeof decision !== "object") return;
    document.getElementById("job-routing").innerHTML =
      `<strong>${EMP.esc(decision.pool)}</strong> · predicted ${EMP.esc(number(decision.predicted_seconds))} s · ${EMP.esc(decision.reason)}`;
    document.querySelector("#job-routing-alternatives tbody").innerHTML = (decision.alternatives || [])
      .map((a) => `<tr data-pool="${EMP.esc(a.pool)}"><td>${EMP.esc(a.pool)}</td><td>${
        a.expected_wait_seconds === null || a.expected_wait_seconds === undefined ? "no live worker" : EMP.esc(number(a.expected_wait_seconds)) + " s"
      }</td><td>${EMP.esc(a.note || "")}</td></tr>`).join("");
  }

  async function load() {
    const detail = await EMP.api("/jobs/" + encodeURIComponent(jobId));
    render(detail.job);
    if (detail.events.map((e) => addEvent(e.id, e.event, e.data)).some(Boolean)) drawTimeline();
    EMP.stamp();
  }
  const refresh = EMP.throttled(load, 300);

  async function act(action) {
    const terminate = action === "cancel" && document.getElementById("job-terminate").checked;
    try {
      const answer = await EMP.api(`/jobs/${encodeURIComponent(jobId)}/${action}${terminate ? "?terminate=true" : ""}`, {method: "POST"});
      setStatus(answer.status);
      EMP.showError(null);
    } catch (e) { EMP.showError(e); }
    refresh();
  }
  ["cancel", "retry", "requeue"].forEach((action) => {
    const button = document.getElementById("job-" + action);
    if (button) button.addEventListener("click", () => act(action));
  });

  EMP.live((message) => {
    if (message.job_id !== jobId) return;
    const next = EMP.statusAfter(message);
    if (next) setStatus(next);
    if (next === "pending") setProgress(0, "");  // the record's progress is cleared too
    if (message.type === "update_job_progress") setProgress(message.progress, message.message);
    if (message.type === "job_preparing") setProgress(0, preparingText(message));
    if (message.event_id && addEvent(message.event_id, message.event || message.type, message)) drawTimeline();
    if (next && next !== "in_progress") refresh();  // record fields: worker, result, times
  }, () => refresh());
  refresh.now().catch(EMP.showError);
})();
