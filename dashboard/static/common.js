// fabtier dashboard: what every page shares: the live connection (EventSource, which
// reconnects by itself), the problem banner, and formatting helpers.
"use strict";

const fab = (() => {
  const conn = document.getElementById("conn");
  const banner = document.getElementById("problem");
  const state = { offsetMs: 0, broker: null, streams: [] };

  function setConn(text, cls) {
    if (!conn) return;
    conn.textContent = text;
    conn.className = "conn " + (cls || "");
  }

  function showProblem(text) {
    if (!banner) return;
    banner.hidden = !text;
    banner.textContent = text ? "The instance: " + text : "";
  }

  // One event stream: `handlers` maps event names to functions of the parsed data.
  function stream(url, handlers) {
    const source = new EventSource(url);
    source.onopen = () => setConn("live", "up");
    source.onerror = () => setConn(source.readyState === EventSource.CLOSED ? "closed: reload" : "reconnecting…",
                                   "down");
    const all = Object.assign({
      problem: (d) => showProblem(d.error),
      broker: (d) => { state.broker = d.connected; },
    }, handlers);
    for (const [name, fn] of Object.entries(all)) {
      source.addEventListener(name, (ev) => {
        let data;
        try { data = JSON.parse(ev.data); } catch (e) { return; }
        if (data && typeof data.now === "number") state.offsetMs = data.now - Date.now();
        fn(data);
      });
    }
    state.streams.push(source);
    return source;
  }

  const now = () => Date.now() + state.offsetMs;  // the dashboard server's clock

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function age(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "—";
    const s = Math.max(0, ms / 1000);
    if (s < 1) return "< 1 s";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function time(ms, withDate) {
    if (ms === null || ms === undefined) return "—";
    const iso = new Date(ms).toISOString();  // UTC, as every fabtier time
    return (withDate ? iso.slice(0, 10) + " " : "") + iso.slice(11, 23) + (withDate ? " UTC" : "");
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  function num(n, digits) {
    if (n === null || n === undefined) return "—";
    if (typeof n !== "number") return String(n);
    return digits === undefined ? n.toLocaleString("en-US") : n.toLocaleString("en-US", {maximumFractionDigits: digits});
  }

  function usd(n) {
    if (n === null || n === undefined) return "—";
    if (n === 0) return "0";
    return n < 0.0001 ? "< 0.0001" : n.toFixed(4);
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  return { stream, now, el, age, time, bytes, num, usd, replaceRows, showProblem, state };
})();
