// The coverage API as the page reads it: the user's token on every request, the browser's cache revalidated by
// ETag (a 304 costs no body), 429 answered by waiting, and the live stream read over fetch (EventSource cannot
// send the token).
const API = new URL("../", document.baseURI).pathname.replace(/dashboard\/$/, "");
const KEY = "lastmile.token";

export class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

export const stats = { requests: 0, notModified: 0 };
window.lastmileStats = stats; // read by the browser tests and the bench

export function savedToken() { return sessionStorage.getItem(KEY) || localStorage.getItem(KEY); }

export function saveToken(token, remember) {
  sessionStorage.setItem(KEY, token);
  if (remember) localStorage.setItem(KEY, token); else localStorage.removeItem(KEY);
}

export function forgetToken() { sessionStorage.removeItem(KEY); localStorage.removeItem(KEY); }

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function get(path, params = {}) {
  const url = new URL(API + path.replace(/^\//, ""), location.origin);
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  for (let attempt = 0; ; attempt++) {
    stats.requests++;
    const r = await fetch(url, { headers: { Authorization: `Bearer ${savedToken()}` }, cache: "no-cache" });
    if (r.status === 429 && attempt < 3) {
      await sleep(1000 * Number(r.headers.get("Retry-After") || 1));
      continue;
    }
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch { /* not problem+json */ }
      throw new ApiError(r.status, detail);
    }
    return r.json();
  }
}

// The region's figures as they change: onFigures(data) for each `coverage` event; reconnects with Last-Event-ID.
export function stream(path, params, onFigures, onState) {
  const url = new URL(API + path.replace(/^\//, ""), location.origin);
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  const control = new AbortController();
  let lastId = null;
  (async () => {
    for (let wait = 1000; !control.signal.aborted; wait = Math.min(wait * 2, 30000)) {
      try {
        const headers = { Authorization: `Bearer ${savedToken()}`, Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        stats.requests++;
        const r = await fetch(url, { headers, signal: control.signal, cache: "no-store" });
        if (!r.ok) throw new ApiError(r.status, r.statusText);
        onState(true);
        wait = 1000;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let event = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event = line.slice(6).trim();
              else if (line.startsWith("data:")) data += line.slice(5).trimStart();
              else if (line.startsWith("id:")) lastId = line.slice(3).trim();
            }
            if (event === "coverage" && data) onFigures(JSON.parse(data));
          }
        }
      } catch (exc) {
        if (control.signal.aborted) return;
      }
      onState(false);
      await sleep(wait);
    }
  })();
  return () => control.abort();
}
