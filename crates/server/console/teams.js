// The account page's balance and teams: redeeming codes, and for team admins the
// team's members, invitations, team keys and usage. `call` is the page's API helper
// (session cookie + CSRF token).
import { $, el, fmt, toast } from "./common.js";

let call = null;
let openTeam = null;

const usd = (v) => `$${fmt(v, 4)}`;

function fail(e) {
  $("error").textContent = e.message || String(e);
  $("error").hidden = false;
}

export async function refreshMoney(apiCall) {
  call = apiCall;
  const [bal, teams] = await Promise.all([call("/account/balance"), call("/account/teams")]);
  $("balance-card").hidden = !bal.prepaid && bal.credits_usd === 0;
  $("balance-text").textContent = `${usd(bal.balance_usd)} left (${usd(bal.credits_usd)} credited, ${usd(bal.spent_usd)} spent)`;
  $("teams-card").hidden = teams.data.length === 0;
  const rows = [];
  for (const t of teams.data) {
    const full = await call(`/account/teams/${encodeURIComponent(t.id)}`);
    rows.push(el("tr", { "data-team-id": t.id },
      el("td", {}, t.name), el("td", {}, t.role === "admin" ? "team admin" : "member"),
      el("td", {}, usd(full.balance.balance_usd)),
      el("td", {}, t.role === "admin" ? el("button", { type: "button", class: "ghost", onclick: () => showTeam(t.id) }, "Manage") : "")));
  }
  $("teams-table").tBodies[0].replaceChildren(...rows);
  if (openTeam) await showTeam(openTeam);
}

async function showTeam(id) {
  openTeam = id;
  const [team, keys, usage] = await Promise.all([
    call(`/account/teams/${id}`), call(`/account/teams/${id}/keys`), call(`/account/teams/${id}/usage?group_by=model&from=${Math.floor(Date.now() / 1000) - 2592000}`),
  ]);
  $("team-panel").hidden = false;
  $("team-title").textContent = `Team ${team.name} · ${usd(team.balance.balance_usd)} left`;
  $("members-table").tBodies[0].replaceChildren(...team.members.map((m) => el("tr", {},
    el("td", {}, m.name), el("td", {}, m.email), el("td", {}, m.role),
    el("td", {}, el("button", { type: "button", class: "ghost danger", onclick: () => removeMember(m) }, "Remove")))));
  $("team-keys-table").tBodies[0].replaceChildren(...keys.data.map((k) => el("tr", {},
    el("td", {}, k.name), el("td", {}, el("code", {}, k.id)), el("td", {}, `${fmt(k.usage.tokens)} tokens · ${usd(k.usage.cost_usd)}`),
    el("td", {}, k.revoked_at ? "revoked" : "active"),
    el("td", {}, k.revoked_at ? "" : el("button", { type: "button", class: "danger", onclick: () => revokeKey(k) }, "Revoke")))));
  $("team-usage-table").tBodies[0].replaceChildren(...usage.data.map((u) => el("tr", {},
    el("td", {}, u.group), el("td", {}, fmt(u.requests)), el("td", {}, fmt(u.prompt_tokens + u.completion_tokens)), el("td", {}, fmt(u.cost_usd, 4)))));
}

async function removeMember(m) {
  if (!confirm(`Remove ${m.email} from the team?`)) return;
  try {
    await call(`/account/teams/${openTeam}/members/${encodeURIComponent(m.user_id)}`, { method: "DELETE" });
    await showTeam(openTeam);
  } catch (e) {
    fail(e);
  }
}

async function revokeKey(k) {
  if (!confirm(`Revoke the team key "${k.name}"?`)) return;
  try {
    await call(`/account/teams/${openTeam}/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
    await showTeam(openTeam);
  } catch (e) {
    fail(e);
  }
}

export function wireMoney() {
  $("redeem").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const b = await call("/account/redeem", { method: "POST", body: { code: $("r-code").value.trim() } });
      $("r-code").value = "";
      toast(`Redeemed: ${usd(b.balance_usd)} left`);
      await refreshMoney(call);
    } catch (e) {
      fail(e);
    }
  });
  $("add-member").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const t = await call(`/account/teams/${openTeam}/members`, { method: "POST", body: { email: $("m-email").value, role: $("m-role").value } });
      $("invite").hidden = !t.set_password_url;
      if (t.set_password_url) $("invite-link").textContent = new URL(t.set_password_url, location.origin).href;
      $("m-email").value = "";
      await showTeam(openTeam);
    } catch (e) {
      fail(e);
    }
  });
  $("team-key").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const k = await call(`/account/teams/${openTeam}/keys`, { method: "POST", body: { name: $("tk-name").value } });
      $("team-new-key-value").textContent = k.key;
      $("team-new-key").hidden = false;
      $("tk-name").value = "";
      await showTeam(openTeam);
    } catch (e) {
      fail(e);
    }
  });
}
