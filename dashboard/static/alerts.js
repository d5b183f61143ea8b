// The alert list: open or recent, filtered by machine, rule and lot; new alerts pushed by
// the `alerts` stream (from the broker, within a second); acknowledge with who and a note.
"use strict";

(() => {
  const tbody = document.querySelector("#alerts tbody");
  const form = document.getElementById("filters");
  const dialog = document.getElementById("ack-dialog");
  const ackForm = document.getElementById("ack-form");
  const ackError = document.getElementById("ack-error");
  let rows = [];  // alerts shown, newest first
  let ackingId = null;

  const params = new URLSearchParams(location.search);
  for (const name of ["state", "machine", "rule", "lot"]) {
    if (params.get(name)) form.elements[name].value = params.get(name);
  }

  function filters() {
    return {state: form.elements.state.value, machine: form.elements.machine.value.trim(),
            rule: form.elements.rule.value.trim(), lot: form.elements.lot.value.trim()};
  }

  function matches(a, f) {
    return (!f.machine || a.machine === f.machine) && (!f.rule || a.rule === f.rule) && (!f.lot || a.lot === f.lot);
  }

  function ackCell(a) {
    const acks = a.acks && a.acks.length ? a.acks : (a.ack ? [a.ack] : []);
    if (acks.length) {
      return fab.el("td", {class: "acked"}, acks.map((k) => fab.el("div", {},
        fab.el("span", {class: "who", text: k.who}),
        k.note ? fab.el("span", {class: "note", text: " — " + k.note}) : null,
        k.at ? fab.el("small", {text: " " + fab.time(k.at, true)}) : null)));
    }
    if (a.id === null || a.id === undefined) return fab.el("td", {text: "—"});
    return fab.el("td", {}, fab.el("button", {class: "ack", text: "acknowledge", dataset: {id: a.id},
                                              onclick: () => openAck(a)}));
  }

  function row(a, fresh) {
    return fab.el("tr", {dataset: {id: a.id ?? "", state: a.state}, class: (a.state === "raised" ? "raised" : "cleared") +
                         (fresh ? " fresh" : "")},
      fab.el("td", {text: fab.time(a.raised_at, true)}),
      fab.el("td", {}, fab.el("span", {class: "badge " + (a.state === "raised" ? "bad" : "ok"), text: a.state})),
      fab.el("td", {}, fab.el("a", {href: "/machine/" + encodeURIComponent(a.machine), text: a.machine})),
      fab.el("td", {text: a.sensor}),
      fab.el("td", {text: a.rule}),
      fab.el("td", {text: a.kind}),
      fab.el("td", {class: "num", text: fab.num(a.value, 4)}),
      fab.el("td", {class: "num", text: fab.num(a.threshold, 4)}),
      fab.el("td", {text: a.lot ? a.lot + (a.wafer ? " / " + a.wafer : "") : "—"}),
      fab.el("td", {text: a.recipe ? a.recipe + (a.recipe_version ? " v" + a.recipe_version : "") +
                                      (a.step ? " · " + a.step : "") : "—"}),
      ackCell(a));
  }

  function render(freshIds) {
    fab.replaceRows(tbody, rows.length ? rows.map((a) => row(a, freshIds && freshIds.has(a.id)))
                                       : [fab.el("tr", {}, fab.el("td", {colspan: 11, text: "no alerts"}))]);
    const nav = document.getElementById("nav-open");
    const open = rows.filter((a) => a.state === "raised" && !a.ack).length;
    if (nav && filters().state === "open") nav.textContent = open ? String(open) : "";
  }

  async function load() {
    const f = filters();
    const q = new URLSearchParams(Object.entries(f).filter(([, v]) => v));
    history.replaceState(null, "", "/alerts" + (q.toString() ? "?" + q : ""));
    const response = await fetch("/api/alerts?" + q, {headers: {Accept: "application/json"}});
    if (!response.ok) {
      fab.showProblem((await response.json().catch(() => ({}))).error || response.statusText);
      return;
    }
    rows = await response.json();
    render();
  }

  let reloadTimer = null;
  function reloadSoon() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(load, 300);
  }

  function onAlert(a) {
    const f = filters();
    if (!matches(a, f)) return;
    if (rows.some((r) => r.id !== undefined && r.id !== null && r.id === a.id)) return;
    if (f.state === "open") {
      if (a.state === "raised") rows.unshift(a);
      else rows = rows.filter((r) => r.key !== a.key);
    } else {
      rows.unshift(a);
      rows = rows.slice(0, 500);
    }
    render(new Set([a.id]));
  }

  function onAck(d) {
    for (const r of rows) {
      if (r.id !== d.id) continue;
      const known = (r.acks || []).some((k) => k.who === d.ack.who && k.at === d.ack.at);
      if (!known) r.acks = (r.acks || []).concat([d.ack]);
      r.ack = r.acks[0];
    }
    render();
  }

  function onList(list) {
    // The dashboard's own list is unfiltered recent alerts: take it as it is only then.
    const f = filters();
    if (f.state === "recent" && !f.machine && !f.rule && !f.lot) { rows = list; render(); } else reloadSoon();
  }

  function openAck(a) {
    ackingId = a.id;
    document.getElementById("ack-what").textContent = `${a.machine} ${a.sensor} (${a.rule}, ${a.state})`;
    document.getElementById("ack-who").value = localStorage.getItem("fabtier-who") || "";
    document.getElementById("ack-note").value = "";
    ackError.hidden = true;
    dialog.showModal();
  }

  ackForm.addEventListener("submit", async (ev) => {
    if (ev.submitter && ev.submitter.value === "cancel") return;
    ev.preventDefault();
    const who = document.getElementById("ack-who").value.trim();
    const note = document.getElementById("ack-note").value.trim();
    if (!who) return;
    localStorage.setItem("fabtier-who", who);
    const response = await fetch("/api/alerts/" + encodeURIComponent(ackingId) + "/ack", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({who, note})});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      ackError.textContent = body.error || response.statusText;
      ackError.hidden = false;
      return;
    }
    onAck(body);
    dialog.close();
  });

  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  form.addEventListener("reset", () => setTimeout(load, 0));
  form.elements.state.addEventListener("change", load);

  load();
  fab.stream("/events/alerts", {alert: onAlert, ack: onAck, alerts: onList});
  window.fabtierDash = { rows: () => rows.slice() };
})();
