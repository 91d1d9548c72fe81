// The panels beside the map: headline figures, targets, laggards, lapsed villages, breakdown, the sortable table
// behind the map, and the history chart. Each takes the API's document and draws it; none fetches.
import { t, percent, count, beijing } from "./i18n.js";

const d3 = window.d3;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function figure(label, value, sub, key) {
  return el("div", { class: "figure", "data-figure": key }, el("div", { class: "label" }, label),
    el("div", { class: "value" }, value), el("div", { class: "sub" }, sub));
}

export function headline(root, f, definition, lapseDays, dayNote) {
  const rateOf = (n) => (f.villages_total ? n / f.villages_total : null);
  root.replaceChildren(
    figure(t("coverage_rate"), percent(f.coverage_rate), `${count(f.villages_reached)} / ${count(f.villages_total)}`, "coverage_rate"),
    figure(t("active_rate"), percent(rateOf(f.villages_active)), `${count(f.villages_active)} / ${count(f.villages_total)}`, "active"),
    figure(t("villages_lapsed"), count(f.villages_lapsed), `${t("villages_reached")} ${count(f.villages_reached)}`, "lapsed"),
    figure(t("station_rate"), percent(rateOf(f.villages_with_station)), `${count(f.villages_with_station)} / ${count(f.villages_total)}`, "stations"),
    figure(t("as_of"), beijing(f.as_of), dayNote || "", "as_of"),
    el("p", { class: "definition" }, `${t("definition")}：${t("reached_def")}；${t("active_def", { days: lapseDays })}。`
      + (definition?.villages ? ` ${definition.villages}` : "")),
  );
  root.setAttribute("aria-label", `${f.name || ""} ${t("coverage_rate")} ${percent(f.coverage_rate)}`);
}

export function targets(root, report) {
  const rows = (report.milestones || []).map((m) => el("tr", { class: `status-${m.status.replace(" ", "-")}` },
    el("td", {}, m.deadline), el("td", {}, percent(m.min_rate)), el("td", {}, t(m.status)), el("td", {}, count(m.gap)),
    el("td", {}, m.days_left === null || m.days_left === undefined ? "—" : count(m.days_left)),
    el("td", {}, m.needed_villages_per_day === null || m.needed_villages_per_day === undefined ? "—" : String(m.needed_villages_per_day))));
  const head = el("tr", {}, ...["deadline", "coverage_rate", "level", "gap", "days_left", "per_day"].map((k) => el("th", { scope: "col" }, t(k === "level" ? "status" : k))));
  const perDay = report.pace?.villages_per_day;
  const pace = el("p", { class: "note" }, `${t("pace")}: ${perDay === null || perDay === undefined ? "—" : perDay}`);
  root.replaceChildren(el("div", { class: "tablewrap", tabindex: "0" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))), pace);
}

export function laggards(root, report, go) {
  if (!report || !report.laggards.length) { root.replaceChildren(el("p", { class: "note" }, t("none"))); return; }
  const items = report.laggards.map((r) => {
    const a = el("a", { href: `#/${r.code}` }, `${r.name || r.code}`);
    a.addEventListener("click", (ev) => { ev.preventDefault(); go(r.code); });
    return el("li", {}, a, ` ${percent(r.coverage_rate)} · ${t("gap")} ${count(r.gap)} · ${t("villages_lapsed")} ${count(r.villages_lapsed)}`);
  });
  root.replaceChildren(el("ol", { class: "rank" }, ...items));
}

export function lapsed(root, page, levelHasList, open) {
  if (!levelHasList) { root.replaceChildren(el("p", { class: "note" }, t("only_lower"))); return; }
  const rows = (page?.items || []).filter((v) => v.status === "lapsed");
  if (!rows.length) { root.replaceChildren(el("p", { class: "note" }, t("none"))); return; }
  const shown = rows.slice(0, 20).map((v) => {
    const button = el("button", { type: "button", class: "linklike", "data-code": v.code }, `${v.name} ${v.code}`);
    button.addEventListener("click", () => open(v.code));
    return el("li", {}, button, ` · ${t("last_reach")} ${beijing(v.last_reach_at)}`);
  });
  const more = rows.length > 20 ? el("p", { class: "note" }, t("more", { n: rows.length - 20 })) : null;
  root.replaceChildren(el("ul", {}, ...shown), more);
}

// One village, as /v1/villages/{code} gives it: status, reaches, stations and parcel counts.
export function village(root, v) {
  const status = v.active ? "s_active" : v.reached ? "s_lapsed" : "s_unreached";
  const rows = [
    [t("code"), v.code], [t("status"), t(status)], [t("population"), count(v.population)],
    [t("first_reach"), beijing(v.first_reach_at)], [t("last_reach"), beijing(v.last_reach_at)],
    [t("stations"), v.stations.length ? v.stations.join("、") : t("none")],
    [t("parcels_in"), count(v.counts.inbound)], [t("parcels_out"), count(v.counts.outbound)],
    ...Object.entries(v.reach_by_carrier).map(([carrier, at]) => [`${t("by_carrier_reach")} · ${carrier}`, beijing(at)]),
  ];
  root.replaceChildren(el("p", {}, el("strong", {}, v.name || v.code), ` ${v.names?.township || ""} ${v.names?.county || ""}`),
    el("table", {}, el("tbody", {}, ...rows.map(([k, val]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, String(val)))))));
}

export function breakdown(root, b) {
  const table = (kind, label, rows) => el("table", {},
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, label), el("th", { scope: "col" }, t("villages_reached")), el("th", { scope: "col" }, t("coverage_rate")))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", {}, r[kind] === "*" ? t("all") : r[kind]), el("td", {}, count(r.villages_reached)), el("td", {}, percent(r.coverage_rate))))));
  root.replaceChildren(
    el("div", { class: "tablewrap", tabindex: "0" }, table("carrier", t("carrier_col"), b?.by_carrier || [])),
    el("div", { class: "tablewrap", tabindex: "0" }, table("cooperation_model", t("model_col"), b?.by_cooperation_model || [])));
}

// The table behind the map: columns [{key, label, format}], rows of objects; headers sort on click or Enter.
export function sortable(table, columns, rows, go) {
  let key = null, dir = 1;
  const draw = () => {
    const sorted = key === null ? rows : [...rows].sort((a, b) => dir * d3.ascending(a[key] ?? -Infinity, b[key] ?? -Infinity));
    const head = el("tr", {}, ...columns.map((c) => {
      const button = el("button", { type: "button" }, c.label);
      button.addEventListener("click", () => { dir = key === c.key ? -dir : 1; key = c.key; draw(); });
      const th = el("th", { scope: "col" }, button);
      if (key === c.key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      return th;
    }));
    const body = sorted.map((r) => el("tr", { "data-code": r.code }, ...columns.map((c, i) => {
      const text = c.format ? c.format(r[c.key]) : String(r[c.key] ?? "—");
      if (i !== 1 || !r.link) return el("td", {}, text);
      const a = el("a", { href: `#/${r.code}` }, text);
      a.addEventListener("click", (ev) => { ev.preventDefault(); go(r.code); });
      return el("td", {}, a);
    })));
    table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
  };
  draw();
}

// The daily series: coverage rate (solid) and active rate (dashed), with the chosen day marked.
export function chart(root, series, chosen) {
  if (!series.length) { root.replaceChildren(el("p", { class: "note" }, t("no_history"))); return; }
  const W = 420, H = 170, m = { l: 40, r: 10, t: 10, b: 24 };
  const x = d3.scaleUtc().domain(d3.extent(series, (e) => new Date(e.date))).range([m.l, W - m.r]);
  if (series.length === 1) x.domain([new Date(series[0].date) - 864e5, new Date(series[0].date).getTime() + 864e5]);
  const y = d3.scaleLinear().domain([0, 1]).range([H - m.b, m.t]);
  const svg = d3.create("svg").attr("viewBox", `0 0 ${W} ${H}`).attr("role", "img")
    .attr("aria-label", `${t("history")}: ${series.length}`);
  svg.append("g").attr("transform", `translate(0,${H - m.b})`).call(d3.axisBottom(x).ticks(4));
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(4, "%"));
  const rate = (e) => (e.villages_total ? e.villages_reached / e.villages_total : 0);
  const active = (e) => (e.villages_total ? e.villages_active / e.villages_total : 0);
  svg.append("path").attr("class", "rate").attr("d", d3.line((e) => x(new Date(e.date)), (e) => y(rate(e)))(series));
  svg.append("path").attr("class", "active").attr("d", d3.line((e) => x(new Date(e.date)), (e) => y(active(e)))(series));
  svg.selectAll("circle").data(series).join("circle").attr("r", 2.5).attr("fill", "#0072b2")
    .attr("cx", (e) => x(new Date(e.date))).attr("cy", (e) => y(rate(e)));
  // A new registry edition changes the denominator: the day it happened is marked, not left as a silent jump.
  const changes = series.filter((e, i) => i > 0 && e.registry_edition !== series[i - 1].registry_edition);
  for (const e of changes) {
    const at = x(new Date(e.date));
    svg.append("line").attr("class", "edition").attr("x1", at).attr("x2", at).attr("y1", m.t).attr("y2", H - m.b);
    svg.append("text").attr("class", "edition").attr("x", at + 3).attr("y", m.t + 10).text(`${t("edition")} ${e.registry_edition ?? "—"}`);
  }
  // A day that corrections made after it restate (docs/corrections.md#restatements): the published point stays, the
  // restated coverage rate is drawn beside it as an open diamond.
  const restated = series.filter((e) => e.restated);
  svg.selectAll("path.restated").data(restated).join("path").attr("class", "restated")
    .attr("d", d3.symbol(d3.symbolDiamond, 48)())
    .attr("transform", (e) => `translate(${x(new Date(e.date))},${y(e.restated.coverage_rate ?? 0)})`)
    .attr("data-day", (e) => e.date).attr("data-reached", (e) => e.restated.villages_reached)
    .append("title").text((e) => `${e.date} ${t("restated")} ${percent(e.restated.coverage_rate)} · ${t("as_published")} ${percent(rate(e))} · ${e.restated.corrections} ${t("corrections")}`);
  if (restated.length) {
    svg.append("text").attr("class", "restated-note").attr("x", W - m.r).attr("y", m.t + 10).attr("text-anchor", "end")
      .text(`◇ ${t("restated")}`);
  }
  if (chosen) svg.append("line").attr("class", "marker").attr("x1", x(new Date(chosen))).attr("x2", x(new Date(chosen))).attr("y1", m.t).attr("y2", H - m.b);
  root.replaceChildren(svg.node());
}
