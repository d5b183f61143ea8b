// The fab overview: one row per machine, refreshed by the `overview` stream.
"use strict";

(() => {
  const tbody = document.querySelector("#machines tbody");
  const summary = document.getElementById("summary");
  let last = null;

  function spark(canvas, ts, v) {
    const w = canvas.width, h = canvas.height, g = canvas.getContext("2d");
    g.clearRect(0, 0, w, h);
    if (!v || v.length < 2) return;
    let lo = Infinity, hi = -Infinity;
    for (const x of v) { if (x < lo) lo = x; if (x > hi) hi = x; }
    if (hi === lo) { hi += 1; lo -= 1; }
    const t0 = ts[0], t1 = ts[ts.length - 1] || t0 + 1;
    g.strokeStyle = "#1f4e79"; g.lineWidth = 1.2; g.beginPath();
    v.forEach((x, i) => {
      const px = ((ts[i] - t0) / (t1 - t0 || 1)) * (w - 2) + 1;
      const py = h - 2 - ((x - lo) / (hi - lo)) * (h - 4);
      if (i === 0) g.moveTo(px, py); else g.lineTo(px, py);
    });
    g.stroke();
  }

  function render(data) {
    last = data;
    const rows = data.machines.map((m) => {
      const canvas = fab.el("canvas", {width: 180, height: 32, class: "spark", title: m.spark.sensor});
      spark(canvas, m.spark.ts, m.spark.v);
      const alertCell = m.alerts
        ? fab.el("span", {class: "badge " + (m.unacked ? "bad" : "acked"),
                          text: m.alerts + " open" + (m.unacked ? "" : " (acked)")})
        : fab.el("span", {class: "badge ok", text: "ok"});
      return fab.el("tr", {dataset: {machine: m.machine}, class: m.alerts ? (m.unacked ? "alarm" : "warn") : ""},
        fab.el("td", {}, fab.el("a", {href: "/machine/" + encodeURIComponent(m.machine), text: m.machine})),
        fab.el("td", {}, alertCell),
        fab.el("td", {text: m.lot || "idle"}),
        fab.el("td", {text: m.wafer || "—"}),
        fab.el("td", {text: m.recipe ? m.recipe + (m.recipe_version ? " v" + m.recipe_version : "") : "—"}),
        fab.el("td", {text: m.step || "—"}),
        fab.el("td", {class: "age", dataset: {last: m.last_ms === null ? "" : m.last_ms}}),
        fab.el("td", {}, canvas, fab.el("small", {text: " " + m.spark.sensor})));
    });
    fab.replaceRows(tbody, rows);
    const open = data.machines.reduce((a, m) => a + m.alerts, 0);
    summary.textContent = `${data.machines.length} machines · ${open} open alert(s)` +
      (data.broker === false ? " · alert feed: broker not connected" : "");
    const nav = document.getElementById("nav-open");
    if (nav) nav.textContent = open ? String(open) : "";
    tick();
  }

  function tick() {
    const now = fab.now();
    for (const cell of tbody.querySelectorAll("td.age")) {
      const lastMs = cell.dataset.last ? Number(cell.dataset.last) : null;
      const a = lastMs === null ? null : now - lastMs;
      cell.textContent = lastMs === null ? "no reading" : fab.age(a) + " ago";
      cell.classList.toggle("stale", a === null || a > 10000);
    }
  }
  setInterval(tick, 500);

  fab.stream("/events/overview", {
    overview: render,
    // At once, before the next overview (2 s) brings the counts from the instance.
    alert: (a) => {
      const m = last && last.machines.find((x) => x.machine === a.machine);
      if (!m) return;
      const step = a.state === "raised" ? 1 : -1;
      m.alerts = Math.max(0, m.alerts + step);
      m.unacked = Math.max(0, m.unacked + step);
      render(last);
    },
  });
  window.fabtierDash = { last: () => last };
})();
