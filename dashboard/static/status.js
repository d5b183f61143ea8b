// The tiers page and the health page, both from the `status` stream (/health, /metrics,
// /tiers, /retrievals, job runs and moves of the instance).
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  let last = null;

  function tiers(d) {
    const body = $("#tiers tbody");
    if (!body || !d.tiers) return;
    const now = fab.now();
    fab.replaceRows(body, d.tiers.tiers.map((t) => fab.el("tr", {dataset: {tier: t.tier}},
      fab.el("td", {text: t.tier}), fab.el("td", {text: t.storage_class}),
      fab.el("td", {class: "num", text: fab.num(t.rows)}), fab.el("td", {class: "num", text: fab.bytes(t.bytes)}),
      fab.el("td", {text: fab.time(t.oldest_ms, true)}), fab.el("td", {text: fab.time(t.newest_ms, true)}),
      fab.el("td", {text: t.oldest_ms === null ? "—" : fab.age(now - t.newest_ms) + " – " + fab.age(now - t.oldest_ms)}),
      fab.el("td", {class: "num", text: fab.usd(t.usd_per_month)}))));
    $("#tiers tfoot").replaceChildren(fab.el("tr", {},
      fab.el("th", {colspan: 7, text: "estimated total" + (d.tiers.prices_as_of ? " (prices " + d.tiers.prices_as_of + ")" : "")}),
      fab.el("th", {class: "num", text: fab.usd(d.tiers.total_usd_per_month)})));
    const jobs = d.retrievals || [];
    fab.replaceRows($("#retrievals tbody"), jobs.length ? jobs.map((j) => fab.el("tr", {},
      fab.el("td", {}, fab.el("code", {text: j.id})), fab.el("td", {text: j.state}),
      fab.el("td", {text: (j.from || j.from_ms || "") + " → " + (j.to || j.to_ms || "")}),
      fab.el("td", {class: "num", text: fab.num(j.objects)}), fab.el("td", {class: "num", text: fab.bytes(j.bytes)}),
      fab.el("td", {text: j.speed || "—"}), fab.el("td", {text: j.eta_s === null || j.eta_s === undefined ? "—" : fab.age(j.eta_s * 1000)}),
      fab.el("td", {class: "num", text: fab.usd(j.cost_usd)})))
      : [fab.el("tr", {}, fab.el("td", {colspan: 8, text: d.retrievals_error || "no retrieval jobs"}))]);
  }

  function card(label, value, cls) {
    return fab.el("div", {class: "card " + (cls || "")}, fab.el("div", {class: "label", text: label}),
                  fab.el("div", {class: "value", text: value}));
  }

  function health(d) {
    const cards = $("#cards");
    if (!cards || !d.health) return;
    const h = d.health, m = d.metrics || {}, now = fab.now();
    const seal = (d.moves || []).find((x) => x.job === "seal");
    const problems = h.problems || [];
    cards.replaceChildren(
      card("status", h.status, h.status === "ready" ? "ok" : "bad"),
      card("ingest rate", d.ingest_rate === null || d.ingest_rate === undefined ? "…" : fab.num(Math.round(d.ingest_rate)) + " readings/s"),
      card("backpressure", m.backpressure ? "ON" : "off", m.backpressure ? "bad" : "ok"),
      card("unsealed", fab.num(m.unsealed_rows) + " rows"),
      card("last seal", seal && seal.last_ms ? fab.age(now - seal.last_ms) + " ago" : "none yet"),
      card("stored", fab.num(m.readings_stored) + " readings"),
      card("quarantined", fab.num(m.quarantined), m.quarantined ? "warn" : ""),
      card("open alerts", fab.num((m.alerts || {}).open), (m.alerts || {}).open ? "warn" : ""),
      card("problems", String(problems.length), problems.length ? "bad" : "ok"),
      card("alert feed", fab.state.broker === false ? "broker not connected" : "connected",
           fab.state.broker === false ? "bad" : "ok"));
    fab.replaceRows($("#problems tbody"), problems.length ? problems.map((p) => fab.el("tr", {},
      fab.el("td", {text: p.step}), fab.el("td", {text: p.message}), fab.el("td", {text: p.fix || "—"}),
      fab.el("td", {class: "num", text: fab.num(p.failures)}), fab.el("td", {text: p.since}), fab.el("td", {text: p.last})))
      : [fab.el("tr", {}, fab.el("td", {colspan: 6, text: "none"}))]);
    fab.replaceRows($("#moves tbody"), (d.moves || []).map((x) => fab.el("tr", {},
      fab.el("td", {text: x.job}), fab.el("td", {text: x.last_ms ? fab.time(x.last_ms, true) : "—"}),
      fab.el("td", {class: "num", text: fab.num(x.moves)}), fab.el("td", {class: "num", text: fab.num(x.rows)}),
      fab.el("td", {class: "num", text: fab.bytes(x.bytes)}))));
    fab.replaceRows($("#jobs tbody"), (d.job_runs || []).map((j) => fab.el("tr", {class: j.outcome === "failed" ? "alarm" : ""},
      fab.el("td", {text: j.job}), fab.el("td", {text: j.trigger}), fab.el("td", {text: j.outcome}),
      fab.el("td", {text: fab.time(j.started_ms, true)}),
      fab.el("td", {text: j.finished_ms ? fab.age(j.finished_ms - j.started_ms) : "—"}),
      fab.el("td", {text: typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail)}))));
  }

  fab.stream("/events/status", {status: (d) => { last = d; tiers(d); health(d); }});
  window.fabtierDash = { last: () => last };
})();
