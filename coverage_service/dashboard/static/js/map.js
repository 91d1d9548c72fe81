// Drawing: the choropleth of areas (with the South China Sea inset on the national map) and the village grid.
// Both are SVG, so the PNG export draws exactly what is on screen.
import { t, percent } from "./i18n.js";

const d3 = window.d3;
const topojson = window.topojson;
const WIDTH = 800;
// Sequential, colour-blind safe (ColorBrewer Blues, ordered light to dark), with the bounds of each bin.
export const BINS = [
  { lo: 0, hi: 0.5, colour: "#deebf7" },
  { lo: 0.5, hi: 0.8, colour: "#9ecae1" },
  { lo: 0.8, hi: 0.9, colour: "#4292c6" },
  { lo: 0.9, hi: 1, colour: "#08519c" },
  { lo: 1, hi: 1, colour: "#08306b" },
];
export const STATUS = { active: "#0072b2", lapsed: "#e69f00", unreached: "#d9d9d9" };
const NONE = "#ffffff"; // outside the registry or without villages: white, within its grey border

export function colourOf(rate) {
  if (rate === null || rate === undefined) return NONE;
  if (rate >= 1) return BINS[4].colour;
  return BINS.find((b) => rate >= b.lo && rate < b.hi).colour;
}

export function legend(el, kind) {
  const items = kind === "grid"
    ? [[STATUS.active, t("s_active")], [STATUS.lapsed, t("s_lapsed")], [STATUS.unreached, t("s_unreached")]]
    : [...BINS.map((b) => [b.colour, b.lo === b.hi ? "100%" : `${b.lo * 100}–${b.hi * 100}%`]), [NONE, `${t("no_villages")} / ${t("not_in_registry")}`]];
  el.replaceChildren(...items.map(([colour, label]) => {
    const span = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colour;
    span.append(sw, label);
    return span;
  }));
}

function svgOf(el, height, label) {
  const svg = d3.select(el).html("").append("svg")
    .attr("viewBox", `0 0 ${WIDTH} ${height}`).attr("role", "group").attr("aria-label", label)
    .attr("xmlns", "http://www.w3.org/2000/svg");
  svg.append("rect").attr("width", WIDTH).attr("height", height).attr("fill", "#f3f7fb"); // the sea
  return svg;
}

function tipHandlers(sel, text, tip) {
  sel.on("mousemove", (ev, d) => {
    tip.hidden = false;
    tip.textContent = text(d);
    tip.style.left = `${ev.clientX + 12}px`;
    tip.style.top = `${ev.clientY + 12}px`;
  }).on("mouseleave", () => { tip.hidden = true; });
}

// areas: {topo, object, keep(id) -> bool, figures: Map(id -> {rate, name, ...}), onPick(id), tip, inset, label}
export function drawAreas(el, { topo, object, keep, figures, onPick, tip, inset, label }) {
  const all = topojson.feature(topo, topo.objects[object]).features.filter((f) => keep(String(f.id)));
  const shape = { type: "FeatureCollection", features: all };
  const height = inset ? 640 : 600;
  const svg = svgOf(el, height, label);
  const projection = d3.geoConicEqualArea().parallels([25, 47]).rotate([-105, 0]);
  if (inset) {
    // The mainland view stops north of 17°N; the South China Sea islands are drawn in the inset (lower right).
    const mainland = { type: "Feature", geometry: { type: "Polygon", coordinates: [[[73, 17], [73, 54], [136, 54], [136, 17], [73, 17]]] } };
    projection.fitExtent([[10, 10], [WIDTH - 10, height - 10]], mainland).clipExtent([[0, 0], [WIDTH, height]]);
  } else {
    projection.fitExtent([[10, 10], [WIDTH - 10, height - 10]], shape);
  }
  const path = d3.geoPath(projection);
  const name = (f) => figures.get(String(f.id))?.name || f.properties.name;
  const describe = (f) => {
    const x = figures.get(String(f.id));
    return x ? `${name(f)} ${f.id}: ${percent(x.value)} (${x.detail})` : `${name(f)} ${f.id}: ${t("not_in_registry")}`;
  };
  const areas = svg.append("g").selectAll("path").data(all).join("path")
    .attr("class", "area").attr("d", path).attr("data-code", (f) => f.id)
    .attr("fill", (f) => colourOf(figures.get(String(f.id))?.value))
    .attr("tabindex", (f) => (figures.has(String(f.id)) ? 0 : null))
    .attr("role", (f) => (figures.has(String(f.id)) ? "link" : null))
    .attr("aria-label", (f) => (figures.has(String(f.id)) ? describe(f) : null))
    .attr("aria-hidden", (f) => (figures.has(String(f.id)) ? null : "true"))
    .on("click", (_, f) => figures.has(String(f.id)) && onPick(String(f.id)))
    .on("keydown", (ev, f) => { if (ev.key === "Enter" && figures.has(String(f.id))) onPick(String(f.id)); });
  tipHandlers(areas, describe, tip);
  if (inset) {
    const box = { x: WIDTH - 150, y: height - 210, w: 140, h: 200 };
    const sea = { type: "Feature", geometry: { type: "Polygon", coordinates: [[[106, 3], [106, 24], [123, 24], [123, 3], [106, 3]]] } };
    const small = d3.geoConicEqualArea().parallels([25, 47]).rotate([-105, 0])
      .fitExtent([[box.x + 4, box.y + 4], [box.x + box.w - 4, box.y + box.h - 4]], sea)
      .clipExtent([[box.x, box.y], [box.x + box.w, box.y + box.h]]);
    const g = svg.append("g").attr("aria-hidden", "true");
    g.append("rect").attr("class", "inset").attr("fill", "#ffffff").attr("stroke", "#777777").attr("x", box.x).attr("y", box.y).attr("width", box.w).attr("height", box.h);
    g.selectAll("path.small").data(all).join("path").attr("class", "small").attr("d", d3.geoPath(small))
      .attr("fill", (f) => colourOf(figures.get(String(f.id))?.value)).attr("stroke", "#6b6b6b").attr("stroke-width", 0.3);
    // The line is kept as plain GeoJSON coordinates in the file (scripts/build_boundaries.py), not as arcs.
    const line = { type: "GeometryCollection", geometries: topo.objects.maritime.geometries };
    g.append("path").attr("class", "maritime").attr("d", d3.geoPath(small)(line));
    svg.append("path").attr("class", "maritime").attr("d", path(line));
  }
  return svg.node();
}

// townships: [{code, name, villages: [{code, name, status}]}]; one row of cells per township.
export function drawGrid(el, { townships, onPick, onTownship, tip, label }) {
  const cell = 16, gap = 2, labelWidth = 130, perRow = Math.floor((WIDTH - labelWidth) / (cell + gap));
  let y = 10;
  const rows = townships.map((ts) => {
    const lines = Math.max(1, Math.ceil(ts.villages.length / perRow));
    const row = { ...ts, y };
    y += lines * (cell + gap) + 8;
    return row;
  });
  const svg = svgOf(el, Math.max(y + 4, 60), label);
  const describe = (v) => `${v.name} ${v.code}: ${t(`s_${v.status}`)}`;
  for (const row of rows) {
    svg.append("text").attr("class", "township").attr("x", 4).attr("y", row.y + 12).text(`${row.name}`)
      .attr("data-code", row.code).attr("tabindex", 0).attr("role", "link")
      .on("click", () => onTownship(row.code))
      .on("keydown", (ev) => { if (ev.key === "Enter") onTownship(row.code); });
    const cells = svg.append("g").selectAll("rect").data(row.villages).join("rect")
      .attr("class", "cell").attr("width", cell).attr("height", cell)
      .attr("x", (_, i) => labelWidth + (i % perRow) * (cell + gap))
      .attr("y", (_, i) => row.y + Math.floor(i / perRow) * (cell + gap))
      .attr("fill", (v) => STATUS[v.status]).attr("data-code", (v) => v.code).attr("data-status", (v) => v.status)
      .attr("tabindex", 0).attr("role", "link").attr("aria-label", describe)
      .on("click", (_, v) => onPick(v.code))
      .on("keydown", (ev, v) => { if (ev.key === "Enter") onPick(v.code); });
    tipHandlers(cells, describe, tip);
  }
  return svg.node();
}
