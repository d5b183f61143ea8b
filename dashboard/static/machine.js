// One machine's sensors, live: per bucket a min-max band and the mean (uPlot), the recipe
// limits that applied (dashed), and alert markers. Updates arrive on the machine's stream
// about once a second; charts are redrawn in animation frames with a time budget, so that
// 200 charts updated at once never make one long frame.
"use strict";

(() => {
  const box = document.getElementById("charts");
  const machine = box.dataset.machine;
  const runLine = document.getElementById("run");
  const sensors = new Map();  // name -> {t, mn, mx, av, lo, hi, chart, node}
  const pending = new Set();
  let windowMs = 300000, bucketMs = 1000, nowMs = Date.now();
  let markers = [];  // alerts of this machine: {ts, state, sensor, rule, kind, value}
  let version = 0;

  const css = getComputedStyle(document.documentElement);
  const color = (name, fallback) => (css.getPropertyValue(name) || fallback).trim();
  const BAND = color("--band", "rgba(70,130,180,0.28)");
  const EDGE = color("--band-edge", "rgba(70,130,180,0.55)");
  const MEAN = color("--mean", "#1f4e79");
  const LIMIT = color("--limit", "#c0392b");

  function xRange() {
    return [(nowMs - windowMs) / 1000, nowMs / 1000];
  }

  function drawMarkers(u, name) {
    const g = u.ctx, top = u.bbox.top, height = u.bbox.height;
    const [x0, x1] = xRange();
    g.save();
    g.lineWidth = 2 * devicePixelRatio;
    g.setLineDash([]);
    for (const m of markers) {
      if (m.sensor !== name) continue;
      const s = m.ts / 1000;
      if (s < x0 || s > x1) continue;
      const x = Math.round(u.valToPos(s, "x", true));
      g.strokeStyle = m.state === "raised" ? "#d62728" : "#2ca02c";
      g.beginPath(); g.moveTo(x, top); g.lineTo(x, top + height); g.stroke();
    }
    g.restore();
  }

  function columns(s) {
    return [s.t.map((x) => x / 1000), s.mn, s.mx, s.av, s.lo, s.hi];
  }

  function makeChart(name) {
    const node = fab.el("figure", {class: "chart", dataset: {sensor: name}},
      fab.el("figcaption", {}, fab.el("span", {class: "name", text: name}), fab.el("span", {class: "val"})));
    box.append(node);
    const width = Math.max(220, Math.floor(node.clientWidth || 300));
    const s = sensors.get(name);
    s.node = node;
    if (typeof uPlot === "undefined") return;  // no uPlot installed: the page says so
    const opts = {
      width, height: 120,
      legend: {show: false},
      cursor: {drag: {x: false, y: false}, points: {show: false}},
      scales: {x: {time: true, range: () => xRange()}},
      axes: [{size: 22, font: "10px sans-serif", ticks: {size: 3}},
             {size: 44, font: "10px sans-serif", ticks: {size: 3}}],
      series: [
        {},
        {label: "min", stroke: EDGE, width: 1, points: {show: false}},
        {label: "max", stroke: EDGE, width: 1, points: {show: false}},
        {label: "mean", stroke: MEAN, width: 1.5, points: {show: false}},
        {label: "low limit", stroke: LIMIT, width: 1, dash: [5, 4], points: {show: false}},
        {label: "high limit", stroke: LIMIT, width: 1, dash: [5, 4], points: {show: false}},
      ],
      bands: [{series: [2, 1], fill: BAND}],
      hooks: {draw: [(u) => drawMarkers(u, name)]},
    };
    s.chart = new uPlot(opts, columns(s), node);
  }

  function take(name, cols, replaceFrom) {
    let s = sensors.get(name);
    if (!s) {
      s = {t: [], mn: [], mx: [], av: [], lo: [], hi: [], chart: null, node: null};
      sensors.set(name, s);
    }
    let keep = s.t.length;
    if (replaceFrom !== undefined) {
      keep = 0;
      while (keep < s.t.length && s.t[keep] < replaceFrom) keep++;
    }
    for (const k of ["t", "mn", "mx", "av", "lo", "hi"]) {
      s[k] = s[k].slice(0, keep).concat(cols[k] || cols.t.map(() => null));
    }
    return s;
  }

  function trim(oldest) {
    for (const s of sensors.values()) {
      let i = 0;
      while (i < s.t.length && s.t[i] < oldest) i++;
      if (i) for (const k of ["t", "mn", "mx", "av", "lo", "hi"]) s[k] = s[k].slice(i);
    }
  }

  function describeRun(d) {
    const r = d.run;
    if (!r || r.end_ms !== null) {
      runLine.textContent = "idle (no lot running)";
      return;
    }
    runLine.textContent = `lot ${r.lot} · wafer ${r.wafer} · recipe ${r.recipe}` +
      (r.recipe_version ? ` v${r.recipe_version}` : " (no recipe data)") + (d.step ? ` · step ${d.step}` : "") +
      ` · since ${fab.time(r.start_ms)} UTC`;
  }

  function snapshot(d) {
    windowMs = d.window_ms; bucketMs = d.bucket_ms; nowMs = d.now;
    markers = (d.alerts || []).slice();
    describeRun(d);
    for (const [name, cols] of Object.entries(d.sensors)) {
      take(name, cols, -Infinity);
      pending.add(name);
    }
    const names = [...sensors.keys()].sort();
    for (const name of names) if (!sensors.get(name).node) makeChart(name);
    version++;
    schedule();
  }

  function update(d) {
    nowMs = d.now;
    for (const [name, cols] of Object.entries(d.sensors)) {
      const isNew = !sensors.has(name);
      take(name, cols, cols.t.length ? cols.t[0] : undefined);
      if (isNew) makeChart(name);
    }
    trim(d.oldest);
    for (const name of sensors.keys()) pending.add(name);  // every chart slides with the time
    version++;
    schedule();
  }

  let scheduled = false;
  function schedule() {
    if (!scheduled) { scheduled = true; requestAnimationFrame(drain); }
  }

  function drain() {
    scheduled = false;
    const start = performance.now();
    for (const name of pending) {
      const s = sensors.get(name);
      pending.delete(name);
      if (s && s.chart) {
        s.chart.setData(columns(s));
        const last = s.av.length ? s.av[s.av.length - 1] : null;
        s.node.querySelector(".val").textContent = last === null ? "" : fab.num(last, 3);
      }
      if (performance.now() - start > 8) break;  // the rest in the next frame
    }
    if (pending.size) schedule();
  }

  function alert(a) {
    markers.push(a);
    const s = sensors.get(a.sensor);
    if (s && s.node) {
      s.node.classList.toggle("alarm", a.state === "raised");
      pending.add(a.sensor);
      schedule();
    }
  }

  fab.stream("/events/machine/" + encodeURIComponent(machine), {snapshot, update, alert});

  // For the browser tests: the data a chart holds, and the update count.
  window.fabtierDash = {
    version: () => version,
    sensors: () => [...sensors.keys()],
    chartData: (name) => {
      const s = sensors.get(name || [...sensors.keys()][0]);
      return s && s.chart ? s.chart.data.map((col) => Array.from(col)) : null;
    },
    markers: () => markers.slice(),
  };
})();
