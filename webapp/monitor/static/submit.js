/* Submit a test job; the jobs submitted from this page stay listed and live. */
"use strict";
(() => {
  const form = document.getElementById("submit-form");
  const result = document.getElementById("submit-result");
  const warnings = document.getElementById("submit-warnings");
  const body = document.querySelector("#submitted-table tbody");
  // Events can outrun the submit's answer: keep recent ones to apply when the row appears.
  const early = [];

  function parseObject(name, label) {
    const text = form.elements[name].value.trim();
    if (!text) return undefined;
    let value;
    try { value = JSON.parse(text); } catch (e) { throw new Error(`${label} is not valid JSON: ${e.message}`); }
    if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error(`${label} must be a JSON object`);
    return value;
  }

  async function submit(event) {
    event.preventDefault();
    result.className = "small"; result.textContent = "";
    warnings.innerHTML = ""; warnings.classList.add("d-none");
    let job;
    try {
      job = {service_required: form.elements.service_required.value,
             priority: Number(form.elements.priority.value),
             payload: parseObject("payload", "Payload"),
             requirements: parseObject("requirements", "Requirements")};
      for (const name of ["customer_id", "pool"]) {
        const v = form.elements[name].value.trim();
        if (v) job[name] = v;
      }
      if (!Number.isInteger(job.priority)) throw new Error("Priority must be a whole number from 0 to 100");
    } catch (e) { result.className = "small text-danger"; result.textContent = e.message; return; }
    try {
      const answer = await EMP.api("/submit", {method: "POST", body: job});
      result.className = "small text-success";
      result.innerHTML = `Submitted <a href="${EMP.prefix}/jobs/${encodeURIComponent(answer.job_id)}" id="submitted-link"><code>${EMP.esc(answer.job_id)}</code></a>`;
      // What POST /api/jobs would warn of (a pool no live worker serves): filed, but it may wait.
      warnings.innerHTML = (answer.warnings || []).map((w) => `<li>${EMP.esc(w)}</li>`).join("");
      warnings.classList.toggle("d-none", !(answer.warnings || []).length);
      body.insertAdjacentHTML("afterbegin", `<tr data-job-id="${EMP.esc(answer.job_id)}">
        <td><a href="${EMP.prefix}/jobs/${encodeURIComponent(answer.job_id)}"><code>${EMP.esc(answer.job_id)}</code></a></td>
        <td>${EMP.esc(job.service_required)}</td><td class="job-status">${EMP.badge("pending")}</td>
        <td class="job-progress">${EMP.progressBar(0, "pending")}</td><td class="job-worker"></td></tr>`);
      early.filter((m) => m.job_id === answer.job_id).forEach(apply);
    } catch (e) { result.className = "small text-danger"; result.textContent = e.message; }
  }
  form.addEventListener("submit", submit);

  function apply(message) {
    const tr = body.querySelector(`tr[data-job-id="${CSS.escape(message.job_id)}"]`);
    if (!tr) {
      early.push(message);
      if (early.length > 200) early.shift();
      return;
    }
    const status = EMP.statusAfter(message);
    if (status) tr.querySelector(".job-status").innerHTML = EMP.badge(status);
    if (message.worker_id) tr.querySelector(".job-worker").textContent = message.worker_id;
    if (message.type === "update_job_progress") tr.querySelector(".job-progress").innerHTML = EMP.progressBar(message.progress, "in_progress");
    if (status && status !== "in_progress" && status !== "assigned" && status !== "pending")
      tr.querySelector(".job-progress").innerHTML = EMP.progressBar(status === "completed" ? 100 : tr.querySelector(".progress").getAttribute("aria-valuenow"), status);
  }
  EMP.live((message) => { if (message.job_id) apply(message); });

  EMP.api("/services").then((answer) => {
    const select = form.elements.service_required;
    select.innerHTML = answer.services.map((s) => `<option${s === "simulation" ? " selected" : ""}>${EMP.esc(s)}</option>`).join("");
  }).catch(EMP.showError);
})();
