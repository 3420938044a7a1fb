// The self-service page: sign in, request access, set a password from a one-time link,
// and, signed in, My keys and My usage. The session is an HttpOnly cookie the script
// never sees; every state-changing call carries the session's CSRF token.
import { $, el, api, toast, copyText, download, fmt, ApiError } from "./common.js";
import { refreshMoney, wireMoney } from "./teams.js";

let csrf = "";
let me = null;
const call = (path, opts = {}) => api(path, { ...opts, csrf });

function show(id) {
  for (const s of ["signin", "signup", "signup-done", "set-password", "home"]) $(s).hidden = s !== id;
}

function fail(where, e) {
  $(where).textContent = e.message || String(e);
  $(where).hidden = false;
}

function signedIn(session) {
  csrf = session.csrf_token;
  me = session.user;
  $("who").textContent = `${me.name} · ${me.email}`;
  $("signout").hidden = false;
  $("admin-link").hidden = me.role !== "admin";
  history.replaceState(null, "", "/account");
  show("home");
  refreshKeys();
  refreshUsage();
  refreshMoney(call).catch((e) => fail("error", e));
}

function signedOut() {
  csrf = "";
  me = null;
  $("who").textContent = "";
  $("signout").hidden = true;
  $("admin-link").hidden = true;
  show("signin");
}

function limits(k) {
  const parts = [];
  if (k.rpm) parts.push(`${fmt(k.rpm)} rpm`);
  if (k.tpm) parts.push(`${fmt(k.tpm)} tpm`);
  if (k.max_concurrent) parts.push(`${k.max_concurrent} at once`);
  if (k.budget_tokens) parts.push(`${fmt(k.budget_tokens)} tokens`);
  if (k.budget_usd !== null && k.budget_usd !== undefined) parts.push(`$${fmt(k.budget_usd, 2)}`);
  if (k.models && k.models.length) parts.push(k.models.join(", "));
  return parts.join(" · ") || "none";
}

async function refreshKeys() {
  const body = $("keys-table").tBodies[0];
  const { data } = await call("/account/keys");
  body.replaceChildren(...data.map((k) => {
    const state = k.revoked_at ? "revoked" : k.expires_at && k.expires_at * 1000 < Date.now() ? "expired" : "active";
    const revoke = state === "active"
      ? el("button", { type: "button", class: "ghost danger", onclick: () => revokeKey(k) }, "Revoke")
      : "";
    return el("tr", { "data-id": k.id },
      el("td", {}, k.name), el("td", {}, el("code", {}, k.id)), el("td", {}, limits(k)),
      el("td", {}, `${fmt(k.usage.tokens)} tokens · $${fmt(k.usage.cost_usd, 4)}`),
      el("td", {}, new Date(k.created_at * 1000).toLocaleString()), el("td", { class: `state ${state}` }, state),
      el("td", {}, revoke));
  }));
}

async function revokeKey(k) {
  if (!confirm(`Revoke the key "${k.name}"? Programs using it stop working at once.`)) return;
  try {
    await call(`/account/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
    toast("Key revoked");
    await refreshKeys();
  } catch (e) {
    fail("error", e);
  }
}

function usageQuery() {
  const from = Math.floor(Date.now() / 1000) - Number($("u-range").value);
  return `group_by=${$("u-group").value}&from=${from}`;
}

async function refreshUsage() {
  const { data } = await call(`/account/usage?${usageQuery()}`);
  $("usage-table").tBodies[0].replaceChildren(...data.map((r) => el("tr", {},
    el("td", {}, r.group), el("td", {}, fmt(r.requests)), el("td", {}, fmt(r.prompt_tokens)),
    el("td", {}, fmt(r.completion_tokens)), el("td", {}, fmt(r.cost_usd, 4)), el("td", {}, fmt(r.errors)))));
}

async function start() {
  const cfg = await api("/account/config");
  const mode = cfg.signup;
  $("to-signup").hidden = mode === "closed";
  $("su-password-field").hidden = mode !== "open";
  $("su-password").required = mode === "open";
  if (mode === "open") $("signup-note").textContent = "Your account and its first key are made at once.";
  if (cfg.sso) {
    $("sso").textContent = cfg.sso;
    $("sso-row").hidden = false;
  }
  const link = location.hash.match(/^#set-password=([A-Za-z0-9_]+)$/);
  if (link) {
    $("set-password").dataset.token = link[1];
    return show("set-password");
  }
  try {
    return signedIn(await api("/account/me"));
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) fail("error", e);
  }
  if (location.pathname === "/signup") {
    if (mode === "closed") {
      $("signup-done-text").textContent = "Sign-up is closed on this server: ask an administrator for an account.";
      return show("signup-done");
    }
    return show("signup");
  }
  signedOut();
}

$("signin").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signin-error").hidden = true;
  try {
    signedIn(await api("/account/signin", { method: "POST", body: { email: $("si-email").value, password: $("si-password").value } }));
    $("si-password").value = "";
  } catch (e) {
    fail("signin-error", e);
  }
});

$("signup").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signup-error").hidden = true;
  const body = { name: $("su-name").value, email: $("su-email").value, organization: $("su-org").value, intended_use: $("su-use").value };
  if (!$("su-password-field").hidden) body.password = $("su-password").value;
  try {
    const r = await api("/account/signup", { method: "POST", body });
    if (r.key) {
      signedIn(r);
      $("new-key-value").textContent = r.key.key;
      $("new-key").hidden = false;
      return;
    }
    $("signup-done-text").textContent = r.message;
    show("signup-done");
  } catch (e) {
    fail("signup-error", e);
  }
});

$("set-password").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("set-password-error").hidden = true;
  if ($("sp-password").value !== $("sp-confirm").value) return fail("set-password-error", new Error("The two passwords differ."));
  try {
    signedIn(await api("/account/password", { method: "POST", body: { token: $("set-password").dataset.token, password: $("sp-password").value } }));
    toast("Password set");
  } catch (e) {
    fail("set-password-error", e);
  }
});

$("create-key").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("error").hidden = true;
  const body = { name: $("k-name").value };
  if ($("k-exp").value.trim()) body.expires_in = $("k-exp").value.trim();
  try {
    const k = await call("/account/keys", { method: "POST", body });
    $("new-key-value").textContent = k.key;
    $("new-key").hidden = false;
    $("k-name").value = "";
    await refreshKeys();
  } catch (e) {
    fail("error", e);
  }
});

$("copy-key").addEventListener("click", () => copyText($("new-key-value").textContent));
$("u-range").addEventListener("change", refreshUsage);
$("u-group").addEventListener("change", refreshUsage);
$("u-csv").addEventListener("click", async () => {
  const resp = await call(`/account/usage.csv?${usageQuery()}`, { raw: true });
  download("my-usage.csv", await resp.blob());
});
$("signout").addEventListener("click", async () => {
  await call("/account/signout", { method: "POST" }).catch(() => {});
  signedOut();
});
$("signout-all").addEventListener("click", async () => {
  await call("/account/signout-all", { method: "POST" }).catch(() => {});
  signedOut();
});

wireMoney();
start().catch((e) => fail("error", e));
