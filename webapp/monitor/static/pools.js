/* Pools: one pool's figures per minute over the last hour or day, redrawn live
   (every few seconds, and soon after a claim or completion event). */
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  let pool = params.get("pool") || "";
  let window_ = params.get("window") === "24h" ? "24h" : "1h";
  const charts = document.getElementById("pools-charts");
  const pct = (values) => values.map((v) => v === null ? null : v * 100);
  /* A gauge's series with its current minute set to the gauge read now (`now`, the figure
     shown beside the chart). Samples are written only by claims and completions, so a pool
     no worker serves kept its last one: "Pending now 2" beside a depth chart ending at 0. */
  const atNow = (values, v) => v === null || v === undefined ? values : [...values.slice(0, -1), v];
  const CHARTS = [
    ["queue_depth", "Queue depth (pending jobs)", "", (s, now) => [{name: "pending", values: atNow(s.queue_depth, now.queue_depth)}]],
    ["wait_p95", "Wait p95 (seconds)", " s", (s) => [{name: "p95", values: s.wait_p95_seconds}]],
    ["throughput", "Throughput (jobs completed per minute)", "", (s) => [{name: "completed", values: s.throughput}]],
    ["hit_rate", "Model hit rate (% of claims warm)", "%", (s) => [{name: "warm", values: pct(s.hit_rate)}], 100],
    ["machines", "Machines (live workers, desired)", "", (s, now) => [{name: "live", values: atNow(s.live_workers, now.live_workers)}, {name: "desired", values: atNow(s.desired, now.desired)}]],
    ["utilization", "Utilization (% busy of live worker-time)", "%", (s) => [{name: "busy", values: pct(s.utilization)}], 100],
  ];

  function metric(label, value, id) {
    return `<div class="emp-metric" id="pools-total-${id}"><div class="small">${EMP.esc(label)}</div><div class="value">${EMP.esc(value)}</div></div>`;
  }

  function share(v) { return v === null || v === undefined ? "—" : Math.round(v * 1000) / 10 + "%"; }

  function remember() {
    const q = new URLSearchParams({pool, window: window_});
    history.replaceState(null, "", location.pathname + "?" + q);
  }

  /* Why the shown pool's jobs wait (no live worker serves it), as /api/pools says. */
  let waiting = {};
  function showWaiting() {
    const box = document.getElementById("pools-waiting");
    const reason = waiting[pool];
    box.textContent = reason ? `${pool}: ${reason}` : "";
    box.classList.toggle("d-none", !reason);
  }

  async function choices() {
    const data = await EMP.api("/pools");
    waiting = data.waiting || {};
    const box = document.getElementById("pools-choice");
    document.getElementById("pools-empty").classList.toggle("d-none", data.pools.length > 0);
    if (!data.pools.length) return false;
    if (!data.pools.includes(pool)) pool = data.pools[0];
    box.innerHTML = data.pools.map((p) =>
      `<button type="button" class="btn btn-outline-${waiting[p] ? "warning" : "primary"}${p === pool ? " active" : ""}" data-pool="${EMP.esc(p)}"${waiting[p] ? ` title="${EMP.esc(waiting[p])}"` : ""}>${EMP.esc(p)}</button>`).join("");
    showWaiting();
    return true;
  }

  /* The figures on show answer `shown` (pool and window). A read of another pool or
     window that fails must not leave them under its error as if they were its answer:
     they are cleared. A failed refresh of the same ones keeps them, dimmed (stale). */
  let shown = null;
  function failed(asked) {
    if (asked !== shown) {
      charts.innerHTML = `<p class="small text-body-secondary pools-failed">No figures: reading ${EMP.esc(pool)} (${EMP.esc(window_)}) failed (see the error above).</p>`;
      document.getElementById("pools-totals").innerHTML = "";
      charts.dataset.pool = ""; charts.dataset.stale = "false";
      shown = null;
      return;
    }
    charts.dataset.stale = "true";
  }

  async function load() {
    if (!pool && !(await choices())) return;
    const asked = pool + "\n" + window_;
    let data;
    try { data = await EMP.api(`/pools/${encodeURIComponent(pool)}/metrics?window=${window_}`); }
    catch (e) { failed(asked); throw e; }
    shown = asked; charts.dataset.stale = "false";
    const s = data.series, tot = data.totals;
    charts.dataset.pool = data.pool;
    charts.dataset.window = data.window;
    if (charts.children.length !== CHARTS.length) {
      charts.innerHTML = CHARTS.map(([id]) => `<figure class="emp-chart" id="chart-${id}" data-metric="${id}"></figure>`).join("");
    }
    const now = data.now;
    CHARTS.forEach(([id, title, unit, lines, max]) =>
      EMPChart.draw(document.getElementById("chart-" + id), {title, unit, t: s.t, lines: lines(s, now), max}));
    document.getElementById("pools-totals").innerHTML =
      metric("Pending now", now.queue_depth, "pending") + metric("Running now", now.busy, "running") +
      metric("Live / desired", `${now.live_workers} / ${now.desired === null ? "—" : now.desired}`, "machines") +
      metric(`Completed (${data.window})`, tot.throughput, "completed") +
      metric("Wait p95", tot.wait_p95_seconds === null ? "—" : EMPChart.fmt(tot.wait_p95_seconds) + " s", "wait") +
      metric("Hit rate", share(tot.hit_rate), "hits") + metric("Utilization", share(tot.utilization), "utilization") +
      metric("Wait / run", tot.queue_efficiency === null ? "—" : EMPChart.fmt(tot.queue_efficiency), "efficiency") +
      metric("Routing accuracy", share(tot.routing_accuracy), "routing");
    EMP.stamp();
  }

  const refresh = EMP.throttled(load, 1000);
  document.getElementById("pools-choice").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-pool]");
    if (!b) return;
    pool = b.dataset.pool; remember(); showWaiting();
    document.querySelectorAll("#pools-choice button").forEach((x) => x.classList.toggle("active", x === b));
    refresh.now();
  });
  document.querySelectorAll("#pools-window button").forEach((b) => {
    b.classList.toggle("active", b.dataset.window === window_);
    b.addEventListener("click", () => {
      window_ = b.dataset.window; remember();
      document.querySelectorAll("#pools-window button").forEach((x) => x.classList.toggle("active", x === b));
      refresh.now();
    });
  });
  // Live: events of claims and completions bring a redraw soon; the poll covers the rest
  // (gauges move without events). The day's chart changes slowly: polled less often.
  const LIVE = new Set(["job_assigned", "complete_job", "job_failed"]);
  EMP.live((message) => { if (LIVE.has(message.type)) refresh(); }, () => refresh());
  let ticks = 0;
  setInterval(() => { ticks += 1; if (window_ === "1h" || ticks % 10 === 0) refresh(); }, 3000);
  setInterval(() => { choices().catch(() => {}); }, 30000);  // a pool used for the first time
  choices().then(() => refresh.now()).catch((e) => EMP.showError(e));
})();
