"""The portal's "Sign in with ..." button in Debian's Chromium (issue 22).

Started by the Rust test `federation::chromium_...` (tests/it/federation.rs),
which boots the gateway and the test OpenID Provider (tests/idp/) and passes
everything as JSON in argv[1]. The browser opens a protected page, is sent
to the portal, clicks the provider's button, signs in on the provider's own
pages (user id, consent), comes back through the gateway's callback with a
session cookie and lands on the page it asked for; the sessions page lists
the linked identity. Every check is an assert; the last line is "PASSED".
Nothing is downloaded: the browser and driver are the system's.
"""

import json
import signal
import sys


from selenium.webdriver.common.by import By  # noqa: E402
import common  # noqa: E402
from common import path_of, step  # noqa: E402

CFG = json.loads(sys.argv[1])
GW = CFG["gateway"]  # https://localhost:<tls port>
IDP = CFG["issuer"]  # http://127.0.0.1:<port>
USER = CFG["user"]
EMAIL = CFG["email"]
BUTTON = CFG["button"]
SHOTS = CFG["screenshots"]

signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("browser test took over 180 s")))
signal.alarm(180)


driver = common.chrome(CFG, "portcullis-chromium-fed-")

ui = common.Actions(driver, SHOTS)
wait = ui.wait
shot = ui.shot


try:
    step("a protected page sends the browser to the portal")
    driver.get(f"{GW}/app/fed?x=1")
    wait.until(lambda d: path_of(d.current_url).startswith("/auth/ui/login"))
    button = wait.until(
        lambda d: d.find_element(
            By.XPATH,
            f"//*[self::a or self::button][contains(normalize-space(.), '{BUTTON}')]",
        )
    )
    shot("federation-portal-button")
    step("the provider's button leads to the provider")
    button.click()
    wait.until(lambda d: d.current_url.startswith(IDP + "/interaction/"))
    field = wait.until(lambda d: d.find_element(By.NAME, "user"))
    field.send_keys(USER)
    shot("federation-provider-login")
    field.submit()
    step("consent at the provider")
    allow = wait.until(
        lambda d: d.find_element(By.XPATH, "//button[normalize-space(.)='Allow']")
    )
    allow.click()
    step("back through the callback to the page asked for")
    wait.until(lambda d: d.current_url.startswith(GW) and path_of(d.current_url) == "/app/fed?x=1")
    body = driver.find_element(By.TAG_NAME, "body").text
    echo = json.loads(body)
    seen = [v for (n, v) in echo["headers"] if n.lower() == "x-user-email"]
    assert seen == [EMAIL], seen
    cookie = next((c for c in driver.get_cookies() if c["name"] == "__Host-portcullis"), None)
    assert cookie and cookie["secure"] and cookie["httpOnly"], cookie
    step("the sessions page lists the linked identity")
    driver.get(f"{GW}/auth/ui/sessions")
    wait.until(lambda d: path_of(d.current_url).startswith("/auth/ui/sessions"))
    page = driver.page_source
    assert BUTTON in page and EMAIL in page and "Unlink" in page, page
    shot("federation-sessions")
    print("PASSED", flush=True)
finally:
    driver.quit()
