/* Webhooks: registered hooks, their health and the recent delivery log; reconnect. */
"use strict";
(() => {
  const hooks = document.querySelector("#hooks-table tbody");
  const deliveries = document.querySelector("#deliveries-table tbody");
  const HEALTH = {connected: "text-bg-success", failing: "text-bg-warning", disconnected: "text-bg-danger", inactive: "text-bg-secondary"};

  function hookRow(h) {
    const s = h.stats || {};
    const canReconnect = !EMP.readOnly && (h.health === "disconnected" || h.health === "failing");
    return `<tr data-hook-id="${EMP.esc(h.id)}" data-health="${EMP.esc(h.health)}">
      <td><code>${EMP.esc(h.id)}</code></td><td class="text-break">${EMP.esc(h.url)}</td>
      <td class="small">${(h.events || []).map(EMP.esc).join(", ")}</td>
      <td><span class="badge ${HEALTH[h.health] || "text-bg-light"}">${EMP.esc(h.health)}</span>
        ${h.consecutive_failures ? `<div class="small text-danger">${h.consecutive_failures} failures in a row</div>` : ""}
        ${s.last_error ? `<div class="small text-body-secondary text-break">${EMP.esc(s.last_error)}</div>` : ""}</td>
      <td class="text-end">${EMP.esc(s.successful_deliveries ?? 0)}</td>
      <td class="text-end">${EMP.esc((s.failed_deliveries ?? 0) + (s.refused_deliveries ?? 0))}</td>
      <td class="text-end">${EMP.esc(s.pending_deliveries ?? 0)}${s.dropped_events ? ` <span class="text-danger">(${s.dropped_events} dropped)</span>` : ""}</td>
      <td class="small">${EMP.since(h.last_success_at)}</td><td class="small">${EMP.since(h.last_failure_at)}</td>
      <td>${canReconnect ? `<button class="btn btn-sm btn-outline-primary hook-reconnect" type="button" data-hook-id="${EMP.esc(h.id)}">Reconnect</button>` : ""}</td></tr>`;
  }

  function deliveryRow(d) {
    const cls = d.status === "delivered" ? "text-success" : d.status === "failed" || d.status === "refused" ? "text-danger" : "";
    return `<tr><td>${EMP.time(d.last_attempt_at || d.created_at)}</td><td><code>${EMP.esc(d.webhook_id)}</code></td>
      <td>${EMP.esc(d.event_type)}${d.test ? " (test)" : ""}</td>
      <td>${d.job_id ? `<a href="${EMP.prefix}/jobs/${encodeURIComponent(d.job_id)}"><code>${EMP.esc(d.job_id)}</code></a>` : ""}</td>
      <td class="${cls}">${EMP.esc(d.status)}</td><td>${EMP.esc(d.last_status_code ?? "")}</td>
      <td>${EMP.esc(d.attempts ?? "")}</td><td class="small text-break">${EMP.esc(d.last_error || "")}</td></tr>`;
  }

  async function load() {
    const data = await EMP.api("/webhooks");
    hooks.innerHTML = data.hooks.map(hookRow).join("");
    document.getElementById("hooks-empty").classList.toggle("d-none", data.hooks.length > 0);
    deliveries.innerHTML = data.recent_deliveries.map(deliveryRow).join("") ||
      '<tr><td colspan="8" class="text-body-secondary">No deliveries yet.</td></tr>';
    EMP.stamp();
  }
  const refresh = EMP.throttled(load, 1000);

  hooks.addEventListener("click", async (event) => {
    const button = event.target.closest(".hook-reconnect");
    if (!button) return;
    button.disabled = true;
    try { await EMP.api(`/webhooks/${encodeURIComponent(button.dataset.hookId)}/reconnect`, {method: "POST"}); EMP.showError(null); }
    catch (e) { EMP.showError(e); }
    refresh.now();
  });
  // Deliveries follow job events; the service's own state has no event, so poll as well.
  EMP.live((message) => { if (message.job_id) refresh(); }, () => refresh());
  setInterval(refresh, 3000);
  refresh.now();
})();
