// The admin dashboard: keys, usage charts, live engine and deployment state, catalog,
// people. Every call is the admin API with the admin key in a header, or, for an admin
// signed in at /account, the session cookie plus its CSRF token.
import { $, el, api, toast, copyText, download, fmt, ApiError } from "./common.js";
import { lineChart } from "./chart.js";

const KEY = "parlance.admin";
const adminKey = () => sessionStorage.getItem(KEY) || "";
let sessionCsrf = "";
const call = (path, opts = {}) => api(path, { ...opts, key: adminKey(), csrf: sessionCsrf });
let liveTimer = null;
let lastGenerated = new Map();

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

async function guarded(fn) {
  try {
    showError("");
    await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return logout("The admin key was refused.");
    showError(e.message);
  }
}

// ---- login -----------------------------------------------------------------------

async function login(keyValue) {
  if (!keyValue) {
    $("login-error").textContent = "Enter the admin key (the server's --admin-key).";
    $("login-error").hidden = false;
    return;
  }
  sessionStorage.setItem(KEY, keyValue);
  try {
    await call("/admin/status");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    const msg = e instanceof ApiError && e.status === 404
      ? "The admin API is off: start the server with --admin-key."
      : e instanceof ApiError && e.status === 401
        ? "That admin key was refused: it is not this server's --admin-key."
        : e.message;
    $("login-error").textContent = msg;
    $("login-error").hidden = false;
    return;
  }
  $("login").hidden = true;
  $("dash").hidden = false;
  $("logout").hidden = false;
  selectTab("keys");
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  if (sessionCsrf) api("/account/signout", { method: "POST", csrf: sessionCsrf }).catch(() => {});
  sessionCsrf = "";
  clearInterval(liveTimer);
  $("dash").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("login-error").hidden = !message;
  $("admin-key").focus();
}

// ---- tabs ------------------------------------------------------------------------

const TABS = ["keys", "usage", "live", "catalog", "people"];
const LOADERS = { keys: loadKeys, usage: loadUsage, live: loadLive, catalog: loadCatalog, people: loadPeople };

function selectTab(name) {
  for (const t of TABS) {
    const on = t === name;
    $(`tab-${t}`).setAttribute("aria-selected", String(on));
    $(`tab-${t}`).tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  clearInterval(liveTimer);
  if (name === "live") liveTimer = setInterval(() => guarded(loadLive), 2000);
  guarded(LOADERS[name]);
}

// ---- keys ------------------------------------------------------------------------

function intOrNull(v) {
  const t = String(v ?? "").trim();
  return t === "" ? null : Number(t);
}

function limitsText(k) {
  const parts = [];
  if (k.rpm) parts.push(`${k.rpm} rpm`);
  if (k.tpm) parts.push(`${k.tpm} tpm`);
  if (k.max_concurrent) parts.push(`${k.max_concurrent} concurrent`);
  if (k.budget_tokens) parts.push(`${fmt(k.budget_tokens)} tokens`);
  if (k.budget_usd !== null && k.budget_usd !== undefined) parts.push(`$${fmt(k.budget_usd, 2)}`);
  if (k.expires_at) parts.push(`expires ${new Date(k.expires_at * 1000).toLocaleString()}`);
  return parts.join(", ") || "none";
}

async function loadKeys() {
  const list = await call("/admin/keys");
  const rows = list.data.map((k) => {
    const revoked = !!k.revoked_at;
    return el("tr", { "data-key-id": k.id },
      el("td", {}, k.name),
      el("td", {}, el("code", {}, k.id)),
      el("td", {}, k.models.length ? k.models.join(", ") : "all"),
      el("td", {}, limitsText(k)),
      el("td", { class: "num" }, `${fmt(k.usage.tokens)} tokens`, el("br"), `$${fmt(k.usage.cost_usd, 4)}`),
      el("td", {}, new Date(k.created_at * 1000).toLocaleString()),
      el("td", { class: revoked ? "state-bad" : "state-ok" }, revoked ? "revoked" : "active"),
      el("td", {}, revoked ? "" : el("div", { class: "row" },
        el("button", { type: "button", class: "ghost", onclick: (e) => editKey(k, e.target.closest("tr")) }, "Edit"),
        el("button", { type: "button", class: "danger", "aria-label": `Revoke ${k.name}`, onclick: () => revokeKey(k) }, "Revoke"))));
  });
  $("keys-table").tBodies[0].replaceChildren(...rows);
}

function editKey(k, row) {
  const field = (name, value, attrs = {}) => el("input", { "aria-label": name, value: value ?? "", ...attrs });
  const models = field("Allowed models", k.models.join(", "));
  const rpm = field("Requests per minute", k.rpm, { type: "number", min: 1 });
  const tpm = field("Tokens per minute", k.tpm, { type: "number", min: 1 });
  const conc = field("Max concurrent", k.max_concurrent, { type: "number", min: 1 });
  const btok = field("Token budget", k.budget_tokens, { type: "number", min: 1 });
  const busd = field("USD budget", k.budget_usd, { type: "number", min: 0, step: 0.01 });
  const save = () => guarded(async () => {
    await call(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "PATCH", body: {
      models: models.value.split(",").map((s) => s.trim()).filter(Boolean),
      rpm: intOrNull(rpm.value), tpm: intOrNull(tpm.value), max_concurrent: intOrNull(conc.value),
      budget_tokens: intOrNull(btok.value), budget_usd: intOrNull(busd.value),
    } });
    toast(`Saved ${k.name}`);
    await loadKeys();
  });
  row.replaceChildren(
    el("td", {}, k.name), el("td", {}, el("code", {}, k.id)), el("td", {}, models),
    el("td", {}, el("div", { class: "grid" }, rpm, tpm, conc, btok, busd)),
    el("td", { colspan: 3 }), el("td", {}, el("div", { class: "row" },
      el("button", { type: "button", onclick: save }, "Save"),
      el("button", { type: "button", class: "ghost", onclick: () => guarded(loadKeys) }, "Cancel"))));
  models.focus();
}

async function revokeKey(k) {
  if (!confirm(`Revoke the key "${k.name}" (${k.id})? Requests with it will get 401 at once.`)) return;
  await guarded(async () => {
    await call(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
    toast(`Revoked ${k.name}`);
    await loadKeys();
  });
}

async function createKey(e) {
  e.preventDefault();
  await guarded(async () => {
    const body = { name: $("k-name").value.trim() };
    const models = $("k-models").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (models.length) body.models = models;
    for (const [id, name] of [["k-rpm", "rpm"], ["k-tpm", "tpm"], ["k-conc", "max_concurrent"], ["k-btok", "budget_tokens"], ["k-busd", "budget_usd"]]) {
      const v = intOrNull($(id).value);
      if (v !== null) body[name] = v;
    }
    if ($("k-exp").value.trim()) body.expires_in = $("k-exp").value.trim();
    const created = await call("/admin/keys", { method: "POST", body });
    $("new-key-value").textContent = created.key;
    $("new-key").hidden = false;
    $("create-key").reset();
    await loadKeys();
    $("copy-key").focus();
  });
}

// ---- usage -----------------------------------------------------------------------

function usageQuery() {
  const span = Number($("u-range").value);
  const to = Math.floor(Date.now() / 1000) + 1;
  const from = to - span;
  const bucket = span <= 3600 ? "minute" : span <= 172800 ? "hour" : "day";
  return { from, to, bucket, group: $("u-group").value };
}

async function loadUsage() {
  const q = usageQuery();
  const params = new URLSearchParams({ from: q.from, to: q.to, bucket: q.bucket, group_by: q.group });
  const [series, totals, latency, keys] = await Promise.all([
    call(`/admin/usage/series?${params}`),
    call(`/admin/usage?${new URLSearchParams({ from: q.from, to: q.to, group_by: q.group })}`),
    call(`/admin/usage/latency?${new URLSearchParams({ from: q.from, to: q.to })}`),
    q.group === "key" ? call("/admin/keys") : Promise.resolve({ data: [] }),
  ]);
  const names = new Map(keys.data.map((k) => [k.id, `${k.name} (${k.id})`]));
  const label = (g) => names.get(g) || (g === "-" ? "static / open" : g);
  const step = series.bucket_s;
  const first = Math.floor(q.from / step) * step;
  const buckets = [];
  for (let t = first; t < q.to; t += step) buckets.push(t);
  const groups = [...new Set(series.data.map((p) => p.group))];
  const chart = (id, field, title, digits = 0) => lineChart($(id), {
    label: title, from: first, to: buckets[buckets.length - 1] ?? q.to, digits,
    series: groups.map((g) => {
      const byT = new Map(series.data.filter((p) => p.group === g).map((p) => [p.t, p[field]]));
      return { name: label(g), points: buckets.map((t) => [t, byT.get(t) || 0]) };
    }),
  });
  chart("chart-requests", "requests", "Requests");
  chart("chart-tokens", "tokens", "Tokens");
  chart("chart-cost", "cost_usd", "Cost (USD)", 4);
  chart("chart-errors", "errors", "Errors");
  $("totals-table").tBodies[0].replaceChildren(...totals.data.map((r) => el("tr", {},
    el("td", {}, label(r.group)), el("td", { class: "num" }, fmt(r.requests)), el("td", { class: "num" }, fmt(r.prompt_tokens)),
    el("td", { class: "num" }, fmt(r.completion_tokens)), el("td", { class: "num" }, fmt(r.cached_tokens)),
    el("td", { class: "num" }, fmt(r.cost_usd, 4)), el("td", { class: "num" }, fmt(r.errors)), el("td", { class: "num" }, fmt(r.cancelled)))));
  const pct = (p) => (p ? `${fmt(p.p50)} / ${fmt(p.p90)} / ${fmt(p.p99)}` : "–");
  $("latency-table").tBodies[0].replaceChildren(...latency.data.map((r) => el("tr", {},
    el("td", {}, r.model), el("td", { class: "num" }, fmt(r.requests)), el("td", { class: "num" }, pct(r.latency_ms)), el("td", { class: "num" }, pct(r.ttft_ms)))));
}

async function exportCsv() {
  await guarded(async () => {
    const q = usageQuery();
    const resp = await call(`/admin/usage.csv?${new URLSearchParams({ from: q.from, to: q.to, group_by: q.group })}`, { raw: true });
    download(`parlance-usage-by-${q.group}.csv`, await resp.blob());
  });
}

// ---- live and catalog -------------------------------------------------------------

function meter(used, total) {
  const bar = el("div");
  bar.style.width = `${total ? Math.round((100 * used) / total) : 0}%`;
  return el("div", { class: "meter", role: "meter", "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": used, "aria-label": "busy slots" }, bar);
}

function loadRows(load, id, now) {
  const prev = lastGenerated.get(id);
  lastGenerated.set(id, { n: load.generated_tokens, t: now });
  const rate = prev && now > prev.t ? ((load.generated_tokens - prev.n) * 1000) / (now - prev.t) : null;
  return [
    meter(load.busy_slots, load.slots),
    el("dl", { class: "kv" },
      el("dt", {}, "Busy slots"), el("dd", { "data-field": "busy" }, `${load.busy_slots} of ${load.slots}`),
      el("dt", {}, "Queued"), el("dd", { "data-field": "queued" }, String(load.queued)),
      el("dt", {}, "Tokens/s"), el("dd", { "data-field": "tps" }, rate === null ? "–" : fmt(rate, 1)),
      el("dt", {}, "Generated"), el("dd", {}, fmt(load.generated_tokens))),
  ];
}

function deploymentTable(ds) {
  return el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, ...["Deployment", "Weight", "In flight", "Attempts", "Error rate", "State"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...ds.map((d) => {
      const state = d.down ? `down: ${d.down}` : d.cooldown_ms ? `cooling down ${fmt(d.cooldown_ms / 1000, 1)} s` : "healthy";
      return el("tr", {},
        el("td", {}, d.name, ...(d.load ? [el("br"), `${d.load.busy_slots}/${d.load.slots} slots, ${d.load.queued} queued`] : [])),
        el("td", { class: "num" }, String(d.weight)), el("td", { class: "num" }, String(d.in_flight)),
        el("td", { class: "num" }, fmt(d.attempts)),
        el("td", { class: "num" }, d.attempts ? `${fmt((100 * d.failures) / d.attempts, 1)}% (${d.failures})` : "–"),
        el("td", { class: d.down || d.cooldown_ms ? "state-bad" : "state-ok" }, state));
    }))));
}

// A model loaded on demand (--models-dir): loaded or not, its load and its memory.
function residencyLine(r) {
  const mib = (b) => `${fmt(b / 1048576, 0)} MiB`;
  let text;
  if (r.loading) text = "Loading…";
  else if (!r.loaded) text = r.last_error ? `Not loaded: its last load failed: ${r.last_error}` : "Not loaded: loads on its next request.";
  else {
    const until = r.in_flight ? `serving ${r.in_flight}` : r.keep_alive_forever ? "kept loaded" : `unloads in ${fmt(r.expires_in_s, 0)} s if idle`;
    text = `Loaded on demand in ${fmt(r.load_ms / 1000, 1)} s, ~${mib(r.memory_bytes)}; ${until}.`;
  }
  return el("p", { class: r.last_error && !r.loaded ? "state-bad" : "muted", "data-field": "residency" }, text);
}

async function loadLive() {
  const s = await call("/admin/status");
  const now = Date.now();
  $("live-note").textContent = `Parlance ${s.version}, up ${fmt(s.uptime_s / 60, 0)} min. Refreshed every 2 seconds.`;
  $("live").replaceChildren(...s.models.map((m) => el("section", { class: "card", "data-model": m.id, "aria-label": m.id },
    el("h2", {}, m.id),
    m.down ? el("p", { class: "state-bad" }, `Unavailable: ${m.down}`) : null,
    m.residency ? residencyLine(m.residency) : null,
    ...(m.load ? loadRows(m.load, m.id, now) : []),
    // A pool's load is its local deployments' summed; split it only when there are several.
    ...(m.deployments.filter((d) => d.load).length > 1
      ? m.deployments.filter((d) => d.load).flatMap((d) => [el("p", { class: "muted" }, d.name), ...loadRows(d.load, `${m.id}/${d.name}`, now)])
      : []),
    m.deployments.length ? deploymentTable(m.deployments) : (m.load || m.residency ? null : el("p", { class: "muted" }, "No live state.")))));
}

async function loadCatalog() {
  const s = await call("/admin/status");
  $("catalog-table").tBodies[0].replaceChildren(...s.models.map((m) => el("tr", {},
    el("td", {}, el("code", {}, m.id), el("br"), el("span", { class: "muted" }, m.owned_by)),
    el("td", {}, m.aliases.join(", ") || "–"),
    el("td", {}, m.kind),
    // Upstream models' context is the provider's, unknown here unless the catalog says.
    el("td", { class: "num" }, m.context_length ? fmt(m.context_length) : "unknown", m.max_output_tokens ? el("span", { class: "muted" }, ` (out ${fmt(m.max_output_tokens)})`) : null),
    el("td", {}, Object.entries(m.capabilities).filter(([, v]) => v).map(([k]) => k).join(", ")),
    el("td", {}, m.price ? `${m.price.input} / ${m.price.output}` : "free"),
    el("td", {}, m.system_prompt ? el("div", {}, el("em", {}, "System: "), m.system_prompt) : null, m.defaults.length ? el("div", {}, m.defaults.join(", ")) : null, !m.system_prompt && !m.defaults.length ? "–" : null),
    el("td", {}, m.deployments.length ? m.deployments.map((d) => `${d.name} (weight ${d.weight})`).join(", ") : "local engine"),
    el("td", {}, m.fallbacks.join(", ") || "–"))));
}

// ---- people ------------------------------------------------------------------------

function showLink(url) {
  const full = new URL(url, location.origin).href;
  $("link-value").textContent = full;
  $("link-card").hidden = false;
}

async function decide(r, decision) {
  await guarded(async () => {
    const out = await call(`/admin/access-requests/${encodeURIComponent(r.id)}/${decision}`, { method: "POST" });
    if (out.set_password_url) showLink(out.set_password_url);
    toast(decision === "approve" ? `Approved ${r.email}` : `Denied ${r.email}`);
    await loadPeople();
  });
}

async function setDisabled(u, disabled) {
  if (disabled && !confirm(`Disable ${u.email}? Their sessions end and their keys are revoked.`)) return;
  await guarded(async () => {
    await call(`/admin/users/${encodeURIComponent(u.id)}`, { method: "PATCH", body: { disabled } });
    await loadPeople();
  });
}

async function loadPeople() {
  const [reqs, users, audit, teams] = await Promise.all([
    call("/admin/access-requests?status=pending"), call("/admin/users"), call("/admin/audit?limit=100"), call("/admin/teams"),
  ]);
  $("teams-table").tBodies[0].replaceChildren(...teams.data.map((t) => el("tr", { "data-team-id": t.id },
    el("td", {}, t.name), el("td", {}, t.members.map((m) => `${m.email}${m.role === "admin" ? " (admin)" : ""}`).join(", ") || "–"),
    el("td", {}, limitsText(t.limits)), el("td", { class: "num" }, `$${fmt(t.balance.balance_usd, 4)}`),
    el("td", {}, el("button", { type: "button", class: "ghost", onclick: () => topUp(t) }, "Top up")))));
  $("requests-table").tBodies[0].replaceChildren(...reqs.data.map((r) => el("tr", { "data-request-id": r.id },
    el("td", {}, r.name), el("td", {}, r.email), el("td", {}, r.organization), el("td", {}, r.intended_use),
    el("td", {}, new Date(r.created_at * 1000).toLocaleString()),
    el("td", {}, el("div", { class: "row" },
      el("button", { type: "button", "aria-label": `Approve ${r.email}`, onclick: () => decide(r, "approve") }, "Approve"),
      el("button", { type: "button", class: "ghost", "aria-label": `Deny ${r.email}`, onclick: () => decide(r, "deny") }, "Deny"))))));
  $("no-requests").hidden = reqs.data.length > 0;
  $("users-table").tBodies[0].replaceChildren(...users.data.map((u) => el("tr", { "data-user-id": u.id },
    el("td", {}, u.name), el("td", {}, u.email), el("td", {}, u.role), el("td", {}, u.organization),
    el("td", { class: u.disabled_at ? "state-bad" : "state-ok" }, u.disabled_at ? "disabled" : u.has_password ? "active" : "invited"),
    el("td", {}, u.disabled_at
      ? el("button", { type: "button", class: "ghost", onclick: () => setDisabled(u, false) }, "Enable")
      : el("button", { type: "button", class: "danger", onclick: () => setDisabled(u, true) }, "Disable")))));
  $("audit-table").tBodies[0].replaceChildren(...audit.data.map((e) => el("tr", {},
    el("td", {}, new Date(e.at * 1000).toLocaleString()), el("td", {}, e.actor), el("td", {}, el("code", {}, e.action)),
    el("td", {}, e.target), el("td", {}, e.detail), el("td", {}, e.address))));
}

async function topUp(t) {
  const amount = Number(prompt(`Add how many USD to ${t.name}'s balance?`, "10"));
  if (!amount) return;
  const note = prompt("Note for the audit log:", "top-up") || "top-up";
  await guarded(async () => {
    await call("/admin/credits", { method: "POST", body: { team_id: t.id, amount_usd: amount, note } });
    toast(`Added $${amount} to ${t.name}`);
    await loadPeople();
  });
}

async function createTeam(e) {
  e.preventDefault();
  await guarded(async () => {
    const body = { name: $("t-name").value };
    if ($("t-rpm").value) body.rpm = intOrNull($("t-rpm").value);
    if ($("t-busd").value) body.budget_usd = Number($("t-busd").value);
    await call("/admin/teams", { method: "POST", body });
    $("t-name").value = "";
    await loadPeople();
  });
}

async function makeCodes(e) {
  e.preventDefault();
  await guarded(async () => {
    const out = await call("/admin/codes", { method: "POST", body: { count: Number($("c-count").value), amount_usd: Number($("c-amount").value), note: $("c-note").value } });
    $("codes-out").textContent = out.codes.join("\n");
    $("codes-out").hidden = false;
    await loadPeople();
  });
}

// ---- wiring ------------------------------------------------------------------------

function init() {
  $("login").addEventListener("submit", (e) => { e.preventDefault(); login($("admin-key").value.trim()); });
  $("logout").addEventListener("click", () => logout());
  $("create-key").addEventListener("submit", createKey);
  $("copy-key").addEventListener("click", () => copyText($("new-key-value").textContent));
  $("u-refresh").addEventListener("click", () => guarded(loadUsage));
  $("u-range").addEventListener("change", () => guarded(loadUsage));
  $("u-group").addEventListener("change", () => guarded(loadUsage));
  $("u-csv").addEventListener("click", exportCsv);
  const tabs = TABS.map((t) => $(`tab-${t}`));
  tabs.forEach((b, i) => {
    b.addEventListener("click", () => selectTab(TABS[i]));
    // Arrow keys move between tabs (the ARIA tabs pattern).
    b.addEventListener("keydown", (e) => {
      const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (!d) return;
      const next = (i + d + TABS.length) % TABS.length;
      tabs[next].focus();
      selectTab(TABS[next]);
    });
  });
  $("copy-link").addEventListener("click", () => copyText($("link-value").textContent));
  $("create-team").addEventListener("submit", createTeam);
  $("make-codes").addEventListener("submit", makeCodes);
  if (adminKey()) return login(adminKey());
  // An admin signed in at /account needs no key here.
  api("/account/me").then((s) => {
    if (s.user.role !== "admin") throw new Error("not an admin");
    sessionCsrf = s.csrf_token;
    $("login").hidden = true;
    $("dash").hidden = false;
    $("logout").hidden = false;
    selectTab("keys");
  }).catch(() => { $("login").hidden = false; });
}

init();
