"""Teams and prepaid balances against the real binary: team limits and budgets hold
exactly with 50 concurrent requests across two replicas on Postgres + Redis, a
balance is never overdrawn by more than one request's cost, the gigachat SDK reads
it, and team pages, codes and roles are isolated per team."""

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from gigachat import GigaChat

from conftest import MODEL, ROOT, Server
from test_accounts import Person
from test_replicas import Redis, postgres  # noqa: F401 (fixture)

ADMIN = "teams-admin-key"
GGUF = str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
# A local model priced as an expensive upstream, so a few requests spend real dollars.
CONFIG = f'''[accounts]
prepaid = true

[[models]]
name = "{MODEL}"
deployments = [{{ gguf = "{GGUF}" }}]

[[models]]
name = "priced"
base = "{MODEL}"
price = {{ input = 1000.0, output = 2000.0 }}
'''


def admin(server, method, path, body=None):
    r = requests.request(method, server.url + "/admin" + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert r.status_code < 300, (path, r.status_code, r.text)
    return r.json()


def member(server, email):
    """An account made by the admin API, signed in."""
    made = admin(server, "POST", "/users", {"email": email, "name": email.split("@")[0], "password": f"{email}-pw"})
    p = Person(server.url)
    p.sign_in(email, f"{email}-pw")
    p.id = made["id"]
    return p


def chat(server, key, model=MODEL, max_tokens=8):
    r = requests.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": max_tokens}, timeout=300)
    return r.status_code, r.json()


@pytest.fixture(scope="module")
def pair(postgres):
    redis = Redis()
    d = tempfile.mkdtemp(prefix="parlance-teams-")
    with open(f"{d}/p.toml", "w") as f:
        f.write(CONFIG)
    common = ("-np", "4", "-c", "4096", "--queue", "256", "--config", f"{d}/p.toml",
              "--db", postgres, "--redis", f"redis://127.0.0.1:{redis.port}", "--admin-key", ADMIN)
    a = Server(*common)
    b = Server(*common)
    yield a, b
    a.stop()
    b.stop()
    redis.stop()


def team_with_keys(a, name, **limits):
    team = admin(a, "POST", "/teams", {"name": name, **limits})
    lead, other = member(a, f"lead-{name}@example.org"), member(a, f"dev-{name}@example.org")
    admin(a, "PUT", f"/teams/{team['id']}/members/{lead.id}", {"role": "admin"})
    admin(a, "PUT", f"/teams/{team['id']}/members/{other.id}", {"role": "member"})
    admin(a, "POST", "/credits", {"team_id": team["id"], "amount_usd": 1000, "note": "test money"})
    keys = [lead.post(f"/account/teams/{team['id']}/keys", {"name": f"k{i}"}).json()["key"] for i in range(2)]
    return team, lead, keys


def test_a_team_rpm_holds_exactly_with_50_concurrent_requests_on_two_replicas(pair):
    a, b = pair
    team, _, keys = team_with_keys(a, "rpm", rpm=10)

    def one(i):
        return chat((a, b)[i % 2], keys[(i // 2) % 2], max_tokens=1)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    codes = [c for c, _ in results]
    assert codes.count(200) == 10 and codes.count(429) == 40, codes
    refused = next(body for c, body in results if c == 429)
    assert "team" in refused["error"]["message"], refused


def test_a_team_token_budget_holds_with_50_concurrent_requests_on_two_replicas(pair):
    a, b = pair
    team, _, keys = team_with_keys(a, "budget", budget_tokens=300)

    def one(i):
        return chat((a, b)[i % 2], keys[i % 2], max_tokens=20)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    ok = [body["usage"]["total_tokens"] for c, body in results if c == 200]
    assert ok and all(c in (200, 429) for c, _ in results)
    assert sum(ok) <= 300 + max(ok), (sum(ok), len(ok))
    time.sleep(0.5)
    spent = admin(b, "GET", f"/usage?team_id={team['id']}&group_by=model")["data"]
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in spent) == sum(ok)


def test_a_balance_is_never_overdrawn_by_more_than_one_request_and_the_gigachat_sdk_reads_it(pair):
    a, b = pair
    p = member(a, "payer@example.org")
    key = p.post("/account/keys", {"name": "mine"}).json()["key"]
    # No credit yet: the door's quota error.
    code, body = chat(a, key, model="priced")
    assert code == 429 and body["error"]["code"] == "insufficient_quota" and "prepaid balance" in body["error"]["message"]
    credit = 0.5
    admin(a, "POST", "/credits", {"user_id": p.id, "amount_usd": credit, "note": "trial"})
    time.sleep(1.1)  # both replicas' subject caches

    def one(i):
        return chat((a, b)[i % 2], key, model="priced", max_tokens=20)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    costs = [(body["usage"]["prompt_tokens"] * 1000 + body["usage"]["completion_tokens"] * 2000) / 1e6 for c, body in results if c == 200]
    assert costs and all(c in (200, 429) for c, _ in results)
    assert sum(costs) <= credit + max(costs) + 1e-9, (sum(costs), len(costs))
    time.sleep(0.5)
    bal = p.get("/account/balance").json()
    assert abs(bal["spent_usd"] - sum(costs)) < 1e-6 and abs(bal["balance_usd"] - (credit - sum(costs))) < 1e-6
    # GigaChat's SDK, through its OAuth, reads the same balance.
    # On Postgres too: a code redeemed once, and a one-time link used once, across replicas.
    code = admin(a, "POST", "/codes", {"count": 1, "amount_usd": 1.25})["codes"][0]
    on_b = Person(b.url)
    on_b.sign_in("payer@example.org", "payer@example.org-pw")
    assert on_b.post("/account/redeem", {"code": code}).status_code == 200
    assert p.post("/account/redeem", {"code": code}).status_code == 400
    invited = admin(a, "POST", "/users", {"email": "linked@example.org", "name": "Linked"})
    token = invited["set_password_url"].split("#set-password=")[1]
    assert requests.post(b.url + "/account/password", json={"token": token, "password": "linked-pw-1"}, timeout=30).status_code == 200
    assert requests.post(a.url + "/account/password", json={"token": token, "password": "linked-pw-2"}, timeout=30).status_code == 400
    bal = p.get("/account/balance").json()
    giga = GigaChat(credentials=key, auth_url=b.url + "/api/v2/oauth", base_url=b.url + "/api/v1", scope="GIGACHAT_API_PERS", verify_ssl_certs=False, max_retries=0)
    got = giga.get_balance().balance
    assert got[0].usage == "USD" and abs(got[0].value - bal["balance_usd"]) < 1e-6


def test_team_pages_roles_codes_and_isolation():
    d = tempfile.mkdtemp(prefix="parlance-teams-")
    with open(f"{d}/p.toml", "w") as f:
        f.write(CONFIG)
    s = Server("-np", "2", "-c", "2048", "--config", f"{d}/p.toml", "--db", f"sqlite://{d}/t.db", "--admin-key", ADMIN)
    try:
        red = admin(s, "POST", "/teams", {"name": "red"})
        blue = admin(s, "POST", "/teams", {"name": "blue"})
        lead, dev, stranger = member(s, "lead@example.org"), member(s, "dev@example.org"), member(s, "blue@example.org")
        admin(s, "PUT", f"/teams/{red['id']}/members/{lead.id}", {"role": "admin"})
        admin(s, "PUT", f"/teams/{blue['id']}/members/{stranger.id}", {"role": "admin"})
        # A team admin adds a member, and invites someone with no account yet.
        r = lead.post(f"/account/teams/{red['id']}/members", {"email": "dev@example.org"})
        assert r.status_code == 200 and "set_password_url" not in r.json()
        inv = lead.post(f"/account/teams/{red['id']}/members", {"email": "new@example.org"}).json()
        assert "#set-password=prl_l_" in inv["set_password_url"] and len(inv["members"]) == 3
        assert [t["role"] for t in dev.get("/account/teams").json()["data"]] == ["member"]
        # A member sees the team but cannot manage it.
        assert dev.get(f"/account/teams/{red['id']}").status_code == 200
        for call in (lambda: dev.post(f"/account/teams/{red['id']}/keys", {"name": "x"}),
                     lambda: dev.get(f"/account/teams/{red['id']}/keys"),
                     lambda: dev.get(f"/account/teams/{red['id']}/usage"),
                     lambda: dev.post(f"/account/teams/{red['id']}/members", {"email": "z@example.org"})):
            assert call().status_code == 403
        # Another team's admin gets 404s for red, whatever they try.
        key = lead.post(f"/account/teams/{red['id']}/keys", {"name": "red key"}).json()
        for call in (lambda: stranger.get(f"/account/teams/{red['id']}"),
                     lambda: stranger.get(f"/account/teams/{red['id']}/keys"),
                     lambda: stranger.get(f"/account/teams/{red['id']}/usage"),
                     lambda: stranger.delete(f"/account/teams/{red['id']}/keys/{key['id']}"),
                     lambda: stranger.delete(f"/account/teams/{blue['id']}/keys/{key['id']}"),
                     lambda: stranger.post(f"/account/teams/{red['id']}/members", {"email": "x@example.org"})):
            assert call().status_code == 404
        assert stranger.get(f"/account/usage?key_id={key['id']}").json()["data"] == []
        # Codes: made by an admin, redeemed once, to a person or to a team they lead.
        codes = admin(s, "POST", "/codes", {"count": 3, "amount_usd": 2.5, "note": "workshop"})["codes"]
        assert dev.post("/account/redeem", {"code": codes[0]}).json()["balance_usd"] == 2.5
        again = lead.post("/account/redeem", {"code": codes[0]})
        assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_code"
        assert dev.post("/account/redeem", {"code": codes[1], "team_id": red["id"]}).status_code == 403
        assert lead.post("/account/redeem", {"code": codes[1], "team_id": red["id"]}).json()["balance_usd"] == 2.5
        assert stranger.post("/account/redeem", {"code": codes[2], "team_id": red["id"]}).status_code == 404
        listed = admin(s, "GET", "/codes")["data"]
        assert sum(1 for c in listed if c["redeemed_at"]) == 2 and all("PRL-" not in str(c) for c in listed)
        # The team key spends the team's balance, not the person's.
        code, _ = requests.post(s.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key['key']}"},
                                json={"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60).status_code, None
        assert code == 200
        time.sleep(0.3)
        team_bal = lead.get(f"/account/teams/{red['id']}").json()["balance"]
        assert 0 < team_bal["spent_usd"] and team_bal["balance_usd"] == pytest.approx(2.5 - team_bal["spent_usd"])
        assert lead.get("/account/balance").json()["spent_usd"] == 0
        usage = lead.get(f"/account/teams/{red['id']}/usage?group_by=key").json()["data"]
        assert [u["group"] for u in usage] == [key["id"]]
        log = admin(s, "GET", "/audit")["data"]
        assert {"balance.redeem", "team.set_member", "codes.create", "key.create"} <= {e["action"] for e in log}
    finally:
        s.stop()
