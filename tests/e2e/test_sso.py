"""Single sign-on against a real OpenID Connect provider (npm `oidc-provider` under
node, started here), with Chromium going through its login and consent pages: first
sign-in makes the account, groups map to the admin role and to teams, other domains
and replayed callbacks are refused. ID token defects (audience, expiry, signature,
nonce) are refused by the server's own unit tests, where a token can be forged."""

import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest
import requests
from selenium.webdriver.common.by import By

from conftest import MODEL, ROOT, Server, free_port
from test_console import browser, no_console_errors, shot, wait  # noqa: F401 (fixture)

GGUF = str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
OIDC_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "parlance" / "oidc"


@pytest.fixture(scope="module")
def sso():
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError("no oidc-provider: scripts/setup.sh --test installs it")
    # The script sits beside its node_modules, where ESM imports look.
    shutil.copy(ROOT / "tests" / "e2e" / "oidc_provider.mjs", OIDC_DIR / "oidc_provider.mjs")
    idp_port = free_port()
    issuer = f"http://127.0.0.1:{idp_port}"
    d = tempfile.mkdtemp(prefix="parlance-sso-")
    with open(f"{d}/sso.toml", "w") as f:
        f.write(f'''[[models]]
name = "{MODEL}"
deployments = [{{ gguf = "{GGUF}" }}]

[accounts.oidc]
issuer = "{issuer}"
client_id = "parlance"
client_secret_env = "TEST_OIDC_SECRET"
scopes = ["openid", "email", "profile", "groups"]
allowed_domains = ["uni.example"]
admin_groups = ["parlance-admins"]
label = "Sign in with Uni ID"
[accounts.oidc.teams]
staff = "Staff"
''')
    s = Server("-np", "1", "-c", "1024", "--config", f"{d}/sso.toml", "--db", f"sqlite://{d}/p.db",
               env={"TEST_OIDC_SECRET": "parlance-test-secret"})
    log = open(f"{d}/idp.log", "w")
    idp = subprocess.Popen(["node", str(OIDC_DIR / "oidc_provider.mjs"), str(idp_port), s.url + "/account/oidc/callback"],
                           stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if requests.get(issuer + "/.well-known/openid-configuration", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        raise RuntimeError(f"the OIDC provider did not start; see {d}/idp.log")
    yield s
    idp.terminate()
    s.stop()


def sign_in_at_provider(d, url, login):
    d.delete_all_cookies()
    d.get(url + "/signin")
    button = wait(d, lambda d: d.find_element(By.ID, "sso") if d.find_element(By.ID, "sso").is_displayed() else None, what="SSO button")
    assert button.text == "Sign in with Uni ID"
    button.click()
    # oidc-provider's development login page, then its consent page.
    field = wait(d, lambda d: d.find_element(By.NAME, "login"), what="provider login")
    field.send_keys(login)
    d.find_element(By.NAME, "password").send_keys("any password")
    d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    consent = "input[name=prompt][value=consent]"
    wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, consent) or "/account" in d.current_url, what="consent")
    if d.find_elements(By.CSS_SELECTOR, consent):
        d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_sso_makes_the_account_maps_groups_and_refuses_other_domains(browser, sso):
    d = browser
    sign_in_at_provider(d, sso.url, "alice")
    wait(d, lambda d: d.find_element(By.ID, "home").is_displayed(), what="signed in")
    assert "alice@uni.example" in d.find_element(By.ID, "who").text
    assert d.find_element(By.ID, "admin-link").is_displayed(), "parlance-admins -> admin"
    shot(d, "account-sso-signed-in")
    # The session works for the account API, and the groups made a team.
    me = d.execute_script("return fetch('/account/me').then(r => r.json())")
    assert me["user"]["role"] == "admin"
    teams = d.execute_script("return fetch('/account/teams').then(r => r.json())")
    assert [t["name"] for t in teams["data"]] == ["Staff"]
    key = d.execute_script(
        "return fetch('/account/keys', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': arguments[0]},"
        " body: JSON.stringify({name: 'sso key'})}).then(r => r.json())", me["csrf_token"])["key"]
    r = requests.get(sso.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200
    no_console_errors(d)

    # A member of another group signs in as a member, in the same team.
    sign_in_at_provider(d, sso.url, "bob")
    wait(d, lambda d: d.find_element(By.ID, "home").is_displayed(), what="bob signed in")
    assert not d.find_element(By.ID, "admin-link").is_displayed()

    # Another domain is refused with a page that says why; no account is made.
    sign_in_at_provider(d, sso.url, "mallory")
    wait(d, lambda d: d.find_elements(By.ID, "sso-error"), what="refusal page")
    assert "elsewhere.example may not sign in" in d.find_element(By.ID, "sso-error").text
    shot(d, "account-sso-refused")


def provider_flow(url, login):
    """The same sign-in without a browser: start, the provider's login and consent
    forms, and the callback URL it sends back (not followed)."""
    import re
    s = requests.Session()
    r = s.get(url + "/account/oidc/start", allow_redirects=False, timeout=30)
    assert r.status_code == 303 and "code_challenge_method=S256" in r.headers["location"]
    r = s.get(r.headers["location"], timeout=30)
    for fields in ({"prompt": "login", "login": login, "password": "x"}, {"prompt": "consent"}):
        action = re.search(r'<form[^>]*action="([^"]+)"', r.text).group(1)
        r = s.post(requests.compat.urljoin(r.url, action), data=fields, allow_redirects=False, timeout=30)
        while r.status_code in (302, 303) and "/account/oidc/callback" not in r.headers["location"]:
            r = s.get(requests.compat.urljoin(r.url, r.headers["location"]), allow_redirects=False, timeout=30)
        if r.status_code in (302, 303):
            return s, r.headers["location"]
    raise AssertionError(r.text[:500])


def test_a_callback_is_refused_when_replayed_or_from_another_browser(sso):
    s, callback = provider_flow(sso.url, "bob")
    # Another browser (no state cookie) cannot use it.
    r = requests.get(callback, allow_redirects=False, timeout=30)
    assert r.status_code == 400 and "not started in this browser" in r.text
    # This browser signs in once...
    r = s.get(callback, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/account"
    assert s.get(sso.url + "/account/me", timeout=30).json()["user"]["email"] == "bob@uni.example"
    # ...and the same answer replayed, with its cookie, is refused.
    again = requests.get(callback, cookies={"parlance_oidc": s.cookies.get("parlance_oidc") or callback.split("state=")[1].split("&")[0]},
                         allow_redirects=False, timeout=30)
    assert again.status_code == 400 and "already used or has expired" in again.text
    # A forged code with a fresh state is refused by the provider, and nobody signs in.
    s2, callback2 = provider_flow(sso.url, "bob")
    forged = callback2.replace("code=", "code=forged")
    r = s2.get(forged, allow_redirects=False, timeout=30)
    assert r.status_code == 401 and "refused the code" in r.text
    assert s2.get(sso.url + "/account/me", timeout=30).status_code == 401
