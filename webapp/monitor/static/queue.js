/* Queue: pending jobs by pool and requirement class; classes no live worker can serve are flagged. */
"use strict";
(() => {
  const body = document.querySelector("#queue-table tbody");

  function metric(label, value, danger = false) {
    return `<div class="emp-metric${danger ? " danger" : ""}"><div class="small">${EMP.esc(label)}</div><div class="value">${EMP.esc(value)}</div></div>`;
  }

  function row(c) {
    const who = c.unservable
      ? `<span class="emp-flag">⚠ unservable — no live worker can run these jobs; they will wait forever</span>`
      : c.workers.map((w) => `<code class="me-1">${EMP.esc(w)}</code>`).join("");
    const reqs = (c.requirements || []).map((r) => `<div>${EMP.esc(r)}</div>`).join("") || '<span class="text-body-secondary">none</span>';
    const tied = [c.customer_id ? `customer ${EMP.esc(c.customer_id)}` : "", c.workflow_id ? `workflow ${EMP.esc(c.workflow_id)}` : ""].filter(Boolean).join(" · ");
    return `<tr class="${c.unservable ? "emp-unservable" : ""}" data-class="${EMP.esc(c.class)}" data-pool="${EMP.esc(c.pool)}" data-unservable="${c.unservable}">
      <td>${EMP.esc(c.pool)}</td><td>${EMP.esc(c.service)}${tied ? `<div class="small text-body-secondary">${tied}</div>` : ""}</td>
      <td class="small">${reqs}</td><td class="text-end fw-semibold class-pending">${EMP.esc(c.pending)}</td>
      <td class="text-end text-nowrap class-oldest">${EMP.age(c.oldest_age_seconds)}</td><td class="class-workers">${who}</td></tr>`;
  }

  /* A class as the banner names it: service, conditions, and what else sets it apart
     (two classes that differ only by customer read the same otherwise). */
  function label(c) {
    const tied = [c.customer_id && !c.strict ? `customer ${c.customer_id}` : "", c.workflow_id ? `workflow ${c.workflow_id}` : ""].filter(Boolean);
    return `${c.service} [${(c.requirements || []).join(", ") || "no requirements"}]${tied.length ? " for " + tied.join(", ") : ""} in pool ${c.pool}`;
  }

  function labels(classes) {
    const texts = classes.map(label);
    const count = texts.reduce((m, t) => m.set(t, (m.get(t) || 0) + 1), new Map());
    return texts.map((t, i) => count.get(t) > 1 ? `${t} (class ${classes[i].class.slice(0, 8)})` : t);
  }

  /* The banner names the classes holding the most jobs, not all of them: thousands of
     classes (one per job, say) made pages of text above the table, which flags each. */
  const NAMED = 5;
  function named(classes) {
    const order = classes.map((c, i) => i).sort((a, b) => classes[b].pending - classes[a].pending);
    const texts = labels(classes);
    const more = classes.length - NAMED;
    return order.slice(0, NAMED).map((i) => texts[i]).join("; ") +
      (more > 0 ? `; and ${more} more class${more > 1 ? "es" : ""} (flagged in the table below)` : "");
  }

  async function load() {
    const data = await EMP.api("/queue");
    const pending = data.pools.reduce((n, p) => n + p.pending, 0);
    const delayed = data.pools.reduce((n, p) => n + p.delayed, 0);
    const bad = data.classes.filter((c) => c.unservable);
    const stuck = bad.reduce((n, c) => n + c.pending, 0);
    const running = data.pools.reduce((n, p) => n + (p.jobs.assigned || 0) + (p.jobs.in_progress || 0), 0);
    document.getElementById("queue-totals").innerHTML =
      metric("Pending", pending) + metric("Running", running) + metric("Waiting to retry", delayed) +
      metric("Classes", data.classes.length) + metric("Unservable classes", bad.length, bad.length > 0) +
      metric("Workers idle / busy", `${data.workers.idle} / ${data.workers.busy}`) +
      (data.workers.service_unhealthy ? metric("Workers whose service is down", data.workers.service_unhealthy, true) : "") +
      (data.workers.silent ? metric("Workers silent (no heartbeat for a lease)", data.workers.silent, true) : "");
    const alert = document.getElementById("queue-alert");
    alert.classList.toggle("d-none", bad.length === 0);
    alert.textContent = bad.length ? `${bad.length} requirement class${bad.length > 1 ? "es" : ""} (${stuck} job${stuck === 1 ? "" : "s"}) cannot be served by any live worker: ${
      named(bad)}. These jobs will wait forever unless such a worker joins or they are cancelled.` : "";
    body.innerHTML = data.classes.map(row).join("");
    document.getElementById("queue-empty").classList.toggle("d-none", data.classes.length > 0);
    EMP.stamp();
  }
  const refresh = EMP.throttled(load, 500);
  EMP.live((message) => { if (message.type !== "update_job_progress") refresh(); }, () => refresh());
  setInterval(refresh, 5000);  // oldest ages grow without events
  refresh.now();
})();
