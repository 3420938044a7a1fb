"""The self-service console in headless Chromium: open sign-up to the first API call
with no admin action; approval with one admin click in the dashboard; My usage shows
exactly the requests made. Screenshots go beside the console's."""

import re
import tempfile

import requests
from openai import OpenAI
from selenium.webdriver.common.by import By

from conftest import MODEL, ROOT, Server
from test_console import browser, no_console_errors, shot, wait  # noqa: F401 (fixture)

GGUF = str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
ADMIN = "console-accounts-admin"


def fill(d, **fields):
    for id_, value in fields.items():
        e = d.find_element(By.ID, id_.replace("_", "-"))
        e.clear()
        e.send_keys(value)


def usage_rows(d):
    return d.execute_script(
        "return [...document.querySelectorAll('#usage-table tbody tr')].map(r => [...r.cells].map(c => c.textContent));")


def test_open_signup_in_the_browser_to_the_first_api_call(browser):
    d = browser
    db = tempfile.mkdtemp(prefix="parlance-accounts-ui-")
    s = Server("-m", GGUF, "--alias", MODEL, "-np", "1", "-c", "1024", "--n-predict", "4", "--signup", "open", "--db", f"sqlite://{db}/p.db")
    try:
        d.delete_all_cookies()
        d.get(s.url + "/signup")
        wait(d, lambda d: d.find_element(By.ID, "signup").is_displayed() and d.find_element(By.ID, "su-password").is_displayed(), what="form")
        fill(d, su_name="Ivana Petrova", su_email="ivana@example.org", su_org="Sofia University", su_use="Course assistant", su_password="ivana-password")
        shot(d, "account-signup-open")
        d.find_element(By.CSS_SELECTOR, "#signup button[type=submit]").click()
        key = wait(d, lambda d: d.find_element(By.ID, "new-key-value").text.strip(), what="first key shown")
        assert key.startswith("sk-prl-")
        shot(d, "account-first-key")
        # The key works in the official SDK at once: no admin did anything.
        client = OpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0, timeout=120)
        for _ in range(2):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        # My usage shows exactly those two requests.
        d.refresh()
        wait(d, lambda d: d.find_element(By.ID, "home").is_displayed(), what="still signed in")
        d.find_element(By.CSS_SELECTOR, "#u-group option[value=model]").click()
        # The table keeps its rows by day until the regrouped ones arrive.
        by_day = re.compile(r"\d{4}-\d{2}-\d{2}$")
        rows = wait(d, lambda d: (r := usage_rows(d)) and not by_day.match(r[0][0]) and r, what="usage by model")
        assert rows[0][0] == MODEL and rows[0][1] == "2", rows
        shot(d, "account-my-usage")
        # The HttpOnly cookie is invisible to scripts.
        assert "parlance_session" not in d.execute_script("return document.cookie")
        no_console_errors(d)
    finally:
        s.stop()


def test_approval_takes_one_admin_click_then_the_person_sets_a_password(browser):
    d = browser
    db = tempfile.mkdtemp(prefix="parlance-accounts-ui-")
    s = Server("-m", GGUF, "--alias", MODEL, "-np", "1", "-c", "1024", "--signup", "approval", "--admin-key", ADMIN, "--db", f"sqlite://{db}/p.db")
    try:
        d.delete_all_cookies()
        d.get(s.url + "/signup")
        wait(d, lambda d: d.find_element(By.ID, "signup").is_displayed(), what="form")
        assert not d.find_element(By.ID, "su-password").is_displayed()
        fill(d, su_name="Georgi", su_email="georgi@example.org", su_org="BAS", su_use="Research")
        d.find_element(By.CSS_SELECTOR, "#signup button[type=submit]").click()
        wait(d, lambda d: "administrator will review" in d.find_element(By.ID, "signup-done").text, what="request sent")

        # The admin: key, People tab, one click.
        d.get(s.url + "/admin")
        wait(d, lambda d: d.find_element(By.ID, "login").is_displayed(), what="admin login")
        fill(d, admin_key=ADMIN)
        d.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait(d, lambda d: d.find_element(By.ID, "dash").is_displayed(), what="dashboard")
        d.find_element(By.ID, "tab-people").click()
        button = wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "button[aria-label='Approve georgi@example.org']"), what="request listed")
        shot(d, "admin-people-request")
        button.click()
        link = wait(d, lambda d: d.find_element(By.ID, "link-value").text.strip(), what="link shown")
        assert "/account#set-password=" in link
        wait(d, lambda d: "access_request.approve" in d.find_element(By.ID, "audit-table").text, what="audited")
        shot(d, "admin-people-approved")

        # The person opens the link, chooses a password, makes a key.
        d.execute_script("sessionStorage.clear()")
        d.get(link)
        wait(d, lambda d: d.find_element(By.ID, "set-password").is_displayed(), what="set password form")
        fill(d, sp_password="georgi-password", sp_confirm="georgi-password")
        d.find_element(By.CSS_SELECTOR, "#set-password button[type=submit]").click()
        wait(d, lambda d: d.find_element(By.ID, "home").is_displayed(), what="signed in")
        assert "#set-password" not in d.current_url, "the token leaves the address bar"
        fill(d, k_name="notebook")
        d.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
        key = wait(d, lambda d: d.find_element(By.ID, "new-key-value").text.strip(), what="key shown")
        r = requests.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
        shot(d, "account-my-keys")
        # Revoking it in My keys stops it at once.
        d.execute_script("window.confirm = () => true")
        d.find_element(By.CSS_SELECTOR, "#keys-table button.danger").click()
        wait(d, lambda d: "revoked" in d.find_element(By.ID, "keys-table").text, what="revoked")
        assert requests.get(s.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 401
        no_console_errors(d)
    finally:
        s.stop()


def test_teams_and_balances_in_the_browser(browser):
    """The admin makes a team and codes in the dashboard; the team's admin manages it
    and redeems a code in /account; the team key spends the team's balance."""
    d = browser
    db = tempfile.mkdtemp(prefix="parlance-accounts-ui-")
    s = Server("-m", GGUF, "--alias", MODEL, "-np", "1", "-c", "1024", "--prepaid", "--admin-key", ADMIN, "--db", f"sqlite://{db}/p.db")
    try:
        made = requests.post(s.url + "/admin/users", headers={"Authorization": f"Bearer {ADMIN}"},
                             json={"email": "lead@example.org", "name": "Lead", "password": "lead-password"}, timeout=30).json()
        d.delete_all_cookies()
        d.get(s.url + "/admin")
        wait(d, lambda d: d.find_element(By.ID, "login").is_displayed(), what="admin login")
        fill(d, admin_key=ADMIN)
        d.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait(d, lambda d: d.find_element(By.ID, "dash").is_displayed(), what="dashboard")
        d.find_element(By.ID, "tab-people").click()
        fill(d, t_name="Lab", t_rpm="30")
        d.find_element(By.CSS_SELECTOR, "#create-team button[type=submit]").click()
        row = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#teams-table tbody tr"), what="team listed")[0]
        team_id = row.get_attribute("data-team-id")
        requests.put(s.url + f"/admin/teams/{team_id}/members/{made['id']}", headers={"Authorization": f"Bearer {ADMIN}"}, json={"role": "admin"}, timeout=30)
        fill(d, c_count="2", c_amount="1.5", c_note="workshop")
        d.find_element(By.CSS_SELECTOR, "#make-codes button[type=submit]").click()
        codes = wait(d, lambda d: d.find_element(By.ID, "codes-out").text.split(), what="codes shown")
        assert len(codes) == 2 and all(c.startswith("PRL-") for c in codes)
        shot(d, "admin-people-teams")

        d.execute_script("sessionStorage.clear()")
        d.get(s.url + "/signin")
        wait(d, lambda d: d.find_element(By.ID, "signin").is_displayed(), what="sign-in form")
        fill(d, si_email="lead@example.org", si_password="lead-password")
        d.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()
        wait(d, lambda d: d.find_element(By.ID, "teams-card").is_displayed(), what="teams card")
        d.find_element(By.CSS_SELECTOR, f"#teams-table tr[data-team-id='{team_id}'] button").click()
        wait(d, lambda d: d.find_element(By.ID, "team-panel").is_displayed(), what="team panel")
        fill(d, m_email="newcomer@example.org")
        d.find_element(By.CSS_SELECTOR, "#add-member button[type=submit]").click()
        link = wait(d, lambda d: d.find_element(By.ID, "invite-link").text.strip(), what="invitation")
        assert "/account#set-password=" in link
        wait(d, lambda d: "newcomer@example.org" in d.find_element(By.ID, "members-table").text, what="member listed")
        fill(d, tk_name="lab key")
        d.find_element(By.CSS_SELECTOR, "#team-key button[type=submit]").click()
        key = wait(d, lambda d: d.find_element(By.ID, "team-new-key-value").text.strip(), what="team key")
        # Nothing credited yet: the team key is refused with the door's quota error.
        r = requests.post(s.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
        assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
        # A code redeemed to the person's own balance does not pay for the team key.
        fill(d, r_code=codes[0])
        d.find_element(By.CSS_SELECTOR, "#redeem button[type=submit]").click()
        wait(d, lambda d: d.find_element(By.ID, "balance-text").text.startswith("$1.5000 left"), what="balance")
        r = requests.post(s.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
        assert r.status_code == 429, "the team pays for team keys"
        shot(d, "account-teams")
        no_console_errors(d)
    finally:
        s.stop()


def test_the_embeddings_view_compares_texts(browser):
    """The console's embeddings view on all-MiniLM-L6-v2: texts in, a cosine matrix
    out, with related sentences closer than unrelated ones."""
    d = browser
    s = Server("-m", str(ROOT / "models" / "all-minilm-l6-v2.f16.gguf"), "--alias", "minilm", "--db", "none")
    try:
        d.get(s.url + "/embeddings")
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#e-model option[value=minilm]"), what="embedding models listed")
        d.find_element(By.CSS_SELECTOR, "#embed-form button[type=submit]").click()
        wait(d, lambda d: d.find_element(By.ID, "e-result").is_displayed(), what="matrix")
        sims = d.execute_script(
            "return [...document.querySelectorAll('#e-matrix tbody tr')].map(r => [...r.querySelectorAll('td')].map(c => Number(c.dataset.sim)));")
        assert len(sims) == 3 and all(abs(sims[i][i] - 1) < 1e-3 for i in range(3)), sims
        assert sims[0][1] > sims[0][2] + 0.2 and abs(sims[0][1] - sims[1][0]) < 1e-6, sims
        assert "3 vectors of 384 dimensions" in d.find_element(By.ID, "e-usage").text
        shot(d, "embeddings-view")
        no_console_errors(d)
    finally:
        s.stop()
