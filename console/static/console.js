// agentmesh console: plain JS, SVG drawn by hand, live updates by server-sent events.
"use strict";

const view = document.getElementById("view");
const problemsBox = document.getElementById("problems");
const liveDot = document.getElementById("live-indicator");
const SERVICE_COLORS = { gateway: "#2563eb", agent: "#0d9488", rag: "#c2410c", client: "#6b7280", edge: "#7c3aed" };
const PALETTE = ["#2563eb", "#0d9488", "#c2410c", "#7c3aed", "#be185d", "#4d7c0f", "#0369a1"];
let latest = null;          // the latest overview snapshot
let liveSource = null;      // the overview EventSource
let pageSource = null;      // a page's own EventSource (a run's WatchRun)
let renderCurrent = null;   // re-render the current page on a new snapshot

// ---------- helpers ----------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function colorOf(service) {
  const name = service.replace(/^agentmesh-/, "");
  if (SERVICE_COLORS[name]) return SERVICE_COLORS[name];
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}
const fmtRate = (r) => (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2));
const fmtPct = (f) => (f * 100).toFixed(f > 0 && f < 0.01 ? 2 : 1) + "%";
const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms >= 10 ? ms.toFixed(0) + " ms" : ms.toFixed(1) + " ms");
const fmtTime = (ns) => new Date(ns / 1e6).toLocaleTimeString();
const shortMethod = (m) => m.replace(/^\/agentmesh\.(\w+)\.v1\./, "").replace(/^\//, "");
async function getJSON(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function navigate(path) {
  history.pushState({}, "", path);
  route();
}
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (link && !event.metaKey && !event.ctrlKey) {
    event.preventDefault();
    navigate(link.getAttribute("href"));
  }
});
window.addEventListener("popstate", route);
document.getElementById("trace-search").addEventListener("submit", (event) => {
  event.preventDefault();
  const raw = document.getElementById("trace-search-input").value.trim().toLowerCase();
  const match = raw.match(/[0-9a-f]{32}/);
  if (match) navigate("/traces/" + match[0]);
  else showError("A trace id is 32 hex digits, as in the services' log lines (trace_id=...).");
});
function showError(message) {
  view.replaceChildren(el("div", { class: "panel" }, el("p", { class: "error" }, message)));
}

// ---------- live overview ----------
function startLive() {
  liveSource = new EventSource("/api/live");
  liveSource.addEventListener("overview", (event) => {
    latest = JSON.parse(event.data);
    liveDot.classList.add("on");
    showProblems(latest.problems || {});
    if (renderCurrent) renderCurrent();
  });
  liveSource.onerror = () => liveDot.classList.remove("on");
}
function showProblems(problems) {
  const lines = [];
  if (problems.prometheus) lines.push(`Prometheus is unavailable, so rates, errors, latencies and breaker states are not shown: ${problems.prometheus}`);
  if (problems.discovery) lines.push(`Discovery is unavailable: ${problems.discovery}`);
  problemsBox.hidden = lines.length === 0;
  problemsBox.replaceChildren(...lines.map((l) => el("p", {}, l)));
  problemsBox.id = "problems";
  problemsBox.dataset.prometheus = problems.prometheus ? "down" : "up";
}

// ---------- topology ----------
function renderTopology() {
  const root = el("div", { id: "topology-page" });
  view.replaceChildren(root);
  renderCurrent = () => drawTopology(root);
  drawTopology(root);
}

function drawTopology(root) {
  if (!latest) {
    root.replaceChildren(el("div", { class: "panel empty" }, "Waiting for the first snapshot…"));
    return;
  }
  const topo = latest.topology;
  const signals = latest.signals;
  const graphPanel = el("div", { class: "panel", id: "topology" },
    el("h2", {}, "Topology", el("small", {}, `edges from ${topo.source}, refreshed every few seconds`)),
    graphSvg(topo),
    el("div", { class: "legend" },
      el("span", {}, el("i", { style: "background:var(--ok)" }), "passing"),
      el("span", {}, el("i", { style: "background:var(--warn)" }), "warning"),
      el("span", {}, el("i", { style: "background:var(--eject)" }), "ejected by a caller's Envoy"),
      el("span", {}, el("i", { style: "background:var(--drain)" }), "draining (NOT_SERVING)"),
      el("span", {}, el("i", { style: "background:var(--bad)" }), "critical / unreachable"),
      el("span", {}, "edge label: calls/s · error rate; dashed red: circuit breaker open")),
    el("p", { class: "muted", id: "ejection-source" }, topo.ejection_source === "envoy"
      ? "Ejections: read from every sidecar's Envoy admin /clusters (outlier detection, active health checks)."
      : "Ejections: no source — no Envoy sidecars here (make run MESH=envoy has them), so no instance is shown ejected."));
  const side = el("div", {}, canaryPanel(topo.canary || {}), breakerPanel(signals));
  const methods = methodPanel(signals);
  root.replaceChildren(el("div", { class: "grid2" }, graphPanel, side), methods);
}

function graphSvg(topo) {
  const nodes = topo.nodes;
  const W = 1100, colW = 196, top = 40;
  const gap = nodes.length > 1 ? (W - 40 - colW) / (nodes.length - 1) : 0;
  const layout = {};
  let maxH = 0;
  nodes.forEach((node, i) => {
    const height = node.kind === "client" ? 64 : 58 + Math.max(1, node.instances.length) * 36;
    layout[node.id] = { x: 20 + i * gap, y: top, w: colW, h: height, col: i };
    maxH = Math.max(maxH, height);
  });
  // Calls that skip a column (gateway -> rag passes agent) arc below the boxes, each one lower.
  const skips = topo.edges.filter((e) => layout[e.source] && layout[e.target] && Math.abs(layout[e.target].col - layout[e.source].col) > 1);
  const H = top + maxH + 40 + skips.length * 46;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "service topology" });
  g.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#7b8794" }))));
  const edgeLabel = (edge, x, y) => {
    const text = svg("text", { x, y, "text-anchor": "middle" });
    text.append(svg("tspan", { x, dy: 0, "font-weight": 600 }, `${fmtRate(edge.rate)} calls/s`));
    text.append(svg("tspan", { x, dy: 14 }, `${fmtPct(edge.error_rate)} errors` + (edge.breaker && edge.breaker !== "closed" ? ` · breaker ${edge.breaker}` : "")));
    return text;
  };
  let depth = 0;
  for (const edge of topo.edges) {
    const a = layout[edge.source], b = layout[edge.target];
    if (!a || !b) continue;
    const forward = a.col < b.col;
    const skip = Math.abs(b.col - a.col) > 1;
    let d, label;
    if (skip) {
      depth += 1;
      const x1 = a.x + a.w / 2 + (forward ? 30 : -30), x2 = b.x + b.w / 2 + (forward ? -30 : 30);
      const y1 = a.y + a.h, y2 = b.y + b.h, low = top + maxH + depth * 46;
      d = `M ${x1} ${y1} C ${x1} ${low}, ${x2} ${low}, ${x2} ${y2}`;
      label = edgeLabel(edge, (x1 + x2) / 2, low - 14);
    } else {
      const x1 = forward ? a.x + a.w : a.x, x2 = forward ? b.x : b.x + b.w;
      const y = top + 30;
      d = `M ${x1} ${y} L ${x2} ${y}`;
      label = edgeLabel(edge, (x1 + x2) / 2, y - 18);
    }
    const classes = ["edge", edge.rate > 0 ? "active" : "", edge.error_rate > 0 ? "errors" : "", edge.breaker === "open" ? "breaker-open" : ""].join(" ");
    g.append(svg("g", { class: classes, "data-source": edge.source, "data-target": edge.target, "data-rate": edge.rate },
      svg("path", { d, "marker-end": "url(#arrow)" }), label));
  }
  for (const node of nodes) {
    const box = layout[node.id];
    const group = svg("g", { class: `node health-${node.health}`, "data-service": node.id, transform: `translate(${box.x},${box.y})` });
    group.append(svg("rect", { class: "box", width: box.w, height: box.h, rx: 10 }));
    group.append(svg("rect", { x: 0, y: 0, width: 6, height: box.h, rx: 3, fill: colorOf(node.id) }));
    if (node.kind === "client") {
      group.append(svg("text", { class: "title", x: 18, y: 26 }, "client"));
      group.append(svg("text", { class: "sub", x: 18, y: 44 }, "callers outside the mesh"));
    } else {
      const total = node.instances.reduce((s, i) => s + (i.rate || 0), 0);
      group.append(svg("text", { class: "title", x: 18, y: 24 }, node.id));
      group.append(svg("text", { class: "sub", x: 18, y: 42 }, `${node.instances.length} instance${node.instances.length === 1 ? "" : "s"} · ${fmtRate(total)} calls/s`));
      if (!node.instances.length) group.append(svg("text", { class: "sub", x: 18, y: 70 }, "seen in traffic, not in discovery"));
      node.instances.forEach((inst, j) => {
        const iy = 52 + j * 36;
        const ig = svg("g", { class: `inst health-${inst.health}`, "data-instance": inst.address, "data-version": inst.version, transform: `translate(10,${iy})` });
        const ejectedBy = (inst.ejected_by || []).map((e) => `\nejected by ${e.reporter}'s Envoy (${e.cluster}): ${e.reason}`).join("");
        ig.append(svg("title", {}, `${inst.instance_id}\n${inst.health}: ${inst.detail}${ejectedBy}`));
        ig.append(svg("rect", { width: box.w - 20, height: 30, rx: 6 }));
        ig.append(svg("circle", { class: inst.health, cx: 12, cy: 15, r: 5 }));
        ig.append(svg("text", { x: 24, y: 13, "font-weight": 600 }, `${inst.version} · ${inst.health}`));
        ig.append(svg("text", { x: 24, y: 25, fill: "#6b7280" }, `${inst.address} · ${fmtRate(inst.rate || 0)}/s`));
        group.append(ig);
      });
    }
    g.append(group);
  }
  return g;
}

function canaryPanel(canary) {
  const panel = el("div", { class: "panel", id: "canary" }, el("h2", {}, "Canary split", el("small", {}, "live share of calls per version")));
  const services = Object.keys(canary);
  if (!services.length) panel.append(el("p", { class: "muted" }, "One version per service right now (no canary running)."));
  for (const service of services) {
    const bar = el("div", { class: "split", "data-service": service });
    const legend = el("div", { class: "legend" });
    Object.entries(canary[service]).forEach(([version, share], i) => {
      const color = PALETTE[i % PALETTE.length];
      bar.append(el("div", { style: `width:${Math.max(share * 100, 0)}%;background:${color}`, title: `${version} ${fmtPct(share)}` }));
      legend.append(el("span", { "data-version": version }, el("i", { style: `background:${color}` }), `${version} ${fmtPct(share)}`));
    });
    panel.append(el("div", {}, el("strong", {}, service)), bar, legend);
  }
  return panel;
}

function breakerPanel(signals) {
  const panel = el("div", { class: "panel", id: "breakers" }, el("h2", {}, "Circuit breakers"));
  if (!signals) return panel.append(el("p", { class: "muted" }, "Unknown: Prometheus is unavailable.")), panel;
  if (!signals.breakers.length) return panel.append(el("p", { class: "muted" }, "No breaker has reported yet.")), panel;
  panel.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "caller"), el("th", {}, "target"), el("th", {}, "state"))),
    el("tbody", {}, signals.breakers.map((b) => el("tr", {}, el("td", {}, `${b.service} ${b.version}`), el("td", {}, b.target), el("td", {}, el("span", { class: `pill ${b.state}` }, b.state)))))));
  return panel;
}

function methodPanel(signals) {
  const panel = el("div", { class: "panel", id: "methods" }, el("h2", {}, "Golden signals by service and method", el("small", {}, `rates over the last ${latest.rate_window}, from Prometheus`)));
  if (!signals) return panel.append(el("p", { class: "muted" }, "Prometheus is unavailable: no rates, errors or latencies.")), panel;
  const rows = signals.methods.filter((m) => m.rate > 0 || m.p99_ms !== null);
  if (!rows.length) return panel.append(el("p", { class: "empty" }, "No calls in the last 30 seconds.")), panel;
  panel.append(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "service"), el("th", {}, "method"), el("th", { class: "num" }, "calls/s"),
      el("th", { class: "num" }, "error rate"), el("th", {}, "errors by code"), el("th", { class: "num" }, "p50"), el("th", { class: "num" }, "p99"))),
    el("tbody", {}, rows.map((m) => el("tr", { "data-service": m.service, "data-method": m.method },
      el("td", {}, el("span", { class: "pill", style: `background:${colorOf(m.service)}22` }, m.service)),
      el("td", { class: "mono" }, shortMethod(m.method)),
      el("td", { class: "num rate" }, fmtRate(m.rate)),
      el("td", { class: "num" }, m.error_rate > 0 ? el("span", { class: "pill err" }, fmtPct(m.error_rate)) : "0%"),
      el("td", { class: "mono" }, Object.entries(m.errors).map(([code, r]) => `${code} ${fmtRate(r)}/s`).join(", ") || "–"),
      el("td", { class: "num" }, fmtMs(m.p50_ms)),
      el("td", { class: "num" }, fmtMs(m.p99_ms)))))));
  return panel;
}

// ---------- traces ----------
async function renderTraces() {
  const params = new URLSearchParams(location.search);
  const service = params.get("service") || "";
  const errors = params.get("errors") === "1";
  const panel = el("div", { class: "panel", id: "trace-list" });
  view.replaceChildren(panel);
  const draw = async () => {
    let data;
    try {
      data = await getJSON(`/api/traces?limit=200&service=${encodeURIComponent(service)}&errors=${errors ? 1 : 0}`);
    } catch (error) {
      panel.replaceChildren(el("p", {}, `Could not list traces: ${error.message}`));
      return;
    }
    const filters = el("div", { class: "legend" },
      el("span", {}, "service: ", ...["", "agentmesh-gateway", "agentmesh-agent", "agentmesh-rag"].map((s) =>
        el("a", { href: `/traces?service=${s}${errors ? "&errors=1" : ""}`, "data-link": true, style: s === service ? "font-weight:700" : "" }, ` ${s.replace("agentmesh-", "") || "all"} `))),
      el("a", { href: `/traces?service=${service}${errors ? "" : "&errors=1"}`, "data-link": true }, errors ? "show all" : "errors only"));
    panel.replaceChildren(el("h2", {}, "Recent traces", el("small", {}, `${data.stored} kept in memory (newest first)`)), filters);
    if (!data.traces.length) {
      panel.append(el("p", { class: "empty" }, "No traces yet: send some calls through the gateway."));
      return;
    }
    panel.append(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "started"), el("th", {}, "service"), el("th", {}, "method"), el("th", { class: "num" }, "duration"),
        el("th", { class: "num" }, "spans"), el("th", {}, "services"), el("th", {}, "status"), el("th", {}, "trace id"))),
      el("tbody", {}, data.traces.map((t) => el("tr", { class: "clickable", "data-trace-id": t.trace_id, onclick: () => navigate(`/traces/${t.trace_id}`) },
        el("td", {}, fmtTime(t.start_ns)),
        el("td", {}, t.service.replace("agentmesh-", "")),
        el("td", { class: "mono" }, shortMethod(t.method)),
        el("td", { class: "num" }, fmtMs(t.duration_ms)),
        el("td", { class: "num" }, t.spans),
        el("td", {}, t.services.map((s) => el("span", { class: "pill", style: `background:${colorOf(s)}22;margin-right:4px` }, s.replace("agentmesh-", "")))),
        el("td", {}, el("span", { class: `pill ${t.error ? "err" : "ok"}` }, t.status)),
        el("td", { class: "mono muted" }, t.trace_id.slice(0, 16) + "…"))))));
  };
  renderCurrent = draw;
  await draw();
}

async function renderTrace(traceId) {
  renderCurrent = null;
  const panel = el("div", { class: "panel", id: "trace" }, el("p", { class: "muted" }, "Loading trace…"));
  view.replaceChildren(panel);
  let trace;
  try {
    trace = await getJSON(`/api/traces/${traceId}`);
  } catch (error) {
    panel.replaceChildren(el("h2", {}, "Trace ", el("span", { class: "mono" }, traceId)), el("p", {}, error.message));
    return;
  }
  const spans = trace.span_list;
  const byId = Object.fromEntries(spans.map((s) => [s.span_id, s]));
  const children = {};
  for (const s of spans) (children[byId[s.parent_span_id] ? s.parent_span_id : ""] ||= []).push(s);
  const ordered = [];
  const walk = (parent, depth) => {
    for (const s of (children[parent] || []).sort((a, b) => a.start_ns - b.start_ns)) {
      ordered.push([s, depth]);
      walk(s.span_id, depth + 1);
    }
  };
  walk("", 0);
  const t0 = Math.min(...spans.map((s) => s.start_ns));
  const total = Math.max(1, Math.max(...spans.map((s) => s.end_ns)) - t0);
  const ticks = el("div", { class: "ticks" });
  for (let i = 0; i <= 4; i++) ticks.append(el("span", { style: `left:${i * 25}%;transform:translateX(-${i * 25}%)` }, fmtMs((total / 1e6) * i / 4)));
  const waterfall = el("div", { id: "waterfall" }, el("div", { class: "wf-axis" }, el("div", {}, "service · span"), ticks));
  for (const [s, depth] of ordered) {
    const left = ((s.start_ns - t0) / total) * 100;
    const width = Math.max(((s.end_ns - s.start_ns) / total) * 100, 0.2);
    const service = s.service.replace("agentmesh-", "");
    const row = el("div", { class: "span-row", "data-service": service, "data-span-id": s.span_id, onclick: () => row.classList.toggle("open") },
      el("div", { class: "label", style: `padding-left:${depth * 16 + 4}px` },
        el("span", { class: "svc", style: `color:${colorOf(service)}` }, service), " ",
        el("span", { class: "mono" }, shortMethod(s.name)), " ", el("span", { class: "muted" }, s.kind.toLowerCase())),
      el("div", { class: "track" },
        el("div", { class: `bar${s.error ? " error" : ""}`, style: `left:${left}%;width:${width}%;background:${colorOf(service)}` }),
        left + width > 85
          ? el("span", { class: "dur", style: `right:${100 - left}%` }, fmtMs(s.duration_ms))
          : el("span", { class: "dur", style: `left:${left + width}%` }, fmtMs(s.duration_ms))));
    const attrs = Object.entries(s.attributes);
    const detail = el("div", { class: "span-attrs" }, el("table", {}, el("tbody", {},
      el("tr", {}, el("td", {}, "span_id"), el("td", {}, s.span_id)),
      el("tr", {}, el("td", {}, "status"), el("td", {}, s.error ? `ERROR ${s.status_message}` : "OK")),
      attrs.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v)))))));
    waterfall.append(row, detail);
  }
  panel.replaceChildren(
    el("div", { class: "trace-head" },
      el("h2", {}, "Trace"), el("span", { class: "mono" }, trace.trace_id),
      el("span", {}, `${shortMethod(trace.method)} · ${fmtMs(trace.duration_ms)} · ${trace.spans} spans`),
      el("span", {}, trace.services.map((s) => el("span", { class: "pill", style: `background:${colorOf(s)}22;margin-right:4px` }, s.replace("agentmesh-", "")))),
      el("span", { class: `pill ${trace.error ? "err" : "ok"}` }, trace.status)),
    trace.dropped_spans ? el("p", { class: "muted" }, `${trace.dropped_spans} spans dropped (the ring keeps at most a bounded number per trace)`) : "",
    waterfall,
    el("p", { class: "muted" }, "Click a span for its attributes."));
}

// ---------- runs ----------
async function renderRuns() {
  const panel = el("div", { class: "panel", id: "run-list" });
  view.replaceChildren(panel);
  const draw = async () => {
    let data;
    try {
      data = await getJSON("/api/runs");
    } catch (error) {
      panel.replaceChildren(el("h2", {}, "Runs"), el("p", {}, `Could not list runs through the gateway: ${error.message}`));
      return;
    }
    panel.replaceChildren(el("h2", {}, "Runs", el("small", {}, "newest first, through the gateway with a read-only token")));
    if (!data.runs.length) return panel.append(el("p", { class: "empty" }, "No runs yet: CreateRun through the gateway."));
    panel.append(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "created"), el("th", {}, "run"), el("th", {}, "state"), el("th", {}, "question"), el("th", {}, "decided by"))),
      el("tbody", {}, data.runs.map((r) => el("tr", { class: "clickable", "data-run-id": r.run_id, onclick: () => navigate(`/runs/${r.run_id}`) },
        el("td", {}, r.create_time ? new Date(r.create_time).toLocaleTimeString() : ""),
        el("td", { class: "mono" }, r.run_id),
        el("td", {}, el("span", { class: `pill ${r.state}` }, r.state)),
        el("td", {}, r.question),
        el("td", {}, r.decided_by || ""))))));
  };
  renderCurrent = null;
  await draw();
}

const STATE_POS = {
  IDLE: [100, 110], PROCESSING: [320, 110], WAITING_FOR_REVIEW: [550, 34],
  COMPLETED: [790, 110], FAILED: [790, 200], CANCELLED: [550, 246],
};
function stateMachineSvg(machine, passed, taken, current) {
  const g = svg("svg", { viewBox: "0 0 900 280" });
  g.append(svg("defs", {}, svg("marker", { id: "sm-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#9aa5b4" }))));
  const W = 180, H = 38;
  for (const [from, targets] of Object.entries(machine)) {
    for (const to of targets) {
      const [x1, y1] = STATE_POS[from], [x2, y2] = STATE_POS[to];
      const sx = x1 + (x2 > x1 ? W / 2 : x2 < x1 ? -W / 2 : 0), ex = x2 - (x2 > x1 ? W / 2 : x2 < x1 ? -W / 2 : 0);
      const sy = x2 === x1 ? y1 + (y2 > y1 ? H / 2 : -H / 2) : y1, ey = x2 === x1 ? y2 - (y2 > y1 ? H / 2 : -H / 2) : y2;
      g.append(svg("g", { class: `transition${taken.has(from + ">" + to) ? " taken" : ""}`, "data-from": from, "data-to": to },
        svg("path", { d: `M ${sx} ${sy} C ${(sx + ex) / 2} ${sy}, ${(sx + ex) / 2} ${ey}, ${ex} ${ey}`, "marker-end": "url(#sm-arrow)" })));
    }
  }
  for (const [state, [x, y]] of Object.entries(STATE_POS)) {
    const classes = ["state", state, passed.has(state) ? "passed" : "", state === current ? "current" : ""].join(" ");
    g.append(svg("g", { class: classes, "data-state": state, transform: `translate(${x - W / 2},${y - H / 2})` },
      svg("rect", { width: W, height: H, rx: 19 }),
      svg("text", { x: W / 2, y: 24, "text-anchor": "middle" }, state)));
  }
  return g;
}

async function renderRun(runId) {
  renderCurrent = null;
  const panel = el("div", { id: "run" }, el("div", { class: "panel" }, "Loading run…"));
  view.replaceChildren(panel);
  let data;
  try {
    data = await getJSON(`/api/runs/${encodeURIComponent(runId)}`);
  } catch (error) {
    panel.replaceChildren(el("div", { class: "panel" }, el("h2", {}, "Run ", el("span", { class: "mono" }, runId)), el("p", {}, error.message)));
    return;
  }
  let run = data.run;
  const passed = new Set(["IDLE"]);
  const taken = new Set();
  const events = [];
  const steps = [];
  let current = run.state;
  const statesBox = el("div", { id: "run-states" });
  const stepsList = el("ul", { class: "steps", id: "run-steps" });
  const eventList = el("ul", { id: "run-events" });
  const stateBadge = el("span", { class: `pill ${run.state}`, id: "run-state" }, run.state);
  const streamState = el("span", { class: "muted stream-state", id: "run-stream" }, "connecting to WatchRun…");
  const redraw = () => {
    statesBox.replaceChildren(stateMachineSvg(data.state_machine, passed, taken, current));
    stepsList.replaceChildren(...(steps.length ? steps.map((s) => el("li", { class: s.compensated ? "compensated" : s.stopped ? "stopped" : s.undone ? "undone" : "", "data-step": s.name },
        el("strong", {}, s.name), " ", el("span", { class: "muted" }, s.summary + (s.undone ? " · later compensated" : ""))))
      : [el("p", { class: "muted" }, "No saga step finished yet.")]));
    stateBadge.className = `pill ${current}`;
    stateBadge.textContent = current;
  };
  const details = el("div", { class: "kv", id: "run-details" });
  const drawDetails = () => details.replaceChildren(
    el("div", {}, "question"), el("div", {}, run.question),
    el("div", {}, "answer"), el("div", {}, run.answer || "–"),
    el("div", {}, "decided by"), el("div", {}, run.decided_by || "–"),
    el("div", {}, "reason"), el("div", {}, run.status_reason || "–"),
    el("div", {}, "creator"), el("div", {}, run.creator || "–"));
  drawDetails();
  panel.replaceChildren(
    el("div", { class: "panel" },
      el("div", { class: "trace-head" }, el("h2", {}, "Run"), el("span", { class: "mono" }, run.run_id), stateBadge),
      details),
    el("div", { class: "grid2" },
      el("div", { class: "panel" }, el("h2", {}, "State machine", el("small", {}, "states this run passed, highlighted")), statesBox),
      el("div", { class: "panel" }, el("h2", {}, "Saga steps", el("small", {}, "forward steps done, then each compensation the saga ran")), stepsList)),
    el("div", { class: "panel" }, el("h2", {}, "Events", el("small", {}, "live through WatchRun"), " ", streamState), eventList));
  redraw();
  if (pageSource) pageSource.close();
  const openedAt = Date.now();  // events replayed on connect are history; later ones are news
  pageSource = new EventSource(`/api/runs/${encodeURIComponent(runId)}/events`);
  pageSource.addEventListener("open", () => (streamState.textContent = "watching"));
  pageSource.addEventListener("run-event", (message) => {
    const event = JSON.parse(message.data);
    events.push(event);
    if (event.from_state && event.to_state) {
      passed.add(event.from_state);
      passed.add(event.to_state);
      taken.add(event.from_state + ">" + event.to_state);
      current = event.to_state;
      // A new state brings a new answer or reason: read the run again (through the gateway).
      getJSON(`/api/runs/${encodeURIComponent(runId)}`).then((fresh) => { run = fresh.run; drawDetails(); }).catch(() => {});
    }
    if (event.type === "run.step_completed") {
      const [name, ...rest] = (event.cause || "").split(": ");
      steps.push({ name, summary: rest.join(": ") });
    }
    if (event.type === "run.step_compensated") {
      // One event per compensation the saga ran (newest step first), committed with the saga log.
      const [name] = (event.cause || "").split(": ");
      const step = steps.find((s) => s.name === name && !s.compensated);
      if (step) step.undone = true;
      steps.push({ name, summary: "compensated (undone)", compensated: true });
    }
    if (event.to_state === "FAILED" || event.to_state === "CANCELLED") {
      steps.push({ name: `run ${event.to_state}`, summary: event.cause || "no cause given", stopped: true });
    }
    const item = el("li", { class: Date.now() - openedAt > 1500 ? "fresh" : "", "data-sequence": event.sequence, "data-type": event.type },
      el("span", { class: "mono muted" }, `#${event.sequence} `),
      el("strong", {}, event.type), " ",
      event.to_state ? el("span", {}, `${event.from_state || "∅"} → ${event.to_state} `) : "",
      el("span", { class: "muted" }, event.cause || ""));
    eventList.append(item);
    redraw();
  });
  pageSource.addEventListener("end", () => {
    streamState.textContent = "run finished: stream closed";
    pageSource.close();
  });
  pageSource.addEventListener("failure", (message) => {
    streamState.textContent = `WatchRun failed: ${JSON.parse(message.data).error}`;
    pageSource.close();
  });
}

// ---------- router ----------
function route() {
  if (pageSource) { pageSource.close(); pageSource = null; }
  const path = location.pathname.replace(/\/+$/, "") || "/";
  const page = path.startsWith("/traces") ? "traces" : path.startsWith("/runs") ? "runs" : "topology";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  let match;
  if ((match = path.match(/^\/traces\/([^/]+)$/))) return renderTrace(match[1].toLowerCase());
  if (path === "/traces") return renderTraces();
  if ((match = path.match(/^\/runs\/([^/]+)$/))) return renderRun(decodeURIComponent(match[1]));
  if (path === "/runs") return renderRuns();
  return renderTopology();
}
startLive();
route();
