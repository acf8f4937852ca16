// meshd's /ui: plain JavaScript over the debug endpoints. Every value shown comes from
// meshd or a proxy, so text is only ever set as text (never parsed as HTML).
"use strict";

const view = document.getElementById("view");
let refresh = null; // the current view's periodic reload
let previousCounts = null; // the last /debug/graph reading, for rates

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

async function get(path) {
  const r = await fetch(path);
  const body = await r.text();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${body}`);
  return JSON.parse(body);
}

function show(...kids) {
  view.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined));
}

function failure(e) {
  return el("div", { class: "card bad" }, String(e.message || e));
}

const TYPE_NAMES = {
  Cluster: "CDS",
  Listener: "LDS",
  RouteConfiguration: "RDS",
  ClusterLoadAssignment: "EDS",
  Secret: "SDS",
};

function shortType(url) {
  const last = url.split(".").pop();
  return TYPE_NAMES[last] || last;
}

// One type's state on one stream: a NACK of what was last sent, a response not yet
// acknowledged, in sync, or nothing sent.
function syncState(t) {
  if (t.last_nack && t.last_nack.nonce === t.sent_nonce) return ["NACK", "bad"];
  if (t.sent_nonce && t.sent_nonce !== t.acked_nonce) return ["awaiting ACK", "warn"];
  if (t.sent_nonce) return ["synced", "ok"];
  return ["not sent", "muted"];
}

function nackBoxes(p) {
  return Object.entries(p.types || {})
    .filter(([, t]) => t.last_nack)
    .map(([url, t]) => {
      const current = t.last_nack.nonce === t.sent_nonce;
      return el(
        "div",
        { class: "nack", "data-nack": shortType(url) },
        el("b", {}, `${shortType(url)} NACK`),
        ` of version ${t.last_nack.version} (${t.nacks} in all${current ? "" : "; a later version was accepted"}): `,
        el("span", { class: "mono" }, t.last_nack.error),
      );
    });
}

// ---- Proxies ------------------------------------------------------------------------

async function proxiesView() {
  const sync = await get("/debug/syncz");
  document.getElementById("summary").textContent = `${sync.length} connected`;
  if (sync.length === 0) {
    return [el("h2", {}, "Connected proxies"), el("p", { class: "muted" }, "No proxy is connected.")];
  }
  const types = [...new Set(sync.flatMap((p) => Object.keys(p.types || {})))].sort();
  const rows = sync.map((p) => {
    const cells = types.map((url) => {
      const t = (p.types || {})[url];
      if (!t) return el("td", { class: "muted" }, "—");
      const [text, cls] = syncState(t);
      return el("td", {}, el("span", { class: `pill ${cls}`, title: `sent ${t.sent_version || "-"}, acked ${t.acked_version || "-"}` }, text));
    });
    const nacks = Object.values(p.types || {}).reduce((n, t) => n + (t.nacks || 0), 0);
    const boxes = nackBoxes(p);
    return [
      el(
        "tr",
        { "data-proxy": p.proxy },
        el("td", {}, el("a", { href: `#proxy/${encodeURIComponent(p.proxy)}` }, p.proxy)),
        el("td", {}, p.proxy_type),
        el("td", {}, p.istio_version ? `istio-proxy ${p.istio_version}` : "Envoy"),
        el("td", {}, p.delta ? "Delta" : "SotW"),
        cells,
        el("td", { class: nacks ? "bad" : "muted" }, String(nacks)),
      ),
      boxes.length ? el("tr", {}, el("td", { colspan: String(5 + types.length) }, boxes)) : null,
    ];
  });
  return [
    el("h2", {}, "Connected proxies"),
    el(
      "table",
      { id: "proxies" },
      el("tr", {}, el("th", {}, "proxy"), el("th", {}, "kind"), el("th", {}, "data plane"), el("th", {}, "xDS"),
        types.map((u) => el("th", {}, shortType(u))), el("th", {}, "NACKs")),
      rows,
    ),
  ];
}

// ---- One proxy ----------------------------------------------------------------------

function leaf(v) {
  if (typeof v === "string") return el("span", { class: "s" }, JSON.stringify(v));
  return el("span", { class: "n" }, JSON.stringify(v));
}

// A JSON value as a tree; children are built when opened, so a large listener costs
// nothing until someone looks inside it.
function tree(label, v, open) {
  if (v === null || typeof v !== "object") {
    return el("div", {}, el("span", { class: "k" }, label), ": ", leaf(v));
  }
  const entries = Array.isArray(v) ? v.map((x, i) => [x && x.name ? `[${i}] ${x.name}` : `[${i}]`, x]) : Object.entries(v).filter(([k]) => k !== "@type");
  const size = Array.isArray(v) ? `[${v.length}]` : `{${entries.length}}`;
  const d = el("details", {}, el("summary", {}, el("span", { class: "k" }, label), " ", el("span", { class: "muted" }, size)));
  let built = false;
  const build = () => {
    if (built) return;
    built = true;
    for (const [k, x] of entries) d.append(tree(k, x, false));
  };
  d.addEventListener("toggle", build);
  if (open) {
    d.open = true;
    build();
  }
  return d;
}

function pick(o, ...keys) {
  for (const k of keys) if (o && o[k] !== undefined) return o[k];
  return undefined;
}

// Envoy's config_dump sections as lists of resources by name.
function sections(dump) {
  const out = [];
  for (const c of dump.configs || []) {
    const type = (c["@type"] || "").split(".").pop();
    let items = [];
    if (type === "ClustersConfigDump") items = (pick(c, "dynamicActiveClusters", "dynamic_active_clusters") || []).map((x) => x.cluster);
    else if (type === "ListenersConfigDump") items = (pick(c, "dynamicListeners", "dynamic_listeners") || []).map((x) => pick(pick(x, "activeState", "active_state") || {}, "listener"));
    else if (type === "RoutesConfigDump") items = (pick(c, "dynamicRouteConfigs", "dynamic_route_configs") || []).map((x) => pick(x, "routeConfig", "route_config"));
    else if (type === "EndpointsConfigDump") items = (pick(c, "dynamicEndpointConfigs", "dynamic_endpoint_configs") || []).map((x) => pick(x, "endpointConfig", "endpoint_config"));
    else continue;
    out.push([type.replace("ConfigDump", ""), items.filter(Boolean)]);
  }
  return out;
}

function diffView(d) {
  if (!d.changes || d.changes.length === 0) {
    return el("p", { class: "muted" }, d.note || `The last change (generation ${d.from} → ${d.to}) changed nothing this proxy is given.`);
  }
  return el(
    "div",
    {},
    el("p", { class: "muted" }, `Generation ${d.from} → ${d.to}: ${d.changes.length} resource(s) changed.`),
    d.changes.map((c) =>
      el(
        "div",
        { class: "card", "data-change": `${c.type}/${c.name}` },
        el("span", { class: c.change }, `${c.change} `),
        el("b", {}, c.type), " ", el("span", { class: "mono" }, c.name),
        c.fields.length
          ? el("table", {}, c.fields.map((f) =>
            el("tr", {}, el("td", { class: "mono" }, f.path),
              el("td", { class: "removed mono" }, f.before === undefined ? "(absent)" : JSON.stringify(f.before)),
              el("td", { class: "added mono" }, f.after === undefined ? "(absent)" : JSON.stringify(f.after)))))
          : null,
        c.more ? el("p", { class: "muted" }, `and ${c.more} more field(s)`) : null,
      )),
  );
}

async function proxyView(id) {
  const [sync, diff, dump] = await Promise.all([
    get("/debug/syncz"),
    get(`/debug/config_diff?proxyID=${encodeURIComponent(id)}`).catch((e) => ({ error: e })),
    get(`/debug/config_dump?proxyID=${encodeURIComponent(id)}`).catch((e) => ({ error: e })),
  ]);
  const p = sync.find((x) => x.proxy === id);
  if (!p) return [el("h2", {}, id), el("p", { class: "bad" }, "This proxy is not connected.")];
  const syncRows = Object.entries(p.types || {}).map(([url, t]) => {
    const [text, cls] = syncState(t);
    return el("tr", {},
      el("td", {}, shortType(url)),
      el("td", {}, t.wildcard ? "everything" : `${t.subscribed} name(s)`),
      el("td", {}, String(t.resources)),
      el("td", { class: "mono" }, t.sent_version || "—"),
      el("td", { class: "mono" }, t.acked_version || "—"),
      el("td", {}, el("span", { class: `pill ${cls}` }, text)),
      el("td", {}, `${t.requests} / ${t.acks} / ${t.nacks}`));
  });
  return [
    el("h2", {}, `Proxy ${id}`),
    el("p", { class: "muted" }, `${p.proxy_type}, ${p.istio_version ? "istio-proxy " + p.istio_version : "Envoy"}, ${p.delta ? "Delta" : "SotW"} xDS from ${p.peer}`),
    el("table", {},
      el("tr", {}, ["type", "subscription", "resources", "sent", "acknowledged", "state", "requests / ACKs / NACKs"].map((h) => el("th", {}, h))),
      syncRows),
    nackBoxes(p),
    el("h2", {}, "What the last change changed"),
    diff.error ? failure(diff.error) : diffView(diff),
    el("h2", {}, "Configuration"),
    dump.error ? failure(dump.error) : el("div", { class: "tree card" }, sections(dump).map(([name, items]) => {
      const d = el("details", {}, el("summary", {}, el("b", {}, name), ` (${items.length})`));
      let built = false;
      d.addEventListener("toggle", () => {
        if (built) return;
        built = true;
        for (const r of items) d.append(tree(r.name || r.clusterName || r.cluster_name || "(unnamed)", r, false));
      });
      return d;
    })),
  ];
}

// ---- Service graph ------------------------------------------------------------------

function shortHost(h) {
  const m = /^([^.]+)\.([^.]+)\.svc\./.exec(h);
  return m ? `${m[1]}.${m[2]}` : h;
}

function workloadName(name, ns) {
  return name && name !== "unknown" ? `${name}.${ns}` : "unknown (outside the mesh)";
}

// Requests per (source workload, service, destination workload), each reporter's count
// apart: a request seen by both sides is counted once (the larger count).
function edges(requests) {
  const byReporter = new Map();
  for (const r of requests) {
    const key = [workloadName(r.source_workload, r.source_namespace), r.destination_service, workloadName(r.destination_workload, r.destination_namespace)].join("|");
    const rk = `${key}|${r.reporter}`;
    const e = byReporter.get(rk) || { key, total: 0, errors: 0 };
    e.total += r.requests;
    if (/^5/.test(r.response_code)) e.errors += r.requests;
    byReporter.set(rk, e);
  }
  const out = new Map();
  for (const e of byReporter.values()) {
    const cur = out.get(e.key);
    if (!cur || e.total > cur.total) out.set(e.key, e);
  }
  return out;
}

function rate(key, total) {
  if (!previousCounts || !previousCounts.counts.has(key)) return null;
  const dt = (Date.now() - previousCounts.at) / 1000;
  if (dt <= 0) return null;
  return Math.max(0, total - previousCounts.counts.get(key)) / dt;
}

function graphSvg(edgeMap) {
  const sources = new Set();
  const services = new Set();
  const dests = new Set();
  for (const key of edgeMap.keys()) {
    const [s, svc, d] = key.split("|");
    sources.add(s);
    services.add(svc);
    dests.add(d);
  }
  const cols = [[...sources].sort(), [...services].sort(), [...dests].sort()];
  const rowH = 34;
  const colX = [10, 330, 650];
  const w = 260;
  const height = Math.max(...cols.map((c) => c.length)) * rowH + 20;
  const pos = new Map();
  const nodes = [];
  cols.forEach((col, ci) => col.forEach((name, i) => {
    const y = 10 + i * rowH;
    pos.set(`${ci}:${name}`, y + 12);
    nodes.push(svg("g", { class: `node ${ci === 1 ? "service" : ""}`, "data-node": name },
      svg("rect", { x: colX[ci], y, width: w, height: 24, rx: 4 }),
      svg("text", { x: colX[ci] + 8, y: y + 16 }, ci === 1 ? shortHost(name) : name)));
  }));
  const lines = [];
  const line = (x1, y1, x2, y2, cls, label) => {
    const mx = (x1 + x2) / 2;
    lines.push(svg("path", { class: `edge ${cls}`, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "stroke-width": 2 }));
    if (label) lines.push(svg("text", { x: mx - 20, y: (y1 + y2) / 2 - 3 }, label));
  };
  // Source → service and service → workload, each summed over the other end.
  const sum = (f) => {
    const m = new Map();
    for (const [key, e] of edgeMap) {
      const k = f(key.split("|"));
      const cur = m.get(k) || { total: 0, errors: 0, rate: 0, known: false };
      cur.total += e.total;
      cur.errors += e.errors;
      const r = rate(key, e.total);
      if (r !== null) {
        cur.rate += r;
        cur.known = true;
      }
      m.set(k, cur);
    }
    return m;
  };
  const label = (e) => `${e.known ? e.rate.toFixed(1) + " rps" : e.total + " req"}${e.errors ? `, ${Math.round((100 * e.errors) / e.total)}% 5xx` : ""}`;
  for (const [k, e] of sum(([s, svc]) => `${s}|${svc}`)) {
    const [s, svc] = k.split("|");
    line(colX[0] + w, pos.get(`0:${s}`), colX[1], pos.get(`1:${svc}`), e.errors ? "errors" : e.known && e.rate > 0 ? "live" : "", label(e));
  }
  for (const [k, e] of sum(([, svc, d]) => `${svc}|${d}`)) {
    const [svc, d] = k.split("|");
    line(colX[1] + w, pos.get(`1:${svc}`), colX[2], pos.get(`2:${d}`), e.errors ? "errors" : e.known && e.rate > 0 ? "live" : "", label(e));
  }
  return svg("svg", { width: colX[2] + w + 10, height, id: "graph" }, lines, nodes);
}

function matchText(m) {
  if (!m || (Array.isArray(m) && m.length === 0)) return "every request";
  return JSON.stringify(m);
}

function splitsTable(splits, edgeMap) {
  // Observed: each destination workload's share of the requests to a service.
  const observed = new Map();
  for (const [key, e] of edgeMap) {
    const [, svc, d] = key.split("|");
    const m = observed.get(svc) || new Map();
    m.set(d, (m.get(d) || 0) + e.total);
    observed.set(svc, m);
  }
  return el("table", { id: "splits" },
    el("tr", {}, ["VirtualService", "for", "rule", "match", "configured split", "observed (all requests so far)"].map((h) => el("th", {}, h))),
    splits.map((s) => {
      const hosts = [...new Set(s.destinations.map((d) => d.host))];
      const obs = hosts.map((h) => {
        const m = observed.get(h);
        if (!m) return null;
        const total = [...m.values()].reduce((a, b) => a + b, 0);
        return [...m].map(([wl, n]) => el("div", {}, el("span", { class: "bar observed", style: `width:${Math.round((100 * n) / total)}px` }), ` ${wl} ${Math.round((100 * n) / total)}% (${n})`));
      });
      return el("tr", { "data-split": s.virtualService },
        el("td", {}, s.virtualService),
        el("td", {}, `${s.hosts.map(shortHost).join(", ")} (${s.gateways.join(", ")})`),
        el("td", {}, `${s.protocol} ${s.rule}`),
        el("td", { class: "mono" }, matchText(s.match)),
        el("td", {}, s.destinations.map((d) => el("div", { "data-weight": String(d.weight) },
          el("span", { class: "bar", style: `width:${d.weight}px` }),
          ` ${d.weight}% → ${shortHost(d.host)}${d.subset ? " subset " + d.subset : ""}${d.port ? ":" + d.port : ""}`))),
        el("td", {}, obs));
    }));
}

async function graphView() {
  const g = await get("/debug/graph");
  const edgeMap = edges(g.requests);
  const out = [
    el("h2", {}, "Requests between workloads"),
    edgeMap.size
      ? el("div", { class: "card" }, graphSvg(edgeMap))
      : el("p", { class: "muted" }, "No request counted yet (the mesh metrics count requests through sidecars and gateways)."),
    el("h2", {}, "How each VirtualService splits its traffic"),
    g.splits.length ? splitsTable(g.splits, edgeMap) : el("p", { class: "muted" }, "No VirtualService routes to a destination."),
  ];
  previousCounts = { at: Date.now(), counts: new Map([...edgeMap].map(([k, e]) => [k, e.total])) };
  document.getElementById("summary").textContent = `generation ${g.generation} · ${g.services.length} services`;
  return out;
}

// ---- Explain ------------------------------------------------------------------------

async function explainView() {
  const sync = await get("/debug/syncz");
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const field = (name, value, size) => el("label", {}, `${name} `, el("input", { name, value: value || "", size: String(size || 12) }));
  const result = el("div", { id: "explain-result" });
  const form = el("form", { class: "explain card" },
    el("label", {}, "proxy ", el("select", { name: "proxyID" }, sync.map((p) => el("option", { value: p.proxy, selected: p.proxy === params.get("proxyID") }, p.proxy)))),
    field("address", params.get("address"), 14),
    field("port", params.get("port") || "9080", 6),
    field("host", params.get("host"), 24),
    field("path", params.get("path") || "/", 16),
    field("method", params.get("method") || "GET", 6),
    field("header", params.get("header"), 24),
    el("button", { type: "submit" }, "Explain"));
  const run = async () => {
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.append(k, v);
    result.replaceChildren(el("p", { class: "muted" }, "…"));
    try {
      const r = await get(`/debug/explain?${q}`);
      result.replaceChildren(el("pre", { class: "card" }, r.text || ""), el("div", { class: "tree card" }, tree("details", r, false)));
    } catch (e) {
      result.replaceChildren(failure(e));
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    run();
  });
  if (params.get("proxyID") && params.get("host")) run();
  return [el("h2", {}, "Where would this request go?"), form, result];
}

// ---- Diagnostics --------------------------------------------------------------------

async function diagnosticsView() {
  const c = await get("/debug/configz");
  const counts = Object.entries(c.objects || {}).map(([k, v]) => `${v.length} ${k}`).join(", ");
  const diags = c.diagnostics || [];
  return [
    el("h2", {}, `Configuration in force (generation ${c.generation})`),
    el("p", {}, counts || "No object."),
    el("h2", {}, `Diagnostics: ${c.errors} error(s), ${diags.length - c.errors} warning(s)`),
    diags.length
      ? el("table", { id: "diagnostics" },
        el("tr", {}, ["", "object", "where", "field", "reason", "hint"].map((h) => el("th", {}, h))),
        diags.map((d) => el("tr", {},
          el("td", { class: d.severity === "error" ? "bad" : "warn" }, d.severity + (d.code ? ` ${d.code}` : "")),
          el("td", {}, d.object || ""),
          el("td", { class: "mono" }, d.origin && d.origin.file ? `${d.origin.file}:${d.origin.line || ""}` : (d.origin && d.origin.resource_version ? `resourceVersion ${d.origin.resource_version}` : "")),
          el("td", { class: "mono" }, d.field || ""),
          el("td", {}, d.reason),
          el("td", { class: "muted" }, d.hint || ""))))
      : el("p", { class: "ok" }, "Nothing to report."),
  ];
}

// ---- Navigation ---------------------------------------------------------------------

// Each render (and each periodic reload) carries the number of the navigation it
// belongs to: an answer that arrives after the person moved on is dropped, and a reload
// does not start while the previous one is still out.
let navigation = 0;

async function render() {
  clearInterval(refresh);
  const mine = ++navigation;
  let hash = "proxies";
  try {
    hash = decodeURIComponent(location.hash.slice(1)) || "proxies";
  } catch (e) {
    // A malformed fragment: the proxies view.
  }
  const [name] = hash.split(/[/?]/);
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#${name}` || (name === "proxy" && a.getAttribute("href") === "#proxies"));
  }
  const views = {
    proxies: [proxiesView, 3000],
    proxy: [() => proxyView(hash.slice("proxy/".length)), 0],
    graph: [graphView, 2000],
    explain: [explainView, 0],
    diagnostics: [diagnosticsView, 0],
  };
  const [fn, every] = views[name] || views.proxies;
  let busy = false;
  const load = async () => {
    if (busy) return;
    busy = true;
    let out;
    try {
      out = await fn();
    } catch (e) {
      out = [failure(e)];
    }
    busy = false;
    if (mine === navigation) show(out);
  };
  await load();
  if (every && mine === navigation) refresh = setInterval(load, every);
}

window.addEventListener("hashchange", render);
render();
