// What a regulator forwards: the table of the view as CSV (Chinese headers and Beijing time, or the API's
// English names and UTC) or XLSX, and the map as a PNG for a circular's slides.
import { t, beijing } from "./i18n.js";

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// columns: [{key, label}] (label already in the page's language), rows: objects. chinese: labels and CST times.
function matrix(columns, rows, chinese) {
  const head = columns.map((c) => (chinese ? c.zh : c.key));
  const cell = (c, v) => (c.time && chinese ? (v ? beijing(v).replace(/ (北京时间|CST)$/, "") : "") : v ?? "");
  return [head, ...rows.map((r) => columns.map((c) => cell(c, r[c.key])))];
}

// As the API's CSV does: UTF-8 with a BOM for Excel and WPS, CRLF, quoted where needed, formulas defused.
export function csv(columns, rows, chinese, name) {
  const quote = (v) => {
    let s = String(v);
    if (/^[=+\-@]/.test(s) && typeof v === "string") s = `'${s}`;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  const text = matrix(columns, rows, chinese).map((line) => line.map(quote).join(",")).join("\r\n") + "\r\n";
  download(new Blob(["\ufeff", text], { type: "text/csv;charset=utf-8" }), `${name}.csv`);
}

// SheetJS is loaded on the first XLSX export only: most visits never need its 250 KB.
let sheetjs = null;
function loadSheetJS() {
  sheetjs ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = "vendor/xlsx-0.18.5.mini.min.js";
    script.onload = () => resolve(window.XLSX);
    script.onerror = reject;
    document.head.append(script);
  });
  return sheetjs;
}

export async function xlsx(columns, rows, name, title) {
  const XLSX = await loadSheetJS();
  const sheet = XLSX.utils.aoa_to_sheet(matrix(columns, rows, true));
  const book = XLSX.utils.book_new();
  XLSX.utils.book_append_sheet(book, sheet, title.slice(0, 31).replace(/[\\/?*[\]:]/g, " "));
  const bytes = XLSX.write(book, { bookType: "xlsx", type: "array", compression: true });
  download(new Blob([bytes], { type: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" }), `${name}.xlsx`);
}

// The map's SVG drawn on a canvas at twice its size, with the title and the as-of line above it.
export async function png(svg, title, asOf, name, legend = []) {
  const box = svg.viewBox.baseVal;
  const scale = 2, top = 60 + (legend.length ? 24 : 0);
  const clone = svg.cloneNode(true);
  clone.setAttribute("width", box.width);
  clone.setAttribute("height", box.height);
  // The stylesheet does not travel with the SVG: its strokes are written onto the copy.
  for (const node of clone.querySelectorAll("path.area")) node.setAttribute("stroke", "#6b6b6b");
  for (const node of clone.querySelectorAll("path.maritime")) { node.setAttribute("stroke", "#555555"); node.setAttribute("fill", "none"); }
  for (const node of clone.querySelectorAll("rect.cell")) node.setAttribute("stroke", "#ffffff");
  const url = URL.createObjectURL(new Blob([new XMLSerializer().serializeToString(clone)], { type: "image/svg+xml" }));
  const image = new Image();
  await new Promise((resolve, reject) => { image.onload = resolve; image.onerror = reject; image.src = url; });
  const canvas = document.createElement("canvas");
  canvas.width = box.width * scale;
  canvas.height = (box.height + top) * scale;
  const g = canvas.getContext("2d");
  g.scale(scale, scale);
  g.fillStyle = "#ffffff";
  g.fillRect(0, 0, box.width, box.height + top);
  g.fillStyle = "#1b1b1b";
  g.font = "bold 20px 'WenQuanYi Micro Hei', 'Noto Sans CJK SC', sans-serif";
  g.fillText(title, 12, 28);
  g.font = "13px 'WenQuanYi Micro Hei', 'Noto Sans CJK SC', sans-serif";
  g.fillText(`${t("as_of")} ${asOf}`, 12, 50);
  let x = 12;
  for (const [colour, label] of legend) { // the legend, so the colours read on their own in a slide
    g.fillStyle = colour;
    g.fillRect(x, 64, 14, 12);
    g.strokeStyle = "#999999";
    g.strokeRect(x, 64, 14, 12);
    g.fillStyle = "#1b1b1b";
    g.fillText(label, x + 18, 75);
    x += 26 + g.measureText(label).width;
  }
  g.drawImage(image, 0, top, box.width, box.height);
  URL.revokeObjectURL(url);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  download(blob, `${name}.png`);
}
