"""One sign-in across two hosts (issue 24, `browser.cookie_domain`), in
Debian's Chromium driven by Selenium.

Started by the Rust test `browser_hosts::chromium_signs_in_once_for_two_hosts`
(tests/it/browser_hosts.rs), which boots the gateway with two host routes
(app1 and app2 under portcullis.test), the portal on auth.portcullis.test
and `cookie_domain = "portcullis.test"`, and passes everything as JSON in
argv[1]. Every name under portcullis.test (and evil.test) resolves to
127.0.0.1 through Chromium's `--host-resolver-rules`; nothing else is
resolved. Every check is an assert; any failure exits non-zero and fails
the Rust test. Nothing is downloaded.
"""

import json
import signal
import sys
import urllib.parse


from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    WebDriverException,
)
import common  # noqa: E402
from common import step  # noqa: E402

CFG = json.loads(sys.argv[1])
PORT = CFG["port"]  # the gateway's TLS port
EMAIL = CFG["email"]
PASSWORD = CFG["password"]
APP1 = f"https://app1.portcullis.test:{PORT}"
APP2 = f"https://app2.portcullis.test:{PORT}"
AUTH = f"https://auth.portcullis.test:{PORT}"

signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("browser test took over 180 s")))
signal.alarm(180)


driver = common.chrome(CFG, "portcullis-chromium-hosts-", ["--host-resolver-rules=MAP *.portcullis.test 127.0.0.1, MAP evil.test 127.0.0.1"])

ui = common.Actions(driver)
wait = ui.wait
act = ui.act
fill = ui.fill
submit = ui.submit
page = ui.page


def where():
    u = urllib.parse.urlsplit(driver.current_url)
    return u.hostname, u.path + ("?" + u.query if u.query else "")


def at(host, path):
    """Wait until the browser shows `path` (a prefix) on `host`."""
    try:
        wait.until(lambda d: where()[0] == host and where()[1].startswith(path))
    except Exception as e:
        try:
            shown = driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:
            shown = "?"
        raise AssertionError(f"not at {host}{path} but at {driver.current_url}: {shown}") from e


def echoed_email():
    """The `x-user-email` the upstream received, from its JSON echo."""
    echo = json.loads(page())
    found = [v for k, v in echo["headers"] if k.lower() == "x-user-email"]
    return found, echo


def sign_in():
    fill("email", EMAIL)
    fill("password", PASSWORD)
    submit("Sign in")


try:
    # (1) app1's unauthenticated navigation goes to the portal's host.
    step("app1 sends the browser to the portal")
    driver.get(f"{APP1}/dashboard?tab=1")
    rd = urllib.parse.quote(f"{APP1}/dashboard?tab=1", safe="")
    at("auth.portcullis.test", f"/auth/ui/login?rd={rd}")

    # (2) One sign-in there, and back on app1 with the identity.
    step("sign in once on the portal")
    sign_in()
    at("app1.portcullis.test", "/dashboard?tab=1")
    emails, echo = echoed_email()
    assert emails == [EMAIL], echo
    assert echo["path"] == "/dashboard?tab=1", echo
    cookies = [c for c in driver.get_cookies() if c["name"].startswith("__Secure-portcullis")]
    assert len(cookies) == 1, driver.get_cookies()
    c = cookies[0]
    assert c["domain"].lstrip(".") == "portcullis.test", c
    assert c["secure"] and c["httpOnly"] and c.get("sameSite") == "Lax", c
    assert not any(n.startswith("__Host-portcullis=") for n in [x["name"] + "=" for x in driver.get_cookies()])
    # The session cookie never reaches the app.
    cookie_lines = [v for k, v in echo["headers"] if k.lower() == "cookie"]
    assert all("portcullis" not in v for v in cookie_lines), echo

    # (3) app2, never visited: the upstream at once, no second sign-in.
    step("app2 without a second sign-in")
    driver.get(f"{APP2}/reports")
    at("app2.portcullis.test", "/reports")
    emails, echo = echoed_email()
    assert emails == [EMAIL], echo
    assert [v for k, v in echo["headers"] if k.lower() == "x-forwarded-host"] == [
        "app2.portcullis.test"
    ], echo

    # (4) rd naming a foreign host, or a name under the domain no route
    # serves, is refused: a fresh browser state signs in and stays on the
    # portal's host.
    for foreign in ["https://evil.test:%d/steal" % PORT, f"https://evil.portcullis.test:{PORT}/steal"]:
        step(f"rd to {foreign} refused")
        driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        driver.get(f"{AUTH}/auth/ui/login?rd={urllib.parse.quote(foreign, safe='')}")
        at("auth.portcullis.test", "/auth/ui/login")
        rd_value = act("read rd", lambda: driver.find_element(By.NAME, "rd").get_attribute("value"))
        assert "evil" not in rd_value, rd_value
        sign_in()
        wait.until(lambda d: where()[1].split("?")[0] != "/auth/ui/login" or "incorrect" in page())
        host, path = where()
        assert host == "auth.portcullis.test", driver.current_url
        assert "evil" not in driver.current_url, driver.current_url

    print("PASSED", flush=True)
finally:
    driver.quit()
