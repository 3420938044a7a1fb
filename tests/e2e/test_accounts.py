"""Accounts against the real binary and a real SQLite store: sign-up (approval and
open), sessions with CSRF, self-service keys used by the openai SDK, isolation between
two people, the sign-in throttle, disabling, the audit log and what never reaches the
database or the log in clear."""

import sqlite3
import subprocess
import tempfile

import openai
import pytest
import requests
from openai import OpenAI

from conftest import BIN, MODEL, ROOT, Server

ADMIN = "accounts-admin-key"
GGUF = str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")


class Person:
    """A browser-like client: the cookie jar of requests, the CSRF token from sign-in."""

    def __init__(self, url):
        self.url = url
        self.s = requests.Session()
        self.csrf = ""

    def post(self, path, body=None, csrf=True, **kw):
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        headers.update(kw.pop("headers", {}))
        return self.s.post(self.url + path, json=body or {}, headers=headers, timeout=30, **kw)

    def get(self, path, **kw):
        return self.s.get(self.url + path, timeout=30, **kw)

    def delete(self, path, csrf=True):
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        return self.s.delete(self.url + path, headers=headers, timeout=30)

    def sign_in(self, email, password):
        r = self.post("/account/signin", {"email": email, "password": password}, csrf=False)
        assert r.status_code == 200, r.text
        self.csrf = r.json()["csrf_token"]
        return r


def admin(url, method, path, body=None):
    return requests.request(method, url + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)


@pytest.fixture(scope="module")
def approval():
    d = tempfile.mkdtemp(prefix="parlance-accounts-")
    s = Server("-m", GGUF, "--alias", MODEL, "-np", "2", "-c", "2048", "--n-predict", "8", "--admin-key", ADMIN,
               "--signup", "approval", "--db", f"sqlite://{d}/p.db", "--log-format", "json", "-v")
    s.db = f"{d}/p.db"
    yield s
    s.stop()


def approved_person(server, email, password):
    """The approval path end to end: form, one admin call, the one-time link, sign-in."""
    r = requests.post(server.url + "/account/signup", json={"name": email.split("@")[0], "email": email, "organization": "Uni", "intended_use": "RAG"}, timeout=30)
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    d = admin(server.url, "POST", f"/admin/access-requests/{rid}/approve")
    assert d.status_code == 200, d.text
    token = d.json()["set_password_url"].split("#set-password=")[1]
    p = Person(server.url)
    r = p.post("/account/password", {"token": token, "password": password}, csrf=False)
    assert r.status_code == 200, r.text
    p.csrf = r.json()["csrf_token"]
    # The link works once.
    again = requests.post(server.url + "/account/password", json={"token": token, "password": "another-one-1"}, timeout=30)
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_link"
    return p


def test_approval_path_gives_a_key_the_openai_sdk_uses_and_usage_shows_it(approval):
    p = approved_person(approval, "ana@example.org", "ana-password-1")
    # Before the first key a server that takes sign-ups is not open.
    r = requests.post(approval.url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 401
    k = p.post("/account/keys", {"name": "laptop"})
    assert k.status_code == 201, k.text
    key = k.json()["key"]
    client = OpenAI(base_url=approval.url + "/v1", api_key=key, max_retries=0, timeout=120)
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert out.usage.completion_tokens >= 1
    usage = p.get("/account/usage?group_by=key").json()["data"]
    assert [(u["group"], u["requests"]) for u in usage] == [(k.json()["id"], 1)]
    assert usage[0]["prompt_tokens"] == out.usage.prompt_tokens
    csv = p.get("/account/usage.csv?group_by=model").text.splitlines()
    assert csv[1].startswith(f"{MODEL},1,")
    # A duplicate request for a taken email is a clear conflict.
    dup = requests.post(approval.url + "/account/signup", json={"name": "x", "email": "ANA@example.org"}, timeout=30)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "email_taken"


def test_two_people_never_see_each_others_keys_or_usage(approval):
    a = approved_person(approval, "alice@example.org", "alice-password")
    b = approved_person(approval, "bob@example.org", "bob-password-1")
    ka = a.post("/account/keys", {"name": "a"}).json()
    OpenAI(base_url=approval.url + "/v1", api_key=ka["key"], max_retries=0).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    kb = b.post("/account/keys", {"name": "b"}).json()
    assert [k["id"] for k in b.get("/account/keys").json()["data"]] == [kb["id"]]
    assert b.delete(f"/account/keys/{ka['id']}").status_code == 404
    assert b.get(f"/account/usage?key_id={ka['id']}").json()["data"] == []
    assert a.get(f"/account/usage?key_id={ka['id']}").json()["data"][0]["requests"] == 1
    # The key still works: b's attempt changed nothing.
    assert requests.get(approval.url + "/v1/key", headers={"Authorization": f"Bearer {ka['key']}"}, timeout=30).json()["revoked_at"] is None
    # A member is no admin, with or without the CSRF token.
    for path in ("/admin/users", "/admin/keys", "/admin/audit"):
        r = b.s.get(approval.url + path, headers={"X-CSRF-Token": b.csrf}, timeout=30)
        assert r.status_code == 403, (path, r.text)
    assert b.post(f"/admin/users/{a.get('/account/me').json()['user']['id']}/password-link").status_code == 403
    # Stored Responses API turns stay with the key that made them.
    resp = requests.post(approval.url + "/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 16}, headers={"Authorization": f"Bearer {ka['key']}"}, timeout=60)
    assert resp.status_code == 200, resp.text
    other = requests.get(approval.url + f"/v1/responses/{resp.json()['id']}", headers={"Authorization": f"Bearer {kb['key']}"}, timeout=30)
    assert other.status_code == 404


def test_csrf_origin_sign_out_and_sign_out_everywhere(approval):
    p = approved_person(approval, "carol@example.org", "carol-password")
    assert p.post("/account/keys", {"name": "no token"}, csrf=False).status_code == 403
    wrong = p.s.post(approval.url + "/account/keys", json={"name": "x"}, headers={"X-CSRF-Token": "0" * 32}, timeout=30)
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "csrf_failed"
    evil = p.post("/account/keys", {"name": "x"}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert p.post("/account/keys", {"name": "ok"}, headers={"Origin": approval.url}).status_code == 201
    # A sign-in posted by another site's page is refused too.
    r = requests.post(approval.url + "/account/signin", json={"email": "carol@example.org", "password": "carol-password"}, headers={"Origin": "https://evil.example"}, timeout=30)
    assert r.status_code == 403
    second = Person(approval.url)
    second.sign_in("carol@example.org", "carol-password")
    cookie = p.s.cookies.get("parlance_session")
    assert p.post("/account/signout").status_code == 200
    # The old cookie, replayed, is refused; the other session still works.
    replay = requests.get(approval.url + "/account/me", cookies={"parlance_session": cookie}, timeout=30)
    assert replay.status_code == 401
    assert second.get("/account/me").status_code == 200
    third = Person(approval.url)
    third.sign_in("carol@example.org", "carol-password")
    assert third.post("/account/signout-all").json()["sessions"] == 2
    assert second.get("/account/me").status_code == 401


def test_the_cookie_is_httponly_strict_and_the_session_expires(approval):
    p = approved_person(approval, "dave@example.org", "dave-password")
    r = p.post("/account/signout")
    p2 = Person(approval.url)
    r = p2.sign_in("dave@example.org", "dave-password")
    c = r.headers["set-cookie"]
    assert "HttpOnly" in c and "SameSite=Strict" in c and "Path=/" in c and "Secure" not in c
    behind_tls = requests.post(approval.url + "/account/signin", json={"email": "dave@example.org", "password": "dave-password"}, headers={"X-Forwarded-Proto": "https"}, timeout=30)
    assert "Secure" in behind_tls.headers["set-cookie"]
    # Expire the session in the store: it is refused at once.
    con = sqlite3.connect(approval.db, timeout=10)
    con.execute("UPDATE sessions SET expires_at = 1 WHERE user_id = (SELECT id FROM users WHERE email = 'dave@example.org')")
    con.commit()
    con.close()
    assert p2.get("/account/me").status_code == 401


def test_five_wrong_passwords_lock_the_account_then_the_right_one_waits(approval):
    approved_person(approval, "erin@example.org", "erin-password")
    for _ in range(5):
        r = requests.post(approval.url + "/account/signin", json={"email": "erin@example.org", "password": "nope-nope"}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"
    r = requests.post(approval.url + "/account/signin", json={"email": "erin@example.org", "password": "erin-password"}, timeout=30)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_a_disabled_person_loses_sessions_and_keys_and_admins_see_it_all(approval):
    p = approved_person(approval, "fay@example.org", "fay-password")
    key = p.post("/account/keys", {"name": "k"}).json()["key"]
    uid = p.get("/account/me").json()["user"]["id"]
    r = admin(approval.url, "PATCH", f"/admin/users/{uid}", {"disabled": True})
    assert r.status_code == 200 and r.json()["disabled_at"]
    assert p.get("/account/me").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=approval.url + "/v1", api_key=key, max_retries=0).models.list()
    log = admin(approval.url, "GET", "/admin/audit").json()["data"]
    actions = {(e["actor"], e["action"]) for e in log}
    assert ("admin-key", "user.update") in actions
    assert ("admin-key", "access_request.approve") in actions
    assert ("fay@example.org", "key.create") in actions
    assert all(e["address"] == "127.0.0.1" for e in log)
    assert admin(approval.url, "PATCH", f"/admin/users/{uid}", {"role": "owner"}).status_code == 400


def test_an_admin_session_drives_the_admin_api_with_csrf(approval):
    made = admin(approval.url, "POST", "/admin/users", {"email": "root@example.org", "name": "Root", "role": "admin", "password": "root-password"})
    assert made.status_code == 201 and "set_password_url" not in made.json()
    p = Person(approval.url)
    p.sign_in("root@example.org", "root-password")
    assert p.s.get(approval.url + "/admin/users", timeout=30).status_code == 403, "no CSRF token"
    users = p.s.get(approval.url + "/admin/users", headers={"X-CSRF-Token": p.csrf}, timeout=30)
    assert users.status_code == 200 and "root@example.org" in users.text
    k = p.post("/admin/keys", {"name": "made by root"})
    assert k.status_code == 201
    log = admin(approval.url, "GET", "/admin/audit").json()["data"]
    assert any(e["actor"] == "root@example.org" and e["action"] == "key.create" for e in log)
    # An admin cannot lock themselves out.
    me = p.get("/account/me").json()["user"]["id"]
    assert p.s.patch(approval.url + f"/admin/users/{me}", json={"disabled": True}, headers={"X-CSRF-Token": p.csrf}, timeout=30).status_code == 400


def test_passwords_sessions_and_keys_never_reach_the_store_or_log_in_clear(approval):
    p = approved_person(approval, "gus@example.org", "gus-secret-password")
    key = p.post("/account/keys", {"name": "k"}).json()["key"]
    p2 = Person(approval.url)
    p2.sign_in("gus@example.org", "gus-secret-password")
    session = p2.s.cookies.get("parlance_session")
    secrets = ["gus-secret-password", session, key.split("-")[-1], p2.csrf]
    con = sqlite3.connect(approval.db, timeout=10)
    con.execute("PRAGMA wal_checkpoint(FULL)")
    con.close()
    for path in (approval.db, approval.db + "-wal", approval.log_path):
        try:
            data = open(path, "rb").read()
        except FileNotFoundError:
            continue
        for s in secrets:
            assert s.encode() not in data, (path, s[:8])
    stored = sqlite3.connect(approval.db).execute("SELECT password_hash FROM users WHERE email = 'gus@example.org'").fetchone()[0]
    assert stored.startswith("$argon2id$")


def test_closed_signup_refuses_and_open_signup_gives_a_first_key():
    d = tempfile.mkdtemp(prefix="parlance-accounts-")
    closed = Server("-m", GGUF, "--alias", MODEL, "-np", "1", "-c", "1024", "--db", f"sqlite://{d}/c.db")
    try:
        r = requests.post(closed.url + "/account/signup", json={"name": "x", "email": "x@example.org"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "signup_closed"
        assert requests.get(closed.url + "/account/config", timeout=30).json()["signup"] == "closed"
    finally:
        closed.stop()
    cfg = pathlib_write(d, "open.toml", '[accounts]\nsignup = "open"\n[accounts.plan]\nrpm = 5\nmax_keys = 2\n')
    s = Server("-m", GGUF, "--alias", MODEL, "-np", "1", "-c", "1024", "--n-predict", "4", "--config", cfg, "--db", f"sqlite://{d}/o.db")
    try:
        p = Person(s.url)
        r = p.post("/account/signup", {"name": "Hana", "email": "hana@example.org", "password": "hana-password", "intended_use": "tests"}, csrf=False)
        assert r.status_code == 201, r.text
        body = r.json()
        p.csrf = body["csrf_token"]
        assert body["key"]["rpm"] == 5
        out = OpenAI(base_url=s.url + "/v1", api_key=body["key"]["key"], max_retries=0).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert out.choices[0].finish_reason in ("stop", "length")
        # Within the plan only, and no more keys than it allows.
        over = p.post("/account/keys", {"name": "fast", "rpm": 6})
        assert over.status_code == 400 and over.json()["error"]["param"] == "rpm"
        assert p.post("/account/keys", {"name": "second", "rpm": 3}).json()["rpm"] == 3
        third = p.post("/account/keys", {"name": "third"})
        assert third.status_code == 409 and third.json()["error"]["code"] == "too_many_keys"
        short = requests.post(s.url + "/account/signup", json={"name": "I", "email": "i@example.org", "password": "short"}, timeout=30)
        assert short.status_code == 400 and short.json()["error"]["param"] == "password"
    finally:
        s.stop()


def pathlib_write(d, name, text):
    path = f"{d}/{name}"
    with open(path, "w") as f:
        f.write(text)
    return path


def test_the_cli_makes_the_first_admin_who_signs_in():
    d = tempfile.mkdtemp(prefix="parlance-accounts-")
    db = f"sqlite://{d}/cli.db"
    made = subprocess.run([str(BIN), "users", "create", "--email", "Boss@Example.org", "--name", "Boss", "--role", "admin", "--password-stdin", "--db", db],
                          input="boss-password\n", capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    invited = subprocess.run([str(BIN), "users", "create", "--email", "new@example.org", "--name", "New", "--db", db, "--public-url", "https://llm.example.org"],
                             capture_output=True, text=True, timeout=60)
    assert "https://llm.example.org/account#set-password=prl_l_" in invited.stdout
    listed = subprocess.run([str(BIN), "users", "list", "--db", db], capture_output=True, text=True, timeout=60).stdout
    assert "boss@example.org" in listed and "invited" in listed
    s = Server("-m", GGUF, "--alias", MODEL, "-np", "1", "-c", "1024", "--db", db)
    try:
        p = Person(s.url)
        p.sign_in("boss@example.org", "boss-password")
        # No --admin-key: an admin's session alone opens the admin API.
        r = p.s.get(s.url + "/admin/users", headers={"X-CSRF-Token": p.csrf}, timeout=30)
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        assert requests.get(s.url + "/admin/users", timeout=30).status_code == 401
    finally:
        s.stop()
    off = subprocess.run([str(BIN), "users", "disable", "new@example.org", "--db", db], capture_output=True, text=True, timeout=60)
    assert off.returncode == 0 and "disabled new@example.org" in off.stdout
    # Teams, credit and codes from the CLI too.
    run = lambda *a: subprocess.run([str(BIN), *a, "--db", db], capture_output=True, text=True, timeout=60)
    team_id = run("teams", "create", "--name", "Lab", "--rpm", "30").stdout.split()[0]
    assert team_id.startswith("team_")
    assert "boss@example.org is an admin" in run("teams", "add", "--team", team_id, "--email", "boss@example.org", "--role", "admin").stdout
    assert "$12.5000 credited" in run("teams", "credit", "--team", team_id, "--usd", "12.5", "--note", "grant").stdout
    assert "$12.5000 left" in run("teams", "list").stdout and "boss@example.org (admin)" in run("teams", "list").stdout
    codes = run("codes", "create", "--count", "3", "--usd", "2").stdout.split()
    assert len(codes) == 3 and all(c.startswith("PRL-") for c in codes)
    assert run("teams", "credit", "--team", "team_nope", "--usd", "1", "--note", "x").returncode != 0


def test_one_time_links_are_mailed_when_smtp_is_configured():
    """A real SMTP server (aiosmtpd) receives the approval mail; its link sets the
    password. With the mail server gone, the admin still gets the link."""
    from aiosmtpd.controller import Controller
    from email import message_from_bytes

    class Inbox:
        def __init__(self):
            self.mails = []

        async def handle_DATA(self, server, session, envelope):
            self.mails.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
            return "250 OK"

    from conftest import free_port
    inbox, port = Inbox(), free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    d = tempfile.mkdtemp(prefix="parlance-mail-")
    cfg = pathlib_write(d, "mail.toml", f'[accounts.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nfrom = "Parlance <noreply@llm.example.org>"\n')
    s = Server("-m", GGUF, "--alias", MODEL, "-np", "1", "-c", "1024", "--config", cfg, "--signup", "approval", "--admin-key", ADMIN,
               "--public-url", "https://llm.example.org", "--db", f"sqlite://{d}/m.db")
    try:
        rid = requests.post(s.url + "/account/signup", json={"name": "Mila", "email": "mila@example.org"}, timeout=30).json()["id"]
        out = admin(s.url, "POST", f"/admin/access-requests/{rid}/approve").json()
        assert out["mailed"] is True and out["set_password_url"].startswith("https://llm.example.org/account#set-password=prl_l_")
        (to, mail), = inbox.mails
        assert to == ["mila@example.org"] and mail["From"] == "Parlance <noreply@llm.example.org>"
        text = mail.get_payload(decode=True).decode()
        assert "Hello Mila" in text and out["set_password_url"] in text
        token = text.split("#set-password=")[1].split()[0]
        r = requests.post(s.url + "/account/password", json={"token": token, "password": "mila-password"}, timeout=30)
        assert r.status_code == 200 and r.json()["user"]["email"] == "mila@example.org"
        # The mail server goes away: the link is still in the admin's answer.
        smtp.stop()
        made = admin(s.url, "POST", "/admin/users", {"email": "nils@example.org", "name": "Nils"}).json()
        assert made["mailed"] is False and "#set-password=prl_l_" in made["set_password_url"]
    finally:
        s.stop()
