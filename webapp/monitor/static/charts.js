/* A small line chart drawn as inline SVG (no library: the monitor ships without a CDN).
   EMPChart.draw(figure, {title, unit, t: [ms...], lines: [{name, values, cls}], max}) fills
   `figure` and sets data-last / data-total / data-points of the first line, which tests and
   scripts can read without parsing the SVG. A null value is a gap. */
"use strict";

const EMPChart = (() => {
  const W = 460, H = 150, L = 44, R = 8, T = 8, B = 20;

  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) return "—";
    const a = Math.abs(v);
    if (a >= 100 || Number.isInteger(v)) return String(Math.round(v));
    return a >= 10 ? v.toFixed(1) : String(Math.round(v * 100) / 100);
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], {hour12: false, hour: "2-digit", minute: "2-digit"});
  }

  function path(t, values, x, y) {
    let d = "", pen = false;
    values.forEach((v, i) => {
      if (v === null || v === undefined || isNaN(v)) { pen = false; return; }
      d += (pen ? "L" : "M") + x(t[i]).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    });
    return d;
  }

  function draw(figure, spec) {
    const t = spec.t;
    const all = spec.lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined);
    const top = spec.max !== undefined ? spec.max : Math.max(1, ...all) * 1.1;
    const t0 = t[0], t1 = t[t.length - 1] + 60000;
    const x = (ms) => L + (W - L - R) * (ms - t0) / (t1 - t0);
    const y = (v) => T + (H - T - B) * (1 - Math.min(v, top) / top);
    const lines = spec.lines.map((l, i) => {
      const d = path(t, l.values, x, y);
      // A lone point draws no segment: mark each point too when there are few.
      const dots = l.values.filter((v) => v !== null).length <= 3 ? l.values.map((v, j) => v === null || v === undefined ? "" :
        `<circle class="emp-line-${i}" cx="${x(t[j]).toFixed(1)}" cy="${y(v).toFixed(1)}" r="2.5"></circle>`).join("") : "";
      return `<path class="emp-line emp-line-${i}" d="${d}"></path>${dots}`;
    }).join("");
    const grid = [0, 0.5, 1].map((f) => {
      const v = top * f, yy = y(v).toFixed(1);
      return `<line class="emp-grid" x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}"></line>` +
        `<text class="emp-axis" x="${L - 4}" y="${yy}" text-anchor="end" dominant-baseline="middle">${EMP.esc(fmt(v))}</text>`;
    }).join("");
    const axis = `<text class="emp-axis" x="${L}" y="${H - 4}">${EMP.esc(clock(t0))}</text>` +
      `<text class="emp-axis" x="${W - R}" y="${H - 4}" text-anchor="end">${EMP.esc(clock(t1))}</text>`;
    const lastOf = (values) => { for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i]; return null; };
    const legend = spec.lines.map((l, i) =>
      `<span class="me-3"><span class="emp-key emp-line-${i}"></span>${EMP.esc(l.name)}: <b class="emp-last">${EMP.esc(fmt(lastOf(l.values)))}</b>${EMP.esc(spec.unit || "")}</span>`).join("");
    const first = spec.lines[0].values.filter((v) => v !== null && v !== undefined);
    figure.dataset.last = String(lastOf(spec.lines[0].values));
    figure.dataset.total = String(first.reduce((a, b) => a + b, 0));
    figure.dataset.points = String(first.length);
    figure.innerHTML = `<figcaption class="fw-semibold small">${EMP.esc(spec.title)}</figcaption>` +
      `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${EMP.esc(spec.title)}">${grid}${axis}${lines}</svg>` +
      `<div class="small emp-legend">${legend}</div>`;
  }

  return {draw, fmt};
})();
