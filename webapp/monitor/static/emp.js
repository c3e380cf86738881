/* The monitor pages' shared helpers: JSON calls, the live event stream, formatting. */
"use strict";

const EMP = (() => {
  // Flower's --url_prefix, as "/path" (Flower writes it bare into the page).
  const rawPrefix = ((document.getElementById("url_prefix") || {}).value || "").replace(/^\/+|\/+$/g, "");
  const prefix = rawPrefix ? "/" + rawPrefix : "";
  const readOnly = (document.querySelector(".emp-page") || {dataset: {}}).dataset.readOnly === "true";

  function cookie(name) {
    const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
    return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
  }

  /* The login ended (an OAuth session expired, basic-auth credentials no longer good):
     what the reads answer is a redirect to the login page or a 401, not data. */
  class SessionEnded extends Error {
    constructor() { super("Session expired: reload to sign in"); this.sessionEnded = true; }
  }

  /* GET or POST /emp/api/<path>; resolves to the JSON body, rejects with the server's error.
     No JSON route redirects, so a redirect is the login's (--auth sends an expired session
     to /login, then to the provider): followed, it ended in "Failed to fetch" (another
     site, no CORS) or in a login page parsed as JSON. */
  /* options.revalidate: send the last answer's ETag; a 304 (nothing changed) resolves to
     that answer again, having cost no body. The answers say no-store, so the browser's
     cache keeps none of it: the last one lives here, per path. */
  const revalidated = new Map();
  async function api(path, options = {}) {
    const init = {method: options.method || "GET", credentials: "same-origin", redirect: "manual",
                  headers: {"X-XSRFToken": cookie("_xsrf"), "Accept": "application/json"}};
    if (options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const last = options.revalidate ? revalidated.get(path) : undefined;
    if (options.revalidate) init.cache = "no-store";
    if (last) init.headers["If-None-Match"] = last.etag;
    const response = await fetch(prefix + "/emp/api" + path, init);
    if (response.type === "opaqueredirect" || response.status === 401) throw new SessionEnded();
    if (response.status === 304 && last) return last.body;
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (response.ok && body === null) {
      throw new Error(`the monitor's answer to ${path} is not JSON (${response.status})`);
    }
    if (!response.ok) {
      const error = new Error((body && body.error) || response.status + " " + response.statusText);
      error.status = response.status;
      throw error;
    }
    const etag = response.headers.get("ETag");
    if (options.revalidate && etag) revalidated.set(path, {etag, body});
    return body;
  }

  function showError(error) {
    const box = document.getElementById("emp-error");
    if (!box) return;
    box.textContent = error ? String(error.message || error) : "";
    if (error && error.sessionEnded) {  // "Session expired: <a>reload to sign in</a>"
      box.textContent = "Session expired: ";
      const link = document.createElement("a");
      link.href = location.href; link.className = "alert-link emp-sign-in";
      link.textContent = "reload to sign in";
      box.appendChild(link);
    }
    box.classList.toggle("d-none", !error);
  }

  /* Calls fn at most once per `gap` ms however often it is asked; the last ask always runs. */
  function throttled(fn, gap = 400) {
    let timer = null, again = false, running = false;
    async function run() {
      timer = null; running = true; again = false;
      try { await fn(); showError(null); } catch (e) { showError(e); }
      running = false;
      if (again) schedule();
    }
    function schedule() {
      if (running) { again = true; return; }
      if (!timer) timer = setTimeout(run, gap);
    }
    schedule.now = run;
    return schedule;
  }

  /* Follow the event log; every message goes to each listener. Reconnects on its own.
     The EventSource lives in a worker, shared by the tabs (live-worker.js says why); the page opens
     it itself only where a worker cannot. An EventSource retries a dropped connection by
     itself but gives up for good on an answer that is not a stream (the monitor's 503
     while Redis is unreachable, a 401, a redirect to the login): then the page asks one
     probe (a HEAD of the stream) whether the login ended (it says so and stops) and
     otherwise opens the stream again, waiting longer each time up to STREAM_RETRY_MAX_MS;
     or, when the probe is the outage's 503, says Redis is unreachable in the error box and
     waits its Retry-After (an EventSource cannot read its 503; the doubling wait went live
     up to 16 s after Redis was back), and clears that once the stream is open again. */
  const STREAM_RETRY_MS = 2000, STREAM_RETRY_MAX_MS = 30000;
  const STREAM_OUTAGE = "The monitor cannot reach Redis: live updates resume when it can.";
  const listeners = [];
  let started = false;
  const workerUrl = document.currentScript ? document.currentScript.src.replace(/emp\.js(\?.*)?$/, "live-worker.js$1") : null;
  function live(listener, onReconnect) {
    listeners.push({listener, onReconnect});
    if (started) return;
    started = true;
    const indicator = document.getElementById("emp-live");
    const mark = (state, text) => {
      if (!indicator) return;
      indicator.dataset.state = state; indicator.textContent = text;
    };
    let open = null;  // opens (or reopens) the stream, once chosen below
    let retryIn = STREAM_RETRY_MS;
    let outageShown = false;
    async function givenUp() {
      let wait = retryIn;
      retryIn = Math.min(retryIn * 2, STREAM_RETRY_MAX_MS);
      try {
        const probe = await fetch(url, {method: "HEAD", credentials: "same-origin",
                                        redirect: "manual", cache: "no-store"});
        if (probe.type === "opaqueredirect" || probe.status === 401) {
          mark("ended", "session expired"); showError(new SessionEnded()); return;
        }
        if (probe.status === 503) {
          showError(new Error(STREAM_OUTAGE)); outageShown = true;
          wait = (Number(probe.headers.get("Retry-After")) || wait / 1000) * 1000;
        }
      } catch (e) { /* the monitor itself is away: the doubling wait */ }
      setTimeout(() => open(), wait);
    }
    const on = {
      open() {
        // Every open, the first too: what happened between the page's first read and the
        // stream's start (or while it was away) is read again.
        retryIn = STREAM_RETRY_MS;
        mark("live", "● live");
        if (outageShown) { outageShown = false; showError(null); }
        listeners.forEach((l) => l.onReconnect && l.onReconnect());
      },
      error(closed) {
        mark("reconnecting", "reconnecting…");
        if (closed) givenUp();
      },
      message(text) {
        let data;
        try { data = JSON.parse(text); } catch (e) { return; }
        listeners.forEach((l) => l.listener(data));
      },
    };
    const url = new URL(prefix + "/emp/events", location.href).href;
    function direct() {
      open = () => {
        const source = new EventSource(url);
        source.onopen = on.open;
        source.onerror = () => on.error(source.readyState === EventSource.CLOSED);
        source.onmessage = (message) => on.message(message.data);
      };
      open();
    }
    if (!workerUrl || (typeof SharedWorker === "undefined" && typeof Worker === "undefined")) {
      direct(); return;
    }
    // One stream for every tab (SharedWorker), else one per tab (a dedicated Worker).
    let worker, port, stop;
    try {
      if (typeof SharedWorker !== "undefined") {
        worker = new SharedWorker(workerUrl); port = worker.port; stop = () => port.close();
      } else {
        worker = port = new Worker(workerUrl); stop = () => worker.terminate();
      }
    } catch (e) { direct(); return; }
    let heard = false;
    port.onmessage = (event) => {
      const {kind, data} = event.data;
      heard = true;
      if (kind === "unsupported") { stop(); direct(); } else on[kind](data);
    };
    worker.onerror = () => { if (!heard) { stop(); direct(); } };  // did not load
    addEventListener("pagehide", () => port.postMessage({bye: true}));
    addEventListener("pageshow", (event) => { if (event.persisted) open(); });  // back/forward cache
    open = () => port.postMessage({url});
    open();
  }

  function esc(value) {
    return String(value === undefined || value === null ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function age(seconds) {
    if (seconds === undefined || seconds === null || isNaN(seconds)) return "—";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
  }

  function since(ms) { return ms ? age((Date.now() - Number(ms)) / 1000) + " ago" : "—"; }

  function time(ms) {
    if (!ms) return "—";
    const d = new Date(Number(ms));
    return d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  const STATUS_CLASS = {
    pending: "text-bg-secondary", assigned: "text-bg-info", in_progress: "text-bg-primary",
    completed: "text-bg-success", failed: "text-bg-danger", cancelled: "text-bg-warning",
    online: "text-bg-success", offline: "text-bg-secondary", gone: "text-bg-danger",
    idle: "text-bg-light border", busy: "text-bg-primary", active: "text-bg-success", silent: "text-bg-warning",
    disconnected: "text-bg-danger", inactive: "text-bg-secondary", "workers only": "text-bg-light border",
  };

  function badge(status, extra = "") {
    return `<span class="badge ${STATUS_CLASS[status] || "text-bg-light border"} ${extra}" data-status="${esc(status)}">${esc(status || "—")}</span>`;
  }

  function progressBar(percent, status) {
    const p = Math.round(Math.max(0, Math.min(100, Number(percent) || 0)));
    const cls = status === "failed" ? "bg-danger" : status === "cancelled" ? "bg-warning"
      : status === "completed" ? "bg-success" : "";
    return `<div class="progress" role="progressbar" aria-valuenow="${p}" aria-valuemin="0" aria-valuemax="100">` +
      `<div class="progress-bar ${cls}" style="width:${p}%">${p}%</div></div>`;
  }

  function json(value) { return JSON.stringify(value, null, 2); }

  /* The status a job event leaves its job in (null: unchanged). */
  function statusAfter(message) {
    switch (message.type) {
      case "job_submitted": case "job_requeued": case "job_retrying":
      case "job_replaced": case "job_released": case "job_escalated":
      case "job_resubmitted": return "pending";
      case "job_assigned": return "assigned";
      case "job_started": case "update_job_progress": return "in_progress";
      case "complete_job": return message.result && message.result.status === "failed" ? "failed" : "completed";
      case "job_failed": return "failed";
      case "job_cancelled": return "cancelled";
      default: return null;
    }
  }

  function stamp() {
    const el = document.getElementById("emp-updated");
    if (el) el.textContent = "updated " + new Date().toLocaleTimeString([], {hour12: false});
  }

  return {prefix, readOnly, api, showError, throttled, live, esc, age, since, time, badge,
          progressBar, json, statusAfter, stamp};
})();
