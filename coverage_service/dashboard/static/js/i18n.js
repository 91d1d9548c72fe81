// Words of the page in Chinese (the default) and English, and how numbers and times are shown.
const WORDS = {
  title: ["快递进村 覆盖作战图", "Express-to-villages coverage map"],
  offline: ["未连接", "offline"], live: ["实时", "live"],
  restated: ["更正后", "restated"], as_published: ["原公布", "as published"], corrections: ["项更正", "corrections"],
  stale: ["数据滞后：已受理的扫描尚未计入", "Figures behind: accepted scans not yet counted"], logout: ["退出", "Sign out"],
  login_title: ["输入监管令牌", "Enter your regulator token"],
  login_help: ["令牌由管理员发放，只在本浏览器中保存，仅用于读取本辖区的覆盖数据。",
    "Your administrator issues the token. It stays in this browser and only reads your region's coverage."],
  token: ["令牌", "Token"], remember: ["在此设备上记住", "Remember on this device"], open: ["打开", "Open"],
  bad_token: ["令牌无效或已停用", "The token is not valid"], controls: ["显示选项", "Display options"],
  metric: ["指标", "Measure"], m_rate: ["通达率", "Coverage rate"], m_active: ["活跃率", "Active rate"],
  m_station: ["设站率", "Villages with a station"], carrier: ["快递企业", "Carrier"], model: ["合作模式", "Cooperation model"],
  all: ["全部", "All"], pop: ["人口≥2500的村", "Villages of ≥ 2,500 people"], csv_zh: ["中文表头·北京时间", "Chinese headers, Beijing time"],
  history: ["历史与时间轴", "History and time slider"], as_of_day: ["查看日期", "Show day"], now: ["回到实时", "Back to live"],
  targets: ["目标与进度", "Targets and pace"], laggards: ["通报：排名靠后", "Laggards (通报)"],
  lapsed: ["已回退的村", "Lapsed villages"], breakdown: ["分企业与合作模式", "By carrier and cooperation model"],
  foot: ["边界数据仅供工作参考，公开发布须使用经审核的标准地图（审图号）。",
    "Boundaries are for working use; a public deployment needs an approved standard map (审图号)."],
  api_docs: ["API 文档", "API docs"], edition: ["名录版本", "registry edition"], close: ["关闭", "Close"], population: ["人口", "Population"],
  first_reach: ["首次通达", "First reached"], stations: ["站点", "Stations"], parcels_in: ["进村件量", "Inbound"],
  parcels_out: ["出村件量", "Outbound"], by_carrier_reach: ["各企业最近通达", "Last reach by carrier"], table: ["表格（可排序）", "Table (sortable)"], status: ["状态", "Status"],
  national: ["全国", "China"], province: ["省", "province"], city: ["市", "city"], county: ["县", "county"], township: ["乡镇", "township"],
  map_of: ["{name}：各{level}{metric}", "{name}: {metric} by {level}"], grid_of: ["{name}：各村通达情况", "{name}: villages"],
  villages_total: ["行政村", "Villages"], villages_reached: ["已通达", "Reached"], coverage_rate: ["通达率", "Coverage rate"],
  villages_active: ["活跃", "Active"], villages_lapsed: ["已回退", "Lapsed"], villages_with_station: ["有站点", "With a station"],
  station_rate: ["设站率", "Station rate"], active_rate: ["活跃率", "Active rate"],
  as_of: ["数据截至", "Data as of"], updated: ["更新于", "updated"], code: ["代码", "Code"], name: ["名称", "Name"], level: ["层级", "Level"],
  no_villages: ["无行政村", "no villages"], not_in_registry: ["不在名录中", "not in the registry"],
  s_active: ["已通达·活跃", "reached, active"], s_lapsed: ["已通达·已回退", "reached, lapsed"], s_unreached: ["未通达", "not reached"],
  missing: ["无边界数据的县（见下表）：", "Counties without a boundary (in the table below): "],
  definition: ["口径", "Definition"], reached_def: ["有任一到站、投递、自提或揽收扫描即为通达", "reached: any arrival at a station, delivery, pick-up or collection scan"],
  active_def: ["最近{days}天（北京时间整日）内仍有通达扫描为活跃", "active: last reached within the last {days} China Standard Time days"],
  snapshot_day: ["{day} 快照（全部企业、全部村）；筛选不适用，村级网格无历史", "Snapshot of {day} (any carrier, all villages); filters do not apply, the village grid has no history"],
  no_snapshot: ["{day} 无快照", "No snapshot on {day}"], no_history: ["暂无历史快照", "No snapshots yet"],
  deadline: ["截止", "Deadline"], gap: ["缺口", "Gap"], days_left: ["剩余天数", "Days left"], per_day: ["每日需新增", "Needed per day"],
  pace: ["近期每日新增", "Recent pace per day"],
  "met": ["已达成", "met"], "missed": ["未达成", "missed"], "on track": ["进度正常", "on track"], "at risk": ["有风险", "at risk"],
  none: ["无", "none"], more: ["另有 {n} 个", "and {n} more"], village_detail: ["村详情", "village detail"],
  carrier_col: ["企业", "Carrier"], model_col: ["模式", "Model"], last_reach: ["最近通达", "Last reached"],
  township_col: ["乡镇", "Township"], rank: ["名次", "Rank"], date: ["日期", "Date"], forbidden: ["无权查看该地区", "Not in your region"],
  rate_limited: ["请求过于频繁，稍后重试", "Too many requests; retrying shortly"], failed: ["读取失败：", "Could not load: "],
  only_lower: ["国家和省级请查看下级排名中的回退数", "At national and provincial level see the lapsed column of the table"],
};

let lang = localStorage.getItem("lastmile.lang") === "en" ? "en" : "zh";

export function language() { return lang; }

export function setLanguage(next) {
  lang = next;
  localStorage.setItem("lastmile.lang", next);
  document.documentElement.lang = next === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
}

export function t(key, values = {}) {
  const pair = WORDS[key];
  let text = pair ? pair[lang === "zh" ? 0 : 1] : key;
  for (const [k, v] of Object.entries(values)) text = text.replace(`{${k}}`, v);
  return text;
}

export function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)}%`;
}

export function count(n) {
  return n === null || n === undefined ? "—" : n.toLocaleString(lang === "zh" ? "zh-CN" : "en-GB");
}

// Times as Beijing time: regulators read figures by the China Standard Time day.
export function beijing(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const text = d.toLocaleString("sv-SE", { timeZone: "Asia/Shanghai" });
  return `${text} ${lang === "zh" ? "北京时间" : "CST"}`;
}
