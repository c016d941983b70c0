// The sextant console: a page over the admin API. Every value from the registry is put into
// the page as text (textContent), never as markup. Writes go through the same routes, rights,
// limits and audit as any API client.
"use strict";

const state = {
  token: sessionStorage.getItem("sextant.token") || "",
  revision: null,
  dirty: false,
  rendering: false,
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
    if (typeof body === "string") {
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
  ];
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
      h("td", {}, mono(`${keyOf(g.service)}/${g.id}`)),
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
  return [h("h1", {}, "Gateways"), gatewayTable(all.instances.filter(isGateway))];
}

function counts(c) {
  if (!c) return "—";
  const faults = (c.traps || 0) + (c.deadline_hits || 0) + (c.memory_hits || 0) + (c.contract_violations || 0);
  return [`${c.calls || 0} calls`, " · ", faults ? badge(`${faults} faults`, "bad") : "0 faults", " · ", c.fallbacks ? badge(`${c.fallbacks} fallbacks`, "warn") : "0 fallbacks"];
}

async function plugins() {
  let list;
  try {
    list = await get("/v1/plugins");
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return [h("h1", {}, "Plugins"), h("p", { class: "note" }, "Plugins need the admin right: ", describe(e))];
    throw e;
  }
  const records = list.plugins.map((p) => {
    const r = p.rollout;
    return h(
      "tr",
      {},
      h("td", {}, mono(p.name)),
      h("td", {}, p.kind),
      h("td", {}, mono(short(p.sha256))),
      h("td", {}, mono(p.binding || "—")),
      h("td", {}, when(p.loaded_at_unix_ms)),
      h("td", {}, `${(p.history || []).length} before`),
      h("td", {}, r ? [badge(r.state, r.state === "rolled-back" ? "bad" : "info"), ` step ${r.step + 1}/${r.plan.steps.length}`] : "—"),
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
  return [
    h("h1", {}, "Plugins"),
    h("h2", {}, "Records"),
    table(["Plugin", "Kind", "Version", "Binding", "Loaded", "History", "Rollout"], records, "No plugin is loaded."),
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
      return h("tr", {}, h("td", {}, h("a", { href: "#/configs/" + k }, mono(k))), h("td", {}, mono(short(c.version))), h("td", {}, `${c.content.length} bytes`));
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
  return [
    h("h1", {}, mono(key)),
    h("p", { class: "note" }, "Version ", mono(entry.version), ". Saving replaces this version only: if someone changed the entry meanwhile, the save is refused."),
    content,
    h("div", { class: "row" }, save, remove, error),
  ];
}

// ---- Routing and the live loop --------------------------------------------------------------

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("/").map(decodeURIComponent);
  const page = parts[0] || "overview";
  if (page === "services" && parts.length === 4) return ["services", () => service(parts.slice(1).join("/"))];
  if (page === "configs" && parts.length === 4) return ["configs", () => config(parts.slice(1).join("/"))];
  const pages = { overview, services, gateways, plugins, configs };
  return [pages[page] ? page : "overview", pages[page] || overview];
}

async function render(force) {
  if (state.rendering) return;
  const main = document.getElementById("main");
  const focused = main.contains(document.activeElement) && /^(INPUT|TEXTAREA)$/.test(document.activeElement.tagName);
  if (!force && (state.dirty || focused)) return; // never under someone's typing
  state.rendering = true;
  const [page, build] = route();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("on", a.dataset.page === page);
  try {
    const content = await build();
    const y = window.scrollY;
    main.replaceChildren(...[content].flat().filter(Boolean));
    window.scrollTo(0, y);
    banner("");
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) banner("This server needs an access token: paste one above.");
    else banner(describe(e));
  } finally {
    state.rendering = false;
    state.lastRender = Date.now();
    document.body.dataset.revision = String(state.revision);
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
    const periodic = (page === "plugins" || page === "gateways") && Date.now() - state.lastRender > 4000;
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
  render(true);
});
render(true).then(follow);
setInterval(follow, 1000);
