// The page: sign-in, the view of one region (map or village grid, figures, panels), the time slider and live
// updates. The view lives in the URL (#/<code>?metric=…), so back, forward and forwarded links work.
import * as api from "./api.js";
import { t, setLanguage, language, percent, count, beijing } from "./i18n.js";
import * as draw from "./map.js";
import * as panels from "./panels.js";
import * as exports from "./exports.js";

const $ = (id) => document.getElementById(id);
const LEVEL = { 0: "national", 2: "province", 4: "city", 6: "county", 9: "township" };
const BELOW = { national: "province", province: "city", city: "county", county: "township" };
const LIVE_REFRESH_MS = 1200; // the map follows the stream at most this often: fast enough for 2 s, few requests
const SIDE_REFRESH_MS = 30000; // targets, laggards and lapsed lists follow more slowly

const state = { me: null, code: null, metric: "rate", carrier: "", model: "", pop: false, day: null };
const names = new Map([["CN", null]]);
const topo = new Map();
const townshipCache = new Map(); // township code -> {mark, report}: see villageGrid
let view = null; // what is drawn: {title, rows, columns, svg, asOf}
let stopStream = null;
let history = [];
let timer = null;
let lastMap = 0;
let lastSide = 0;
let loading = Promise.resolve();

const levelOf = (code) => LEVEL[code === "CN" ? 0 : code.length];
const inScope = (code) => state.me.region === "CN" || (code !== "CN" && code.startsWith(state.me.region));
const regionPath = (code) => (code === "CN" ? "/v1/coverage" : `/v1/coverage/${code}`);
const valueOf = (f) => {
  if (!f || !f.villages_total) return null;
  const n = { rate: f.villages_reached, active: f.villages_active, station: f.villages_with_station }[state.metric];
  return n / f.villages_total;
};
const filters = () => ({ carrier: state.carrier, cooperation_model: state.model, min_population: state.pop ? 2500 : "" });

function readHash() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const q = new URLSearchParams(query || "");
  state.code = /^(CN|\d{2}|\d{4}|\d{6}|\d{9})$/.test(path) ? path : state.me.region;
  if (!inScope(state.code)) state.code = state.me.region;
  state.metric = ["rate", "active", "station"].includes(q.get("metric")) ? q.get("metric") : "rate";
  state.carrier = q.get("carrier") || "";
  state.model = q.get("model") || "";
  state.pop = q.get("pop") === "1";
  state.day = /^\d{4}-\d{2}-\d{2}$/.test(q.get("day") || "") ? q.get("day") : null;
}

function writeHash(changes = {}) {
  Object.assign(state, changes);
  const q = new URLSearchParams();
  if (state.metric !== "rate") q.set("metric", state.metric);
  if (state.carrier) q.set("carrier", state.carrier);
  if (state.model) q.set("model", state.model);
  if (state.pop) q.set("pop", "1");
  if (state.day) q.set("day", state.day);
  const hash = `#/${state.code}${q.toString() ? `?${q}` : ""}`;
  if (location.hash !== hash) location.replace(hash); else show();
}

const go = (code) => { if (inScope(code)) writeHash({ code, day: null }); };

async function boundaries(file) {
  if (!topo.has(file)) topo.set(file, fetch(`boundaries/${file}.topo.json`).then((r) => (r.ok ? r.json() : null)));
  return topo.get(file);
}

function crumbs() {
  const chain = ["CN", ...[2, 4, 6, 9].filter((n) => state.code !== "CN" && state.code.length >= n).map((n) => state.code.slice(0, n))];
  const nav = $("crumbs");
  nav.replaceChildren(...chain.filter(inScope).map((c) => {
    const a = document.createElement("a");
    a.href = `#/${c}`;
    a.textContent = c === "CN" ? t("national") : names.get(c) || c;
    if (c === state.code) a.setAttribute("aria-current", "page");
    return a;
  }));
}

function unitColumns() {
  return [
    { key: "code", label: t("code"), zh: "代码" },
    { key: "name", label: t("name"), zh: "名称" },
    { key: "villages_total", label: t("villages_total"), zh: "行政村数", format: count },
    { key: "villages_reached", label: t("villages_reached"), zh: "已通达村数", format: count },
    { key: "coverage_rate", label: t("coverage_rate"), zh: "通达率", format: percent },
    { key: "villages_active", label: t("villages_active"), zh: "活跃村数", format: count },
    { key: "villages_lapsed", label: t("villages_lapsed"), zh: "已回退村数", format: count },
    { key: "villages_with_station", label: t("villages_with_station"), zh: "有站点村数", format: count },
    { key: "as_of", label: t("as_of"), zh: "数据截至（北京时间）", format: beijing, time: true },
  ];
}

// Every source of units (reports' children, laggard rows, snapshots) gives the same figures; rows link downwards.
function rowsOf(units) {
  return units.map((u) => {
    names.set(u.code, u.name);
    return { ...u, link: true };
  });
}

// The areas of the map and the rows of the table behind it: now (from the figures) or as of a day (snapshots).
async function mapUnits(code, level, report) {
  if (state.day) {
    const mapLevel = level === "national" ? "province" : level === "township" ? null : level === "county" ? "township" : "county";
    const params = mapLevel ? { level: mapLevel } : {};
    const day = await api.get(`/v1/coverage/${code}/history/${state.day}`, params);
    return { units: day.children, figures: day.figures };
  }
  if (level === "province" || level === "city") {
    const lag = await api.get(`/v1/laggards/${code}`, { level: "county", limit: 2500, ...filters() });
    return { units: lag.laggards, figures: report };
  }
  return { units: report.children, figures: report };
}

async function villageGrid(report) {
  const townships = report.level === "township" ? [report] : report.children.filter((c) => c.villages_total > 0);
  // A township is asked again only when its row in the county's figures changed: a live refresh of a county
  // costs one request plus one per township that moved.
  const scope = JSON.stringify(filters());
  const fetchOne = async (ts) => {
    if (ts === report) return report;
    const mark = JSON.stringify([scope, ts.villages_reached, ts.villages_active, ts.villages_total, ts.as_of]);
    const kept = townshipCache.get(ts.code);
    if (kept && kept.mark === mark) return kept.report;
    const fresh = await api.get(`/v1/coverage/${ts.code}`, filters());
    townshipCache.set(ts.code, { mark, report: fresh });
    return fresh;
  };
  const out = [];
  for (let i = 0; i < townships.length; i += 6) { // six at a time: a county's townships within the burst
    out.push(...(await Promise.all(townships.slice(i, i + 6).map(fetchOne))));
  }
  return out.map((ts) => ({
    code: ts.code,
    name: ts.name,
    villages: ts.children.map((v) => ({
      code: v.code, name: v.name, status: v.villages_active ? "active" : v.villages_reached ? "lapsed" : "unreached",
    })),
  }));
}

async function drawMap(code, level, report) {
  const { units, figures } = await mapUnits(code, level, report);
  const title = $("map-h");
  const place = code === "CN" ? t("national") : names.get(code) || code;
  const metricName = t({ rate: "m_rate", active: "m_active", station: "m_station" }[state.metric]);
  const tip = $("tip");
  let svg = null;
  if (!state.day && (level === "county" || level === "township")) {
    title.textContent = t("grid_of", { name: place });
    const grid = await villageGrid(report);
    svg = draw.drawGrid($("map"), { townships: grid, onPick: openVillage, onTownship: go, tip, label: title.textContent });
    draw.legend($("legend"), "grid");
    const villages = grid.flatMap((ts) => ts.villages.map((v) => ({ ...v, township: ts.name, status_text: t(`s_${v.status}`) })));
    view = {
      title: title.textContent, svg, asOf: beijing(figures.as_of),
      columns: [{ key: "code", label: t("code"), zh: "代码" }, { key: "name", label: t("name"), zh: "名称" },
        { key: "township", label: t("township_col"), zh: "乡镇" }, { key: "status_text", label: t("status"), zh: "状态" }],
      rows: villages,
    };
    $("missing").textContent = "";
  } else {
    const mapLevel = level === "national" ? "province" : "county";
    title.textContent = t("map_of", { name: place, level: t(level === "county" || level === "township" ? "township" : mapLevel), metric: metricName });
    const rows = rowsOf(units);
    if (level === "county" || level === "township") {
      $("map").replaceChildren();
      svg = null;
    } else {
      const file = level === "national" ? "CN" : code.slice(0, 2);
      const shapes = await boundaries(file);
      const byCode = new Map(rows.map((r) => [r.code, { name: r.name, value: valueOf(r), detail: `${count(r.villages_reached)}/${count(r.villages_total)}` }]));
      svg = draw.drawAreas($("map"), {
        topo: shapes, object: level === "national" ? "provinces" : "counties",
        keep: (id) => level !== "city" || id.startsWith(code), figures: byCode, onPick: go, tip,
        inset: level === "national", label: title.textContent,
      });
      // Counties of this registry without a boundary: in the table, named here since the map cannot show them.
      const missing = (await missingCounties()).filter((m) => byCode.has(m.code));
      $("missing").textContent = missing.length ? t("missing") + missing.map((m) => `${m.name} ${m.code}`).join("、") : "";
    }
    draw.legend($("legend"), "areas");
    view = { title: title.textContent, svg, asOf: state.day || beijing(figures?.as_of), columns: unitColumns(), rows };
  }
  panels.sortable($("table"), view.columns, view.rows, go);
  performance.mark("map-drawn"); // the bench times the first one from navigation start
  return figures;
}

let missingList = null;
async function missingCounties() {
  if (!missingList) missingList = fetch("boundaries/missing.json").then((r) => r.json()).then((m) => m.counties);
  return missingList;
}

function fillChoices(report) {
  const choose = (select, values, current) => {
    const known = new Set([...select.options].map((o) => o.value));
    for (const v of values) if (v && v !== "*" && !known.has(v)) select.append(new Option(v, v));
    select.value = current;
  };
  choose($("carrier"), (report.breakdown?.by_carrier || []).map((c) => c.carrier), state.carrier);
  choose($("model"), (report.breakdown?.by_cooperation_model || []).map((c) => c.cooperation_model), state.model);
  $("metric").value = state.metric;
  $("pop").checked = state.pop;
}

async function sidePanels(code, level) {
  lastSide = Date.now();
  const below = BELOW[level];
  const [targets, laggards, lapsed] = await Promise.all([
    api.get(`/v1/coverage/${code}/targets`).catch(() => null),
    below ? api.get(`/v1/laggards/${code}`, { level: below, limit: 10, ...filters() }) : null,
    level === "county" || level === "township" ? api.get(`/v1/coverage/${code}/unreached`, { lapsed: true, limit: 1000, ...filters() }) : null,
  ]);
  if (targets) panels.targets($("targets"), targets);
  panels.laggards($("laggards"), laggards, go);
  panels.lapsed($("lapsed"), lapsed, level === "county" || level === "township", openVillage);
}

// A village's detail needs the token too, so it opens in the page, not in a tab of its own.
async function openVillage(code) {
  const card = $("village-card");
  try {
    panels.village($("village"), await api.get(`/v1/villages/${code}`));
  } catch (exc) {
    $("village").textContent = t("failed") + exc.message;
  }
  card.hidden = false;
  card.dataset.code = code;
  card.scrollIntoView({ block: "nearest" });
  $("village-close").focus();
}

async function loadHistory(code) {
  const h = await api.get(`/v1/coverage/${code}/history`);
  history = h.series;
  const slider = $("day");
  slider.max = String(Math.max(history.length - 1, 0));
  slider.disabled = history.length === 0;
  const at = state.day ? history.findIndex((e) => e.date === state.day) : history.length - 1;
  slider.value = String(Math.max(at, 0));
  $("day-label").textContent = state.day || t("live");
  slider.setAttribute("aria-valuetext", state.day || t("live"));
  panels.chart($("chart"), history, state.day);
}

// Views and live refreshes run one after another, so a refresh never draws over the view that replaced it.
function queue(step) {
  loading = loading.then(step, step);
  return loading;
}

const show = () => queue(render);

async function render() {
  if (!state.me) return; // signed out meanwhile
  const code = state.code;
  const level = levelOf(code);
  document.body.dataset.state = "loading";
  if (level !== "county" && level !== "township") boundaries(level === "national" ? "CN" : code.slice(0, 2)); // meanwhile
  try {
    const report = await api.get(regionPath(code), filters());
    names.set(code, code === "CN" ? t("national") : report.name);
    for (const c of report.children || []) names.set(c.code, c.name);
    crumbs();
    fillChoices(report);
    const figures = (await drawMap(code, level, report)) || report;
    const dayNote = state.day ? (figures ? t("snapshot_day", { day: state.day }) : t("no_snapshot", { day: state.day })) : "";
    $("day-note").hidden = !state.day;
    $("day-note").textContent = dayNote;
    panels.headline($("headline"), figures ? { ...figures, name: report.name } : report, report.definition,
      report.definition?.lapse_window_days ?? 30, dayNote);
    panels.breakdown($("breakdown"), report.breakdown);
    lastMap = Date.now();
    await Promise.all([sidePanels(code, level), loadHistory(code)]);
    follow(code);
    document.body.dataset.state = "ready";
    document.body.dataset.code = code;
  } catch (exc) {
    document.body.dataset.state = "error";
    if (!(exc instanceof api.ApiError)) console.error(exc);
    if (exc.status === 401) { signOut(t("bad_token")); return; }
    $("headline").textContent = t("failed") + (exc.status === 403 ? t("forbidden") : exc.message);
  }
}

// Live: the stream of this region's figures updates the headline at once and the map soon after.
let streaming = null;
function follow(code) {
  const key = JSON.stringify([code, filters()]);
  if (streaming === key) return;
  if (stopStream) stopStream();
  streaming = key;
  stopStream = api.stream(code === "CN" ? "/v1/stream" : `/v1/stream/${code}`, filters(), (f) => {
    $("as-of").textContent = `${t("as_of")} ${beijing(f.as_of)} · ${t("updated")} ${new Date().toLocaleTimeString("zh-CN", { timeZone: "Asia/Shanghai", hour12: false })}`;
    $("stale").hidden = !f.stale; // the pipeline is behind the scans accepted (docs/reading-coverage.md)
    if (state.day || state.code !== code) return;
    clearTimeout(timer);
    timer = setTimeout(() => queue(() => refresh(code)), Math.max(0, lastMap + LIVE_REFRESH_MS - Date.now()));
  }, (on) => {
    const live = $("live");
    live.className = `live ${on ? "on" : "off"}`;
    live.textContent = t(on ? "live" : "offline");
  });
}

async function refresh(code) {
  if (state.day || state.code !== code || !state.me) return;
  lastMap = Date.now();
  const level = levelOf(code);
  try {
    const report = await api.get(regionPath(code), filters());
    await drawMap(code, level, report);
    panels.headline($("headline"), report, report.definition, report.definition?.lapse_window_days ?? 30, "");
    panels.breakdown($("breakdown"), report.breakdown);
    document.body.dataset.refreshed = String(Date.now());
    if (Date.now() - lastSide > SIDE_REFRESH_MS) await sidePanels(code, level);
  } catch (exc) {
    // What is drawn stays; the next change of the stream tries again.
    console.warn("live refresh failed", exc);
  }
}

function signOut(message = "") {
  api.forgetToken();
  clearTimeout(timer);
  state.me = null;
  if (stopStream) stopStream();
  streaming = null;
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  document.body.dataset.state = "signed-out";
}

async function signIn() {
  try {
    state.me = await api.get("/v1/me");
  } catch (exc) {
    signOut(exc.status === 401 || exc.status === 403 ? t("bad_token") : t("failed") + exc.message);
    return;
  }
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  readHash();
  writeHash();
}

function wire() {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    api.saveToken($("token").value.trim(), $("remember").checked);
    $("token").value = "";
    signIn();
  });
  $("logout").addEventListener("click", () => signOut());
  $("village-close").addEventListener("click", () => { $("village-card").hidden = true; });
  $("lang").addEventListener("click", () => {
    setLanguage(language() === "zh" ? "en" : "zh");
    $("lang").textContent = language() === "zh" ? "English" : "中文";
    $("lang").lang = language() === "zh" ? "en" : "zh-CN";
    if (state.me) show();
  });
  $("metric").addEventListener("change", (ev) => writeHash({ metric: ev.target.value }));
  $("carrier").addEventListener("change", (ev) => writeHash({ carrier: ev.target.value }));
  $("model").addEventListener("change", (ev) => writeHash({ model: ev.target.value }));
  $("pop").addEventListener("change", (ev) => writeHash({ pop: ev.target.checked }));
  $("day").addEventListener("change", (ev) => {
    const entry = history[Number(ev.target.value)];
    writeHash({ day: entry ? entry.date : null });
  });
  $("day").addEventListener("input", (ev) => { $("day-label").textContent = history[Number(ev.target.value)]?.date || ""; });
  $("now").addEventListener("click", () => writeHash({ day: null }));
  const stem = () => `coverage-${state.code}${state.day ? `-${state.day}` : ""}`;
  $("export-csv").addEventListener("click", () => view && exports.csv(view.columns, view.rows, $("csv-zh").checked, stem()));
  $("export-xlsx").addEventListener("click", () => view && exports.xlsx(view.columns, view.rows, stem(), view.title));
  const legendItems = () => [...$("legend").children].map((item) => [item.firstChild.style.backgroundColor, item.textContent]);
  $("export-png").addEventListener("click", () => view?.svg && exports.png(view.svg, view.title, view.asOf, stem(), legendItems()));
  // A hash outside the token's region (typed, or from a forwarded link) is replaced by the region's own.
  window.addEventListener("hashchange", () => { if (state.me) { readHash(); writeHash(); } });
}

wire();
if (matchMedia("(max-width: 600px)").matches) $("table-box").open = false; // a phone shows the map first
setLanguage(language());
$("lang").textContent = language() === "zh" ? "English" : "中文";
if (api.savedToken()) signIn(); else signOut();
