/* Machines: GPUs, workers and their capability profiles; live from worker, machine and job events. */
"use strict";
(() => {
  const list = document.getElementById("machines-list");
  let profiles = [];  // the read's distinct capability profiles; a worker names its index

  function metric(label, value, danger = false, id = "") {
    return `<div class="emp-metric${danger ? " danger" : ""}"${id ? ` id="${id}"` : ""}><div class="small">${EMP.esc(label)}</div><div class="value">${EMP.esc(value)}</div></div>`;
  }

  function models(map) {
    const parts = Object.entries(map || {}).filter(([, v]) => v && v.length)
      .map(([service, names]) => `${EMP.esc(service)}: ${names.map(EMP.esc).join(", ")}`);
    return parts.join("; ") || "—";
  }

  function profile(c) {
    if (!c) return "—";
    const rows = [["services", (c.services || []).join(", ")],
      ["GPU memory", c.gpu_memory_gb !== null && c.gpu_memory_gb !== undefined ? c.gpu_memory_gb + " GB" : ""],
      ["GPU model", c.gpu_model], ["RAM", c.ram_gb ? c.ram_gb + " GB" : ""], ["CPU cores", c.cpu_cores],
      ["isolation", c.customer_isolation && c.customer_isolation !== "none" ? c.customer_isolation +
        (c.allowed_customers && c.allowed_customers.length ? ` (${c.allowed_customers.join(", ")})` : "") : ""],
      ["workflow", c.workflow_id],
      ...Object.entries(c.custom || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : v])];
    const shown = rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => `<span class="me-2"><span class="text-body-secondary">${EMP.esc(k)}</span> ${EMP.esc(v)}</span>`);
    return `<div class="emp-profile">${shown.join("")}<div><span class="text-body-secondary">models</span> ${models(c.models)}</div></div>`;
  }

  function jobs(ids) {
    return (ids || []).map((id) => `<a href="${EMP.prefix}/jobs/${encodeURIComponent(id)}"><code>${EMP.esc(id)}</code></a>`).join("<br>") || "—";
  }

  function workerRow(w) {
    return `<tr data-worker-id="${EMP.esc(w.worker_id)}">
      <td><code>${EMP.esc(w.worker_id)}</code>${w.name && w.name !== w.worker_id ? `<div class="small text-body-secondary">${EMP.esc(w.name)}</div>` : ""}</td>
      <td class="worker-status">${EMP.badge(w.status)}</td>
      <td>${EMP.esc(w.program_state || "—")}</td>
      <td>${w.gpu === null || w.gpu === undefined ? "—" : "GPU " + EMP.esc(w.gpu)}</td>
      <td class="worker-jobs">${jobs(w.jobs)}</td>
      <td>${profile(profiles[w.capabilities])}</td>
      <td>${w.last_seen ? EMP.since(w.last_seen) : "—"}</td></tr>`;
  }

  function card(m) {
    const gpus = (m.gpus || []).map((g) => `<span class="emp-gpu">GPU ${EMP.esc(g.index)} · ${EMP.esc(g.name)} · ${EMP.esc(g.memory_gb)} GB</span>`).join(" ");
    const health = m.healthy ? `<span class="text-success">✓ ${EMP.esc(m.health_reason)}</span>`
      : `<span class="text-danger fw-semibold">✗ ${EMP.esc(m.health_reason)}</span>`;
    // Workers with no machine record: their heartbeat is the only report there is.
    const bare = !m.ended && m.has_record === false;
    const when = m.ended ? `ended ${EMP.since(m.ended_at)}${m.reason ? " — " + EMP.esc(m.reason) : ""}`
      : m.last_report ? `${bare ? "last heartbeat" : "last report"} ${EMP.since(m.last_report)}` : "";
    return `<article class="card emp-machine ${EMP.esc(m.status)}" data-machine-id="${EMP.esc(m.machine_id)}" data-status="${EMP.esc(m.status)}">
      <div class="card-header">
        <strong class="fs-6">${EMP.esc(m.name || m.machine_id)}</strong> ${bare ? EMP.badge("workers only", "machine-status") : EMP.badge(m.status, "machine-status")}
        ${m.stale ? '<span class="badge text-bg-warning">stale</span>' : ""}
        <span class="small">${health}</span>
        <span class="small text-body-secondary">${EMP.esc(m.hostname || "")}${m.gpu_source ? " · GPUs from " + EMP.esc(m.gpu_source) : ""}</span>
        <span class="small text-body-secondary ms-auto">${when}${m.uptime_seconds ? " · up " + EMP.age(m.uptime_seconds) : ""}</span>
      </div>
      <div class="card-body py-2">
        ${gpus ? `<div class="d-flex flex-wrap gap-2 mb-2">${gpus}</div>` : ""}
        ${(m.workers || []).length ? `<table class="table table-sm align-middle mb-0 small">
          <thead><tr><th>Worker</th><th>Status</th><th>Program</th><th>GPU</th><th>Current job</th><th>Capabilities</th><th>Last seen</th></tr></thead>
          <tbody>${m.workers.map(workerRow).join("")}</tbody></table>` : '<p class="small text-body-secondary mb-0">No workers.</p>'}
      </div></article>`;
  }

  async function load() {
    // Only what the page shows, and nothing when the fleet has not changed (304).
    const data = await EMP.api("/machines?view=page", {revalidate: true});
    const machines = data.machines;
    profiles = data.profiles;
    const live = machines.filter((m) => !m.ended);
    const bare = live.filter((m) => m.has_record === false);
    const workers = machines.flatMap((m) => m.workers || []);
    document.getElementById("machines-totals").innerHTML =
      metric("Machines online", live.filter((m) => m.has_record !== false).length) +
      (bare.length ? metric("Workers outside machines", bare.reduce((n, m) => n + (m.workers || []).length, 0)) : "") +
      metric("Gone or offline", machines.filter((m) => m.ended).length, machines.some((m) => m.status === "gone")) +
      metric("GPUs", live.reduce((n, m) => n + (m.gpu_count || 0), 0)) +
      metric("Workers busy", workers.filter((w) => w.status === "busy").length) +
      metric("Workers idle", workers.filter((w) => w.status === "idle").length) +
      (workers.some((w) => w.status === "silent") ? metric("Workers silent", workers.filter((w) => w.status === "silent").length, true) : "") +
      metric("Unhealthy", live.filter((m) => !m.healthy).length, live.some((m) => !m.healthy));
    list.innerHTML = machines.map(card).join("");
    document.getElementById("machines-empty").classList.toggle("d-none", machines.length > 0);
    EMP.stamp();
  }
  const refresh = EMP.throttled(load, 700);
  const RELEVANT = new Set(["worker_status", "machine_status", "job_assigned", "job_started",
    "complete_job", "job_failed", "job_cancelled", "job_requeued", "job_retrying",
    "job_replaced"]);
  EMP.live((message) => { if (RELEVANT.has(message.type)) refresh(); }, () => refresh());
  setInterval(refresh, 5000);  // ages and heartbeats move without events
  refresh.now();
})();
