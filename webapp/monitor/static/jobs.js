/* Jobs list: filters in the address bar, rows kept live from the event log. */
"use strict";
(() => {
  const form = document.getElementById("job-filters");
  const body = document.querySelector("#jobs-table tbody");
  const FILTERS = ["status", "service", "customer_id", "workflow_id", "pool"];
  let offset = 0, limit = 50, total = 0;

  function query() {
    const params = new URLSearchParams();
    FILTERS.forEach((name) => { const v = form.elements[name].value.trim(); if (v) params.set(name, v); });
    if (offset) params.set("offset", offset);
    return params;
  }

  function fromAddress() {
    const params = new URLSearchParams(location.search);
    // A status the box does not list (an old or hand-edited link) is asked for as it is,
    // so the API's 400 names it: a select set to an unknown value reads "any".
    const status = form.elements.status, asked = params.get("status");
    if (asked && ![...status.options].some((o) => o.value === asked)) status.add(new Option(asked, asked));
    FILTERS.forEach((name) => { form.elements[name].value = params.get(name) || ""; });
    offset = Number(params.get("offset") || 0);
  }

  function row(job) {
    const step = job.workflow_id ? `${EMP.esc(job.workflow_id)}${job.total_steps ? ` (${job.current_step || "?"}/${job.total_steps})` : ""}` : "";
    return `<tr data-job-id="${EMP.esc(job.job_id)}">
      <td><a href="${EMP.prefix}/jobs/${encodeURIComponent(job.job_id)}"><code>${EMP.esc(job.job_id)}</code></a></td>
      <td class="job-status">${EMP.badge(job.status)}</td>
      <td>${EMP.esc(job.service_required)}</td><td>${EMP.esc(job.priority)}</td>
      <td>${EMP.esc(job.customer_id)}</td><td>${step}</td>
      <td class="job-worker">${EMP.esc(job.worker_id)}</td><td>${EMP.esc(job.attempts)}</td>
      <td class="job-progress">${EMP.progressBar(job.status === "completed" ? 100 : job.progress, job.status)}</td>
      <td title="${EMP.esc(new Date(job.created_at).toISOString())}">${EMP.since(job.created_at)}</td></tr>`;
  }

  /* The rows on show answer this query ("" before the first answer). A read that fails
     must not leave another query's rows under its error as if they answered it: a new
     filter's failure clears them; a failed refresh of the same filter keeps them, marked
     stale with the time they are from. */
  let shownQuery = null;
  function failed(asked) {
    const table = document.getElementById("jobs-table");
    if (asked !== shownQuery) {
      body.innerHTML = `<tr class="jobs-failed"><td colspan="10" class="text-body-secondary">No rows: this filter failed (see the error above).</td></tr>`;
      document.getElementById("jobs-total").textContent = "";
      document.getElementById("jobs-prev").disabled = document.getElementById("jobs-next").disabled = true;
      shownQuery = null;
      table.dataset.stale = "false";
      return;
    }
    if (table.dataset.stale === "true") return;
    table.dataset.stale = "true";
    const total = document.getElementById("jobs-total");
    total.textContent = `stale: rows as of ${table.dataset.loadedAt || "?"}, the last refresh failed · ` + total.textContent;
  }

  async function load() {
    const asked = query().toString();
    let page;
    try { page = await EMP.api("/jobs?" + asked); } catch (e) { failed(asked); throw e; }
    shownQuery = asked;
    const table = document.getElementById("jobs-table");
    table.dataset.stale = "false";
    table.dataset.loadedAt = new Date().toLocaleTimeString([], {hour12: false});
    total = page.total; limit = page.limit;
    body.innerHTML = page.jobs.map(row).join("") ||
      `<tr><td colspan="10" class="text-body-secondary">No jobs match.</td></tr>`;
    document.getElementById("jobs-total").textContent =
      total ? `${offset + 1}–${offset + page.jobs.length} of ${total}` : "0 jobs";
    document.getElementById("jobs-prev").disabled = offset === 0;
    document.getElementById("jobs-next").disabled = offset + limit >= total;
    EMP.stamp();
  }
  const refresh = EMP.throttled(load, 500);

  form.addEventListener("submit", (e) => {
    e.preventDefault(); offset = 0;
    const jobId = form.elements.job_id.value.trim();  // an id opens its job's page
    if (jobId) { location.href = `${EMP.prefix}/jobs/${encodeURIComponent(jobId)}`; return; }
    history.replaceState(null, "", "?" + query().toString());
    refresh.now();
  });
  document.getElementById("jobs-prev").onclick = () => { offset = Math.max(0, offset - limit); history.replaceState(null, "", "?" + query()); refresh.now(); };
  document.getElementById("jobs-next").onclick = () => { offset += limit; history.replaceState(null, "", "?" + query()); refresh.now(); };

  EMP.live((message) => {
    if (!message.job_id) return;
    const tr = body.querySelector(`tr[data-job-id="${CSS.escape(message.job_id)}"]`);
    const status = EMP.statusAfter(message);
    if (tr && message.type === "update_job_progress") {
      tr.querySelector(".job-progress").innerHTML = EMP.progressBar(message.progress, "in_progress");
      tr.querySelector(".job-status").innerHTML = EMP.badge("in_progress");
      return;
    }
    if (tr && status) {
      tr.querySelector(".job-status").innerHTML = EMP.badge(status);
      if (message.worker_id) tr.querySelector(".job-worker").textContent = message.worker_id;
      if (status === "completed") tr.querySelector(".job-progress").innerHTML = EMP.progressBar(100, status);
      // back to pending: the record's progress is cleared (the next run reports from 0)
      if (status === "pending") tr.querySelector(".job-progress").innerHTML = EMP.progressBar(0, status);
    }
    if (status) refresh();  // new jobs, and rows entering or leaving the filter
  }, () => refresh());

  fromAddress();
  refresh.now();
})();
