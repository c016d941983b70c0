// The sextant console: a page over the admin API. Every value from the registry is put into
// the page as text (textContent), never as markup. Writes go through the same routes, rights,
// limits and audit as any API client.
"use strict";

const state = {
  token: sessionStorage.getItem("sextant.token") || "",
  revision: null,
  dirty: false,
  rendering: false,
  // A forced render asked for while one was under way.
  again: false,
  // The plugin whose delete button was clicked once (the next click deletes it).
  armed: null,
  lastRender: 0,
};

// ---- DOM -------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const badge = (text, kind) => h("span", { class: "badge " + (kind || "") }, text);
const mono = (text) => h("span", { class: "mono" }, text);
const short = (hex) => (hex || "").slice(0, 12);
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "—");
const card = (label, value, small) =>
  h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" + (small ? " small" : "") }, value));

function table(headers, rows, empty) {
  if (!rows.length) return h("div", { class: "panel" }, h("div", { class: "empty" }, empty || "Nothing here yet."));
  return h(
    "div",
    { class: "panel" },
    h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
  );
}

function banner(text) {
  const b = document.getElementById("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// ---- API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body, headers) {
  const init = { method, headers: Object.assign({}, headers || {}) };
  if (state.token) init.headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) {
    if (body instanceof ArrayBuffer) {
      init.body = body;
      init.headers["Content-Type"] = "application/wasm";
    } else if (typeof body === "string") {
      init.body = body;
      init.headers["Content-Type"] = "text/plain; charset=utf-8";
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = text;
  }
  if (!response.ok) {
    const code = (data && data.error) || String(response.status);
    const message = (data && data.message) || text || response.statusText;
    throw new ApiError(response.status, code, message);
  }
  return { data, headers: response.headers };
}

const get = async (path) => (await api("GET", path)).data;

function describe(e) {
  if (e instanceof ApiError) return `${e.code}: ${e.message}`;
  return String(e && e.message ? e.message : e);
}

// A write from a form: the answer's error beside the field, nothing else changed.
async function write(errorAt, action) {
  errorAt.textContent = "";
  try {
    await action();
    state.dirty = false;
    await render(true);
  } catch (e) {
    errorAt.textContent = describe(e);
  }
}

// ---- The registry as records -------------------------------------------------------------

const keyOf = (s) => `${s.namespace}/${s.group}/${s.service}`;
const configKeyOf = (k) => `${k.namespace}/${k.group}/${k.data_id}`;

async function records() {
  const answer = await get("/v1/records");
  const out = { revision: answer.revision, instances: [], services: [], configs: [], plugins: [] };
  for (const r of answer.records) {
    if (r.kind === "instance") out.instances.push(r.value);
    else if (r.kind === "service") out.services.push(r.value);
    else if (r.kind === "config") out.configs.push(r.value);
    else if (r.kind === "plugin") out.plugins.push(r.value);
  }
  return out;
}

const isGateway = (i) => (i.metadata || {})["sextant.role"] === "gateway";

// What the gateways report about SERVICE's endpoints: id -> [{gateway, why, until}].
function verdicts(gateways, service) {
  const out = {};
  for (const g of gateways) {
    const value = (g.metadata || {})["sextant.health." + service];
    if (!value) continue;
    for (const entry of value.split("; ")) {
      const [why, id, until] = entry.split(" ");
      if (!why || !id || until === undefined) continue; // cut to fit: ignored
      (out[id] = out[id] || []).push({ gateway: `${g.id} (${g.zone || "no zone"})`, why, until: until === "-" ? null : Number(until) });
    }
  }
  return out;
}

function verdictBadge(v) {
  const kind = v.why === "down" ? "bad" : "warn";
  const until = v.until ? ` until ${new Date(v.until).toLocaleTimeString()}` : "";
  return h("div", {}, badge(v.why.replace("_", " "), kind), h("span", { class: "muted" }, `${v.gateway}${until}`));
}

// ---- A gateway's live traffic (its /metrics, read through this server) ---------------------

// Prometheus text -> [{name, labels, value}].
function parseMetrics(text) {
  const out = [];
  for (const line of String(text).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

const gatewayPath = (g) => `/v1/gateways/${[g.service.namespace, g.service.group, g.service.service, g.id].map(encodeURIComponent).join("/")}/metrics`;
const gatewayKey = (g) => `${keyOf(g.service)}/${g.id}`;

// The last two reads of each gateway's metrics: rates and quantiles are over the time between.
const samples = new Map();

async function readGateway(g) {
  const key = gatewayKey(g);
  const text = await get(gatewayPath(g));
  const now = { at: Date.now(), series: parseMetrics(text) };
  const list = samples.get(key) || [];
  if (!list.length || now.at - list[list.length - 1].at >= 900) list.push(now);
  while (list.length > 2) list.shift();
  samples.set(key, list);
  return { now: list[list.length - 1], before: list.length > 1 ? list[0] : null };
}

// The q-quantile of a histogram's cumulative buckets [[le, count]], interpolated in its bucket.
function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const want = q * total;
  let lower = 0, below = 0;
  for (const [le, count] of buckets) {
    if (count >= want) {
      if (!Number.isFinite(le)) return lower;
      const inside = count - below;
      return inside ? lower + (le - lower) * ((want - below) / inside) : le;
    }
    lower = Number.isFinite(le) ? le : lower;
    below = count;
  }
  return lower;
}

const ERRORS = new Set(["5xx", "timeout", "connect_error", "error"]);

// Per (service, endpoint): attempts, errors and latency buckets of one read.
function endpointsOf(series) {
  const out = new Map();
  const at = (labels) => {
    const k = `${labels.service} ${labels.endpoint}`;
    if (!out.has(k)) out.set(k, { service: labels.service, endpoint: labels.endpoint, attempts: 0, errors: 0, buckets: new Map(), weight: null, inFlight: 0, breaker: 0, health: [] });
    return out.get(k);
  };
  for (const s of series) {
    const l = s.labels;
    if (l.endpoint === undefined) continue;
    if (s.name === "sextant_gateway_upstream_attempts_total") {
      const e = at(l);
      e.attempts += s.value;
      if (ERRORS.has(l.result)) e.errors += s.value;
    } else if (s.name === "sextant_gateway_upstream_duration_seconds_bucket") {
      at(l).buckets.set(l.le === "+Inf" ? Infinity : Number(l.le), s.value);
    } else if (s.name === "sextant_gateway_endpoint_weight") at(l).weight = s.value;
    else if (s.name === "sextant_gateway_endpoint_in_flight") at(l).inFlight = s.value;
    else if (s.name === "sextant_gateway_endpoint_breaker_open") at(l).breaker = s.value;
    else if (s.name === "sextant_gateway_endpoint_health" && s.value > 0) at(l).health.push(l.health);
  }
  return out;
}

// What a gateway did per endpoint between its last two reads (or since it started).
function traffic(read) {
  const now = endpointsOf(read.now.series);
  const before = read.before ? endpointsOf(read.before.series) : new Map();
  const secs = read.before ? (read.now.at - read.before.at) / 1000 : null;
  const rows = [];
  for (const [k, e] of now) {
    const b = before.get(k);
    const minus = (x, y) => Math.max(0, x - (y || 0));
    const sorted = (m) => [...m.entries()].sort((x, y) => x[0] - y[0]);
    const buckets = sorted(e.buckets).map(([le, c]) => [le, minus(c, b && b.buckets.get(le))]);
    const attempts = minus(e.attempts, b && b.attempts);
    rows.push(Object.assign({}, e, {
      window: secs,
      rps: secs ? attempts / secs : null,
      recentErrors: minus(e.errors, b && b.errors),
      recentAttempts: attempts,
      p50: quantile(buckets, 0.5),
      p99: quantile(buckets, 0.99),
    }));
  }
  return rows.sort((x, y) => (x.service + x.endpoint).localeCompare(y.service + y.endpoint));
}

const ms = (secs) => (secs === null || secs === undefined ? "—" : `${(secs * 1000).toFixed(secs < 0.01 ? 2 : 1)} ms`);

// Calls, faults and fallbacks per plugin version in one read: "kind plugin sha256" -> counts.
function versionsOf(series) {
  const out = new Map();
  const FAULTS = ["traps", "deadline_hits", "memory_hits", "contract_violations"];
  for (const s of series) {
    const m = /_plugin_(calls|traps|deadline_hits|memory_hits|contract_violations|fallbacks)_total$/.exec(s.name);
    if (!m) continue;
    const l = s.labels;
    const k = `${l.kind} ${l.plugin} ${l.sha256 || ""}`;
    if (!out.has(k)) out.set(k, { kind: l.kind, plugin: l.plugin, sha256: l.sha256 || "", calls: 0, faults: 0, fallbacks: 0 });
    const v = out.get(k);
    if (m[1] === "calls") v.calls += s.value;
    else if (m[1] === "fallbacks") v.fallbacks += s.value;
    else if (FAULTS.includes(m[1])) v.faults += s.value;
  }
  return out;
}

// ---- Pages -------------------------------------------------------------------------------

async function overview() {
  const status = await get("/status");
  const all = await records();
  const gateways = all.instances.filter(isGateway);
  const stale = status.stale_ms ? `${Math.round(status.stale_ms / 1000)} s` : "no";
  return [
    h("h1", {}, "Overview"),
    h(
      "div",
      { class: "cards" },
      card("Store", `${status.store}`),
      card("Revision", status.revision),
      card("Services", status.services),
      card("Instances", status.instances),
      card("Config entries", status.configs),
      card("Plugins", status.plugins),
      card("Leases", status.leases),
      card("Gateways", gateways.length),
      card("Store unreachable for", stale),
      card("Up for", `${Math.round(status.uptime_secs / 60)} min`),
    ),
    h("p", { class: "note" }, "Location: ", mono(String(status.location)), ` · server version ${status.version}`),
    h("h2", {}, "Gateways"),
    gatewayTable(gateways),
  ];
}

async function services() {
  const all = await records();
  const gateways = all.instances.filter(isGateway);
  const by = new Map();
  for (const i of all.instances) {
    const k = keyOf(i.service);
    if (!by.has(k)) by.set(k, []);
    by.get(k).push(i);
  }
  const specs = new Map(all.services.map((s) => [keyOf(s.service), s]));
  for (const k of specs.keys()) if (!by.has(k)) by.set(k, []);
  const rows = [...by.keys()].sort().map((k) => {
    const list = by.get(k);
    const routable = list.filter((i) => i.enabled && i.weight > 0);
    const healthy = routable.filter((i) => i.healthy);
    const reported = Object.values(verdicts(gateways, k)).length;
    const spec = specs.get(k);
    return h(
      "tr",
      {},
      h("td", {}, h("a", { href: "#/services/" + k }, mono(k))),
      h("td", {}, list.length),
      h("td", {}, `${healthy.length} / ${routable.length}`),
      h("td", {}, spec ? String(spec.protect_threshold) : "0"),
      h("td", {}, reported ? badge(`${reported} out on gateways`, "warn") : badge("none", "ok")),
    );
  });
  return [
    h("h1", {}, "Services"),
    table(["Service", "Instances", "Healthy / routable", "Protection threshold", "Gateway verdicts"], rows, "No service has instances yet."),
  ];
}

async function service(key) {
  const [ns, group, name] = key.split("/");
  const view = await get(`/v1/services/${encodeURIComponent(ns)}/${encodeURIComponent(group)}/${encodeURIComponent(name)}`);
  let gateways = [];
  let note = null;
  try {
    gateways = (await records()).instances.filter(isGateway);
  } catch (e) {
    note = h("p", { class: "note" }, "Gateway verdicts need the read right on every namespace: ", describe(e));
  }
  const seen = verdicts(gateways, key);
  const selected = new Set(view.selected);
  const rows = view.instances.map((i) => {
    const error = h("span", { class: "error" });
    const weight = h("input", { class: "weight", value: String(i.weight), "aria-label": `weight of ${i.id}`, oninput: () => (state.dirty = true) });
    const persistent = !i.ephemeral;
    const why = persistent ? null : "An ephemeral instance is written by its owner: drain it there (register with enabled=false)";
    const post = (changes) => write(error, () => api("POST", "/v1/instances", Object.assign({}, i, changes)));
    const setWeight = h("button", { class: "small ghost", disabled: !persistent, title: why, onclick: () => {
      const n = Number(weight.value);
      post({ weight: weight.value.trim() !== "" && Number.isFinite(n) ? n : weight.value });
    } }, "Set");
    const drain = h("button", { class: "small", disabled: !persistent, title: why, "data-action": i.enabled ? "drain" : "enable", "data-instance": i.id, onclick: () => post({ enabled: !i.enabled }) }, i.enabled ? "Drain" : "Enable");
    const meta = Object.entries(i.metadata || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
    return h(
      "tr",
      { "data-instance": i.id },
      h("td", {}, mono(i.id)),
      h("td", {}, mono(`${i.ip}:${i.port}`)),
      h("td", {}, i.zone || h("span", { class: "muted" }, "—")),
      h("td", {}, i.version || h("span", { class: "muted" }, "—")),
      h("td", {}, h("div", { class: "row" }, weight, setWeight)),
      h("td", {}, h("div", { class: "row" }, i.enabled ? badge("enabled", "ok") : badge("drained", "warn"), drain), error),
      h("td", {}, i.ephemeral ? badge("ephemeral", "info") : badge("persistent")),
      h("td", {}, i.healthy ? badge("healthy", "ok") : badge("unhealthy", "bad"), selected.has(i.id) ? badge("selected", "info") : null),
      h("td", {}, (seen[i.id] || []).map(verdictBadge), seen[i.id] ? null : h("span", { class: "muted" }, "in rotation")),
      h("td", {}, meta.length ? meta : h("span", { class: "muted" }, "—")),
    );
  });
  return [
    h("h1", {}, mono(key)),
    h(
      "div",
      { class: "cards" },
      card("Instances", view.instances.length),
      card("Healthy / routable", `${view.healthy} / ${view.routable}`),
      card("Protection threshold", String(view.protect_threshold)),
      card("Protection in force", view.protection_active ? badge("yes: unhealthy instances kept in", "warn") : badge("no", "ok")),
      card("Revision", view.revision),
    ),
    note,
    h("h2", {}, "Instances"),
    table(
      ["Instance", "Address", "Zone", "Version", "Weight", "Enabled", "Kind", "Registry", "As the gateways see it", "Metadata"],
      rows,
      "No instances.",
    ),
    h("h2", {}, "Zones"),
    table(["Zone", "Instances", "Healthy", "Weight (enabled)"], zoneRows(view.instances), "No instances."),
  ];
}

// Instances, healthy instances and enabled weight per zone, in zone order.
function zoneRows(instances) {
  const zones = new Map();
  for (const i of instances) {
    const z = zones.get(i.zone) || { n: 0, healthy: 0, weight: 0 };
    z.n += 1;
    if (i.healthy && i.enabled) z.healthy += 1;
    if (i.enabled) z.weight += i.weight;
    zones.set(i.zone, z);
  }
  return [...zones.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([zone, z]) =>
    h("tr", { "data-zone": zone }, h("td", {}, zone || h("span", { class: "muted" }, "no zone")), h("td", { class: "num" }, z.n), h("td", { class: "num" }, z.healthy < z.n ? badge(`${z.healthy}`, "warn") : String(z.healthy)), h("td", { class: "num" }, z.weight)),
  );
}

// Attempts per (service, zone) of one read of a gateway's metrics, with their locality.
function zonesOf(series) {
  const out = new Map();
  for (const s of series) {
    if (s.name !== "sextant_gateway_zone_attempts_total") continue;
    const k = `${s.labels.service} ${s.labels.zone}`;
    const z = out.get(k) || { service: s.labels.service, zone: s.labels.zone, locality: s.labels.locality, attempts: 0 };
    z.attempts += s.value;
    out.set(k, z);
  }
  return out;
}

function gatewayTable(gateways) {
  const rows = gateways.map((g) => {
    const m = g.metadata || {};
    const plugins = Object.entries(m).filter(([k]) => k.startsWith("sextant.plugin.")).map(([k, v]) => h("div", {}, h("span", { class: "chip" }, `${k.slice(15)}: ${v}`)));
    const rollouts = Object.keys(m).filter((k) => k.startsWith("sextant.rollout.")).map((k) => badge(k.slice(16), "info"));
    const health = Object.entries(m).filter(([k]) => k.startsWith("sextant.health.")).map(([k, v]) => h("div", {}, mono(k.slice(15)), " ", badge(`${v.split("; ").length} out`, "warn")));
    const config = m["sextant.gateway.config"];
    return h(
      "tr",
      {},
      h("td", {}, h("a", { href: "#/gateways/" + gatewayKey(g) }, mono(gatewayKey(g)))),
      h("td", {}, mono(`${g.ip}:${g.port}`)),
      h("td", {}, g.zone || "—"),
      h("td", {}, g.version || "—"),
      h("td", {}, config ? badge(config, config.startsWith("refused") ? "bad" : "ok") : h("span", { class: "muted" }, "file")),
      h("td", {}, plugins.length ? plugins : h("span", { class: "muted" }, "built-ins")),
      h("td", {}, rollouts.length ? rollouts : "—"),
      h("td", {}, health.length ? health : badge("every endpoint in", "ok")),
    );
  });
  return table(["Gateway", "Address", "Zone", "Version", "Config", "Plugins", "Rollouts", "Own verdicts"], rows, "No gateway is registered.");
}

async function gateways() {
  const all = await records();
  return [
    h("h1", {}, "Gateways"),
    gatewayTable(all.instances.filter(isGateway)),
    h("p", { class: "note" }, "Open a gateway for its live traffic per endpoint."),
  ];
}

async function gatewayPage(key) {
  const all = await records();
  const g = all.instances.find((i) => isGateway(i) && gatewayKey(i) === key);
  if (!g) return [h("h1", {}, mono(key)), h("p", { class: "note" }, "No gateway is registered as this (it left or was never here).")];
  const ids = new Map(all.instances.map((i) => [`${keyOf(i.service)} ${i.ip}:${i.port}`, i.id]));
  let read;
  try {
    read = await readGateway(g);
  } catch (e) {
    return [h("h1", {}, mono(key)), gatewayTable([g]), h("p", { class: "note" }, "Live traffic unavailable: ", describe(e))];
  }
  const rows = traffic(read).map((e) => {
    const id = ids.get(`${e.service} ${e.endpoint}`);
    const health = e.health.filter((x) => x !== "up");
    return h(
      "tr",
      { "data-endpoint": e.endpoint },
      h("td", {}, mono(e.service)),
      h("td", {}, id ? mono(id) : h("span", { class: "muted" }, "—")),
      h("td", {}, mono(e.endpoint)),
      h("td", { class: "num" }, e.rps === null ? "…" : e.rps.toFixed(1)),
      h("td", { class: "num" }, ms(e.p50)),
      h("td", { class: "num" }, ms(e.p99)),
      h("td", { class: "num" }, e.recentErrors ? badge(String(e.recentErrors), "bad") : "0"),
      h("td", { class: "num" }, e.attempts),
      h("td", { class: "num" }, e.weight === null ? "—" : e.weight),
      h("td", { class: "num" }, e.inFlight),
      h("td", {}, health.length ? health.map((x) => badge(x, x === "down" ? "bad" : "warn")) : badge("up", "ok"), e.breaker ? badge("breaker open", "bad") : null),
    );
  });
  const versions = [...versionsOf(read.now.series).values()].map((v) =>
    h("tr", {}, h("td", {}, v.kind), h("td", {}, mono(v.plugin)), h("td", {}, mono(short(v.sha256) || "built-in")), h("td", { class: "num" }, v.calls), h("td", { class: "num" }, v.faults ? badge(String(v.faults), "bad") : "0"), h("td", { class: "num" }, v.fallbacks ? badge(String(v.fallbacks), "warn") : "0")),
  );
  const window = read.before ? `the last ${((read.now.at - read.before.at) / 1000).toFixed(1)} s` : "since it started (rates from the next read)";
  return [
    h("h1", {}, mono(key)),
    gatewayTable([g]),
    h("h2", {}, "Traffic per endpoint"),
    h("p", { class: "note" }, `Rates, latency quantiles and errors over ${window}; attempts since it started. Read from the gateway every 2 s.`),
    table(["Service", "Instance", "Endpoint", "Attempts/s", "p50", "p99", "Errors", "Attempts", "Weight", "In flight", "Health"], rows, "No traffic yet."),
    h("h2", {}, "Traffic per zone"),
    table(["Service", "Zone", "Locality", "Attempts/s", "Attempts"], zoneTraffic(read), "No traffic yet."),
    h("h2", {}, "Plugin versions on this gateway"),
    table(["Kind", "Plugin", "Version", "Calls", "Faults", "Fallbacks"], versions, "No plugin call yet."),
  ];
}

// The attempts each zone took from this gateway, and their rate between the last two reads.
function zoneTraffic(read) {
  const before = read.before ? zonesOf(read.before.series) : new Map();
  const secs = read.before ? (read.now.at - read.before.at) / 1000 : null;
  return [...zonesOf(read.now.series).entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([k, z]) => {
    const b = before.get(k);
    const recent = Math.max(0, z.attempts - (b ? b.attempts : 0));
    return h(
      "tr",
      { "data-zone": z.zone },
      h("td", {}, mono(z.service)),
      h("td", {}, z.zone || h("span", { class: "muted" }, "no zone")),
      h("td", {}, badge(z.locality, z.locality === "remote" ? "warn" : z.locality === "local" ? "ok" : "info")),
      h("td", { class: "num" }, secs ? (recent / secs).toFixed(1) : "…"),
      h("td", { class: "num" }, z.attempts),
    );
  });
}

function counts(c) {
  if (!c) return "—";
  const faults = (c.traps || 0) + (c.deadline_hits || 0) + (c.memory_hits || 0) + (c.contract_violations || 0);
  return [`${c.calls || 0} calls`, " · ", faults ? badge(`${faults} faults`, "bad") : "0 faults", " · ", c.fallbacks ? badge(`${c.fallbacks} fallbacks`, "warn") : "0 fallbacks"];
}

// Rollout states while one runs.
const LIVE = new Set(["shadow", "canary", "paused"]);

// The p99 of a rollout window's latency counts (bucket i: up to 100 µs × 2^(i/4)), seconds.
function windowP99(counts) {
  const total = (counts || []).reduce((a, b) => a + b, 0);
  if (!total) return null;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= 0.99 * total) return 100e-6 * Math.pow(2, i / 4);
  }
  return null;
}

function windowCells(w, shadow) {
  const errors = (w.status_5xx || 0) + (w.transport_failures || 0);
  const ratio = w.requests ? `${((100 * errors) / w.requests).toFixed(2)}%` : "—";
  return [
    h("td", { class: "num" }, w.requests || 0),
    h("td", { class: "num" }, shadow ? "—" : ratio),
    h("td", { class: "num" }, shadow ? "—" : ms(windowP99(w.latency))),
    h("td", { class: "num" }, w.fallbacks ? badge(String(w.fallbacks), "warn") : "0"),
  ];
}

// A running rollout: its plan with the step it is at, and each gateway's figures for the
// stable version beside the candidate's.
function rolloutSection(p, reports) {
  const r = p.rollout;
  // A step is written SHARE:HOLD (`shadow:2m`, `10%:5m`).
  const steps = r.plan.steps.map((st, i) => badge(String(st), i === r.step ? "info" : i < r.step ? "ok" : ""));
  const shadow = String(r.plan.steps[r.step]).startsWith("shadow");
  const rows = reports
    .filter((x) => x.plugin === p.name)
    .map((x) => {
      const rep = x.report;
      const note = rep.refused ? badge(`refused: ${rep.refused}`, "bad") : rep.faulted ? badge(`faulted: ${rep.faulted}`, "bad") : null;
      return h(
        "tr",
        { "data-host": x.host },
        h("td", {}, mono(x.host)),
        h("td", { class: "num" }, rep.step + 1),
        windowCells(rep.stable || {}, false),
        windowCells(rep.trial || {}, shadow),
        h("td", { class: "num" }, shadow && rep.agreed != null ? rep.agreed : "—"),
        h("td", {}, note || "—"),
      );
    });
  return [
    h("h2", { "data-rollout": p.name }, "Rollout of ", h("span", { class: "plain" }, `${p.name}: ${short(p.sha256)} → ${short(r.candidate.sha256)}`)),
    h("div", { class: "row" }, badge(r.state, r.state === "paused" ? "warn" : "info"), steps),
    table(
      ["Gateway", "Step", "Stable requests", "Errors", "p99", "Fallbacks", "Candidate requests", "Errors", "p99", "Fallbacks", "Agreed (shadow)", ""],
      rows,
      "No gateway reports this rollout yet.",
    ),
  ];
}

// Upload a component (POST /v1/artifacts), then load it (POST /v1/plugins).
function loadForm() {
  const error = h("span", { class: "error", id: "load-error" });
  const file = h("input", { type: "file", id: "load-file", accept: ".wasm", "aria-label": "component file", onchange: () => {
    state.dirty = true;
    const f = file.files[0];
    if (f && !name.value) name.value = f.name.replace(/\.wasm$/, "");
  } });
  const name = h("input", { id: "load-name", placeholder: "name", "aria-label": "plugin name", oninput: () => (state.dirty = true) });
  const kind = h("select", { id: "load-kind", "aria-label": "kind" }, ["balancer", "health", "scheduler"].map((k) => h("option", { value: k }, k)));
  const binding = h("input", { id: "load-binding", placeholder: "bind to NS/GROUP/NAME, NS or *", "aria-label": "binding", oninput: () => (state.dirty = true) });
  const config = h("input", { id: "load-config", placeholder: "init config (JSON)", "aria-label": "config", oninput: () => (state.dirty = true) });
  const rollout = h("input", { id: "load-rollout", placeholder: "rollout plan (optional): 1%:2m,10%:5m", "aria-label": "rollout plan", oninput: () => (state.dirty = true) });
  const load = h("button", { id: "load", onclick: () => write(error, async () => {
    const f = file.files[0];
    if (!f) throw new ApiError(400, "invalid", "choose a component file (.wasm)");
    const uploaded = (await api("POST", "/v1/artifacts", await f.arrayBuffer())).data;
    const body = { name: name.value.trim(), kind: kind.value, binding: binding.value.trim(), config: config.value.trim(), component_sha256: uploaded.sha256 };
    if (rollout.value.trim()) body.rollout = rollout.value.trim();
    await api("POST", "/v1/plugins", body);
    file.value = "";
  }) }, "Load");
  return h("div", { class: "panel form" }, h("div", { class: "row" }, file, name, kind, binding, config, rollout, load), error);
}

async function plugins() {
  let list;
  try {
    list = await get("/v1/plugins");
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return [h("h1", {}, "Plugins"), h("p", { class: "note" }, "Plugins need the admin right: ", describe(e))];
    throw e;
  }
  const rows = list.plugins.map((p) => {
    const r = p.rollout;
    const error = h("span", { class: "error" });
    const act = (label, action, attrs) => h("button", Object.assign({ class: "small ghost", "data-action": label.toLowerCase().replace(/ /g, "-"), "data-plugin": p.name, onclick: () => write(error, action) }, attrs || {}), label);
    const path = "/v1/plugins/" + encodeURIComponent(p.name);
    const binding = h("input", { class: "binding", value: p.binding || "", placeholder: "NS/GROUP/NAME, NS or *", "aria-label": `binding of ${p.name}`, oninput: () => (state.dirty = true) });
    const rebind = act("Bind", () => api("POST", "/v1/plugins", { name: p.name, kind: p.kind, binding: binding.value.trim(), config: p.config || "", component_sha256: p.sha256 }));
    const actions = [
      act("Roll back", () => api("POST", path + "/rollback"), { disabled: !(p.history || []).length }),
      act("Roll forward", () => api("POST", path + "/rollback?forward=true"), { disabled: !(p.forward || []).length }),
    ];
    if (r && LIVE.has(r.state)) {
      for (const a of r.state === "paused" ? ["resume", "promote", "abort"] : ["pause", "promote", "abort"]) {
        actions.push(act(a[0].toUpperCase() + a.slice(1), () => api("POST", `${path}/rollout/${a}`)));
      }
    }
    // Armed by a first click, deleting on the second; the arming is the page's, not the
    // button's, so a render that redraws the row in between (one under way at the click)
    // draws it armed.
    const armed = state.armed === p.name;
    const remove = h("button", { class: "small ghost", "data-action": "delete", "data-plugin": p.name, onclick: () => {
      if (state.armed !== p.name) {
        state.armed = p.name;
        state.dirty = true;
        remove.textContent = "Really delete";
        return;
      }
      state.armed = null;
      write(error, () => api("DELETE", path));
    } }, armed ? "Really delete" : "Delete");
    actions.push(remove);
    return h(
      "tr",
      { "data-plugin": p.name },
      h("td", {}, mono(p.name)),
      h("td", {}, p.kind),
      h("td", {}, mono(short(p.sha256))),
      h("td", {}, h("div", { class: "row" }, binding, rebind)),
      h("td", {}, when(p.loaded_at_unix_ms)),
      h("td", {}, `${(p.history || []).length} before`, (p.bad || []).length ? badge(`${p.bad.length} marked bad`, "bad") : null),
      h("td", {}, r ? [badge(r.state, r.state === "rolled-back" ? "bad" : "info"), ` step ${r.step + 1}/${r.plan.steps.length}`] : "—"),
      h("td", {}, h("div", { class: "row" }, actions), error),
    );
  });
  const hosts = list.hosts.map((x) =>
    h("tr", {}, h("td", {}, mono(x.host)), h("td", {}, x.zone || "—"), h("td", {}, mono(x.plugin)), h("td", {}, badge(x.state, x.state.startsWith("active") ? "ok" : "bad"))),
  );
  const slots = list.slots.map((s) =>
    h("tr", {}, h("td", {}, mono(s.service)), h("td", {}, s.kind), h("td", {}, mono(s.plugin)), h("td", {}, s.source), h("td", {}, counts(s.counts))),
  );
  const failures = list.failures.map((f) => h("tr", {}, h("td", {}, mono(f.plugin)), h("td", {}, f.source), h("td", {}, f.error)));
  const decisions = list.plugins
    .filter((p) => p.rollout)
    .flatMap((p) =>
      p.rollout.log.map((d) =>
        h("tr", {}, h("td", {}, mono(p.name)), h("td", {}, when(d.at_unix_ms)), h("td", {}, `${d.step + 1}`), h("td", {}, badge(d.state, "info")), h("td", {}, d.by), h("td", {}, d.reason)),
      ),
    );
  // Calls, faults and fallbacks per version on every gateway that serves metrics.
  let fleet = [];
  try {
    const gateways = (await records()).instances.filter((g) => isGateway(g) && (g.metadata || {})["sextant.gateway.metrics"]);
    const reads = await Promise.all(gateways.map((g) => readGateway(g).then((r) => [g, r], () => null)));
    const sums = new Map();
    for (const x of reads.filter(Boolean)) {
      for (const [k, v] of versionsOf(x[1].now.series)) {
        const sum = sums.get(k) || Object.assign({}, v, { calls: 0, faults: 0, fallbacks: 0, hosts: 0 });
        sum.calls += v.calls;
        sum.faults += v.faults;
        sum.fallbacks += v.fallbacks;
        sum.hosts += 1;
        sums.set(k, sum);
      }
    }
    fleet = [...sums.values()].filter((v) => v.sha256).map((v) =>
      h("tr", { "data-version": v.sha256 }, h("td", {}, mono(v.plugin)), h("td", {}, v.kind), h("td", {}, mono(short(v.sha256))), h("td", { class: "num" }, v.hosts), h("td", { class: "num" }, v.calls), h("td", { class: "num" }, v.faults ? badge(String(v.faults), "bad") : "0"), h("td", { class: "num" }, v.fallbacks ? badge(String(v.fallbacks), "warn") : "0")),
    );
  } catch (_) {
    // Without the read right on the gateways' namespace: the section stays empty.
  }
  return [
    h("h1", {}, "Plugins"),
    loadForm(),
    h("h2", {}, "Records"),
    table(["Plugin", "Kind", "Version", "Binding", "Loaded", "History", "Rollout", "Actions"], rows, "No plugin is loaded."),
    h("h2", {}, "Per version on the gateways"),
    table(["Plugin", "Kind", "Version", "Gateways", "Calls", "Faults", "Fallbacks"], fleet, "No gateway has called a plugin yet."),
    list.plugins.filter((p) => p.rollout && LIVE.has(p.rollout.state)).map((p) => rolloutSection(p, list.rollouts || [])),
    h("h2", {}, "Rollout decisions"),
    table(["Plugin", "At", "Step", "State", "By", "Why"], decisions, "No rollout."),
    h("h2", {}, "What each host runs"),
    table(["Host", "Zone", "Plugin", "State"], hosts, "No host reports a plugin."),
    h("h2", {}, "Slots on this server"),
    table(["Service", "Kind", "Plugin", "Source", "Calls"], slots, "This server has made no pick."),
    h("h2", {}, "Refused loads"),
    table(["Plugin", "Source", "Why"], failures, "None."),
  ];
}

async function configs() {
  const all = await records();
  const rows = all.configs
    .map((c) => configKeyOf(c.key))
    .sort()
    .map((k) => {
      const c = all.configs.find((x) => configKeyOf(x.key) === k);
      const gray = c.beta ? badge(`candidate ${short(c.beta.version)} for ${ruleText(c.beta.rule)}`, "warn") : null;
      return h("tr", {}, h("td", {}, h("a", { href: "#/configs/" + k }, mono(k))), h("td", {}, mono(short(c.version)), " ", gray), h("td", {}, `${c.content.length} bytes`));
    });
  const error = h("span", { class: "error" });
  const key = h("input", { placeholder: "NS/GROUP/DATA_ID", "aria-label": "new entry key", oninput: () => (state.dirty = true) });
  const content = h("textarea", { "aria-label": "new entry content", oninput: () => (state.dirty = true) });
  const create = h("button", { onclick: () => write(error, () => {
    const parts = key.value.split("/");
    if (parts.length !== 3) throw new ApiError(400, "invalid", "a key is NS/GROUP/DATA_ID");
    return api("PUT", "/v1/configs/" + parts.map(encodeURIComponent).join("/"), content.value);
  }) }, "Create");
  return [
    h("h1", {}, "Config entries"),
    table(["Entry", "Version", "Size"], rows, "No config entry."),
    h("h2", {}, "New entry"),
    h("div", { class: "row" }, key, create, error),
    h("p", {}, content),
  ];
}

// Gray release: the entry's candidate (served to the readers its rule matches), promoted or
// withdrawn; or a new candidate written for a rule.
function ruleText(rule) {
  if (rule.percent !== undefined) return `percent=${rule.percent}`;
  if (rule.ids) return "ids=" + rule.ids.join(",");
  return Object.entries(rule.labels || {}).map(([k, v]) => `${k}=${v}`).join(",");
}

function candidate(path, entry) {
  const error = h("span", { class: "error" });
  const beta = entry.beta;
  if (beta) {
    const promote = h("button", { "data-action": "promote", onclick: () => write(error, () => api("POST", `${path}/promote?version=${beta.version}`)) }, "Promote");
    const withdraw = h("button", { class: "ghost", "data-action": "withdraw", onclick: () => write(error, () => api("POST", `${path}/withdraw`)) }, "Withdraw");
    return h("section", { id: "candidate" },
      h("h2", {}, "Candidate"),
      h("p", { class: "note" }, "Version ", mono(short(beta.version)), " is served to the readers matching ", mono(ruleText(beta.rule)), ` since ${when(beta.since_unix_ms)}; every other reader is served the version above.`),
      h("pre", {}, beta.content),
      h("div", { class: "row" }, promote, withdraw, error));
  }
  const rule = h("input", { placeholder: "env=canary | ids=A,B | percent=10", "aria-label": "candidate rule", oninput: () => (state.dirty = true) });
  const text = h("textarea", { "aria-label": "candidate content", oninput: () => (state.dirty = true) });
  const start = h("button", { "data-action": "beta", onclick: () => write(error, () => api("PUT", `${path}/beta?match=${encodeURIComponent(rule.value)}`, text.value)) }, "Serve to these readers");
  return h("section", { id: "candidate" },
    h("h2", {}, "Candidate"),
    h("p", { class: "note" }, "A new version for some readers first (gray release): readers with every label given, the ids listed, or a share of reader ids."),
    text,
    h("div", { class: "row" }, rule, start, error));
}

async function config(key) {
  const path = "/v1/configs/" + key.split("/").map(encodeURIComponent).join("/");
  const entry = await get(path);
  const error = h("span", { class: "error" });
  const content = h("textarea", { "aria-label": "content", oninput: () => (state.dirty = true) });
  content.value = entry.content;
  const save = h("button", { onclick: () => write(error, () => api("PUT", path, content.value, { "If-Match": `"${entry.version}"` })) }, "Save");
  const remove = h("button", { class: "ghost", onclick: () => write(error, async () => {
    await api("DELETE", path);
    location.hash = "#/configs";
  }) }, "Delete");
  const shown = h("div", { id: "old-version" });
  const show = (old) => {
    state.viewing = { path, version: old.version, content: old.content };
    shown.replaceChildren(h("h2", {}, "Version ", h("span", { class: "plain" }, short(old.version))), h("pre", {}, old.content));
  };
  if (state.viewing && state.viewing.path === path) show(state.viewing);
  const history = (entry.history || []).map((v) => {
    const older = () => get(`${path}/versions/${encodeURIComponent(v.version)}`);
    const view = h("button", { class: "small ghost", "data-action": "view", onclick: async () => {
      error.textContent = "";
      try {
        show(await older());
      } catch (e) {
        error.textContent = describe(e);
      }
    } }, "View");
    // Restored over the version on the page: refused if the entry moved on meanwhile.
    const restore = h("button", { class: "small ghost", "data-action": "restore", onclick: () => write(error, async () => {
      const old = await older();
      await api("PUT", path, old.content, { "If-Match": `"${entry.version}"` });
    }) }, "Restore");
    return h(
      "tr",
      { "data-version": v.version },
      h("td", {}, mono(short(v.version))),
      h("td", { class: "num" }, `${v.size} bytes`),
      h("td", {}, when(v.replaced_at_unix_ms)),
      h("td", {}, h("div", { class: "row" }, view, restore)),
    );
  });
  return [
    h("h1", {}, mono(key)),
    h("p", { class: "note" }, "Version ", mono(entry.version), ". Saving replaces this version only: if someone changed the entry meanwhile, the save is refused."),
    content,
    h("div", { class: "row" }, save, remove, error),
    candidate(path, entry),
    h("h2", {}, "History"),
    table(["Version", "Size", "Replaced", ""], history, "No earlier version."),
    shown,
  ];
}

// ---- Strategy lab: the results of `sextant bench strategies --out DIR` --------------------------

async function showLab(fileList, error) {
  const files = [...fileList];
  const json = files.find((f) => f.name === "results.json");
  if (!json) throw new Error("no results.json among the files: choose the folder `sextant bench strategies --out DIR` wrote");
  let results;
  try {
    results = JSON.parse(await json.text());
  } catch (e) {
    throw new Error("results.json is not JSON: " + e.message);
  }
  if (!Array.isArray(results.rows) || !Array.isArray(results.scenarios)) throw new Error("results.json has no rows and scenarios: not a strategy benchmark's");
  const svgs = new Map(files.filter((f) => f.name.endsWith(".svg")).map((f) => [f.name, f]));
  const image = (name, alt) => {
    const f = svgs.get(name);
    // An SVG shown as an image runs nothing, whatever it holds.
    return f ? h("img", { class: "plot", src: URL.createObjectURL(f), alt }) : null;
  };
  const fixed = (x, d) => (typeof x === "number" ? x.toFixed(d) : "—");
  const nodes = [h("p", { class: "note" }, `Seeds ${JSON.stringify(results.seeds)}, scale ${results.scale}. Latencies as the client saw every request; imbalance is max / mean requests per unit of weight.`)];
  for (const scenario of results.scenarios) {
    const rows = results.rows.filter((r) => r.scenario === scenario.name);
    const best = Math.min(...rows.map((r) => r.p99_ms));
    nodes.push(h("h2", {}, scenario.name));
    nodes.push(h("p", { class: "note" }, scenario.description));
    nodes.push(
      table(
        ["Strategy", "Success", "p50 ms", "p99 ms (spread)", "p99.9 ms", "Imbalance", "Key moves", "Fallbacks", "Pick ns"],
        rows.map((r) =>
          h(
            "tr",
            { "data-strategy": r.strategy },
            h("td", {}, mono(r.strategy)),
            h("td", { class: "num" }, `${fixed(r.success_rate * 100, 3)}%`),
            h("td", { class: "num" }, fixed(r.p50_ms, 2)),
            h("td", { class: "num" }, r.p99_ms === best ? badge(fixed(r.p99_ms, 2), "ok") : fixed(r.p99_ms, 2), h("span", { class: "muted" }, ` (${fixed(r.p99_min_ms, 2)}–${fixed(r.p99_max_ms, 2)})`)),
            h("td", { class: "num" }, fixed(r.p999_ms, 2)),
            h("td", { class: "num" }, fixed(r.imbalance, 3)),
            h("td", { class: "num" }, r.key_moves === null || r.key_moves === undefined ? "—" : `${fixed(r.key_moves * 100, 1)}%`),
            h("td", { class: "num" }, r.fallbacks ? badge(String(r.fallbacks), "warn") : "0"),
            h("td", { class: "num" }, fixed(r.pick_ns, 0)),
          ),
        ),
      ),
    );
    const plots = [image(`cdf-${scenario.name}.svg`, `latency CDF, ${scenario.name}`)]
      .concat([...svgs.keys()].filter((n) => n.startsWith(`load-${scenario.name}-`)).sort().map((n) => image(n, n)))
      .filter(Boolean);
    if (plots.length) nodes.push(h("div", { class: "plots" }, plots));
  }
  if ((results.failures || []).length) nodes.push(h("h2", {}, "Failures"), h("pre", {}, results.failures.join("\n")));
  error.textContent = "";
  state.lab = nodes;
}

async function lab() {
  const error = h("span", { class: "error", id: "lab-error" });
  const out = h("div", { id: "lab-results" });
  const pick = (input) => async () => {
    try {
      await showLab(input.files, error);
      out.replaceChildren(...state.lab);
    } catch (e) {
      error.textContent = describe(e);
    }
  };
  const folder = h("input", { type: "file", id: "lab-folder", webkitdirectory: true, "aria-label": "results folder" });
  const files = h("input", { type: "file", id: "lab-files", multiple: true, accept: ".json,.svg", "aria-label": "results files" });
  folder.addEventListener("change", pick(folder));
  files.addEventListener("change", pick(files));
  if (state.lab) out.replaceChildren(...state.lab);
  return [
    h("h1", {}, "Strategy lab"),
    h("p", { class: "note" }, "The tables and plots of a strategy benchmark: run ", mono("sextant bench strategies --out DIR"), " and choose DIR (or its results.json and .svg files). Nothing is sent anywhere: the files are read by this page."),
    h("div", { class: "panel form" }, h("div", { class: "row" }, h("label", {}, "Folder ", folder), h("label", {}, "or files ", files)), error),
    out,
  ];
}

// ---- Routing and the live loop --------------------------------------------------------------

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("/").map(decodeURIComponent);
  const page = parts[0] || "overview";
  if (page === "services" && parts.length === 4) return ["services", () => service(parts.slice(1).join("/"))];
  if (page === "configs" && parts.length === 4) return ["configs", () => config(parts.slice(1).join("/"))];
  if (page === "gateways" && parts.length === 5) return ["gateway", () => gatewayPage(parts.slice(1).join("/"))];
  const pages = { overview, services, gateways, plugins, configs, lab };
  return [pages[page] ? page : "overview", pages[page] || overview];
}

async function render(force) {
  if (state.rendering) {
    // A navigation (or a write) during a render is drawn right after it, not dropped: the
    // render under way may be of the page just left.
    if (force) state.again = true;
    return;
  }
  const main = document.getElementById("main");
  const focused = main.contains(document.activeElement) && /^(INPUT|TEXTAREA)$/.test(document.activeElement.tagName);
  if (!force && (state.dirty || focused)) return; // never under someone's typing
  state.rendering = true;
  const [page, build] = route();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("on", a.dataset.page === page || (page === "gateway" && a.dataset.page === "gateways"));
  try {
    const content = await build();
    const y = window.scrollY;
    main.replaceChildren(...[content].flat(Infinity).filter(Boolean));
    window.scrollTo(0, y);
    banner("");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) banner("This server needs an access token: paste one above.");
    else banner(describe(e));
  } finally {
    state.rendering = false;
    state.lastRender = Date.now();
    document.body.dataset.revision = String(state.revision);
    if (state.again) {
      state.again = false;
      render(true);
    }
  }
}

async function follow() {
  const live = document.getElementById("live");
  try {
    const status = await get("/status");
    live.className = "status live";
    live.textContent = `${status.store} · revision ${status.revision}`;
    const changed = status.revision !== state.revision;
    state.revision = status.revision;
    const [page] = route();
    const every = { plugins: 4000, gateways: 4000, gateway: 2000 }[page];
    const periodic = every && Date.now() - state.lastRender > every;
    if (changed || periodic) await render(false);
  } catch (e) {
    live.className = "status down";
    live.textContent = e instanceof ApiError && e.status === 401 ? "needs a token" : "disconnected";
  }
}

document.getElementById("token").value = state.token;
document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("sextant.token", state.token);
  render(true);
  follow();
});
document.getElementById("forget").addEventListener("click", () => {
  state.token = "";
  sessionStorage.removeItem("sextant.token");
  document.getElementById("token").value = "";
  render(true);
});
window.addEventListener("hashchange", () => {
  state.dirty = false;
  state.armed = null;
  render(true);
});
render(true).then(follow);
setInterval(follow, 1000);
