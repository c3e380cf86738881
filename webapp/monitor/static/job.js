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

  function details(name, data) {
    const skip = new Set(["timestamp", "job_id", "type", "event_id", "pool", "event"]);
    return Object.entries(data || {}).filter(([k]) => !skip.has(k))
      .map(([k, v]) => `<span class="me-2"><span class="text-body-secondary">${EMP.esc(k)}</span> ${EMP.esc(typeof v === "object" ? JSON.stringify(v) : v)}</span>`).join("");
  }

  function addEvent(id, name, data) {
    if (seen.has(id)) return;
    seen.add(id);
    const ms = Number(String(id).split("-")[0]);
    timeline.insertAdjacentHTML("beforeend",
      `<tr data-event-id="${EMP.esc(id)}" data-event="${EMP.esc(name)}"><td>${EMP.time(ms)}</td><td>${EMP.esc(name)}</td><td>${details(name, data)}</td></tr>`);
  }

  function render(job) {
    setStatus(job.status);
    setProgress(job.status === "completed" ? 100 : job.progress, job.progress_message);
    document.getElementById("job-fields").innerHTML = FIELDS.filter(([k]) => job[k] !== undefined && job[k] !== "")
      .map(([k, label]) => `<dt class="col-5">${label}</dt><dd class="col-7 mb-1" data-field="${k}">${
        k.endsWith("_at") ? EMP.esc(new Date(job[k]).toLocaleString()) : EMP.esc(job[k])}</dd>`).join("");
    const outcome = job.result !== undefined ? job.result : job.error ? {error: job.error, error_type: job.error_type} : null;
    document.getElementById("job-outcome").textContent = outcome === null ? "—" : EMP.json(outcome);
    document.getElementById("job-payload").textContent = EMP.json(job.payload);
    document.getElementById("job-requirements").textContent = EMP.json(job.requirements || {});
  }

  async function load() {
    const detail = await EMP.api("/jobs/" + encodeURIComponent(jobId));
    render(detail.job);
    detail.events.forEach((e) => addEvent(e.id, e.event, e.data));
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
    if (message.type === "update_job_progress") setProgress(message.progress, message.message);
    if (message.event_id) addEvent(message.event_id, message.event || message.type, message);
    if (next && next !== "in_progress") refresh();  // record fields: worker, result, times
  }, () => refresh());
  refresh.now().catch(EMP.showError);
})();
