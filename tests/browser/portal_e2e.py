"""Browser users, end to end, in Debian's Chromium driven by Selenium.

Started by the Rust test `browser::chromium` (tests/it/browser.rs), which
boots the gateway and passes everything as JSON in argv[1]. The test clock
belongs to the Rust side: this script asks for it on stdout
("ADVANCE <secs>", "MAILTOKEN <email> <link>") and reads the answer on
stdin. Every check is an assert; any failure exits non-zero and fails the
Rust test. Nothing is downloaded: the browser and driver are the system's
(/usr/bin/chromium, /usr/bin/chromedriver), and Selenium Manager is never
asked for one.
"""

import http.server
import json
import signal
import ssl
import sys
import threading


from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.virtual_authenticator import (  # noqa: E402
    Protocol,
    Transport,
    VirtualAuthenticatorOptions,
)
import common  # noqa: E402
from common import ask, step  # noqa: E402

CFG = json.loads(sys.argv[1])
GW = CFG["gateway"]  # https://localhost:<tls port>
EMAIL = CFG["email"]
PASSWORD = CFG["password"]
SHOTS = CFG["screenshots"]

signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("browser test took over 240 s")))
signal.alarm(240)


# ----- the two other origins: an attacker's and an allowed app's

ATTACK = """<!doctype html><html><head><title>Win a prize</title></head><body>
<form id="f" method="post" action="{gw}/app/transfer">
<input name="amount" value="1000"><input name="to" value="mallory">
</form><script>document.getElementById('f').submit();</script></body></html>"""
BLANK = "<!doctype html><html><head><title>app</title></head><body><p>app</p></body></html>"


def serve(port):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (ATTACK.format(gw=GW) if self.path == "/csrf" else BLANK).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CFG["cert"], CFG["key"])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


servers = [serve(CFG["evil_port"]), serve(CFG["allowed_port"])]
EVIL = f"https://localhost:{CFG['evil_port']}"
ALLOWED = f"https://localhost:{CFG['allowed_port']}"

# ----- the browser

driver = common.chrome(CFG, "portcullis-chromium-")

# A page may be replaced while it is read (a form submits, a script
# navigates): waits read again instead of failing.
ui = common.Actions(driver, SHOTS)
wait = ui.wait
shot = ui.shot
at = ui.at
act = ui.act
fill = ui.fill
submit = ui.submit
click = ui.click
text_of = ui.text_of
present = ui.present
page = ui.page




def session_cookie():
    return next((c for c in driver.get_cookies() if c["name"] == "__Host-portcullis"), None)


try:
    # (1) A browser is sent to the portal, signs up, signs in, and arrives.
    step("redirect")
    driver.get(f"{GW}/app/dashboard?tab=1")
    at("/auth/ui/login?rd=%2Fapp%2Fdashboard%3Ftab%3D1")
    assert text_of(By.CSS_SELECTOR, "label[for=email]") == "Email"
    shot("login")
    click(By.LINK_TEXT, "Create an account")
    at("/auth/ui/register")
    fill("email", EMAIL)
    fill("password", PASSWORD)
    fill("password_confirm", PASSWORD)
    shot("register")
    submit("Create account")
    wait.until(lambda d: "Account created" in page())

    step("email verified")
    token = ask(f"MAILTOKEN {EMAIL} /auth/email/verify")
    driver.get(f"{GW}/auth/email/verify?token={token}")
    at("/auth/ui/verify")
    shot("verify")
    submit("Confirm my email address")
    wait.until(lambda d: "Email verified" in page())
    shot("verified")

    step("sign in")
    driver.get(f"{GW}/app/dashboard?tab=1")
    at("/auth/ui/login")
    fill("email", EMAIL)
    fill("password", "not the password")
    submit("Sign in")
    wait.until(lambda d: "The email or password is incorrect." in page())
    shot("login-error")
    fill("email", EMAIL)
    fill("password", PASSWORD)
    submit("Sign in")
    at("/app/dashboard?tab=1")
    echo = page()
    assert EMAIL in echo and "x-user-email" in echo.lower(), echo
    c = session_cookie()
    assert c and c["httpOnly"] and c["secure"] and c.get("sameSite") == "Lax", c
    assert "." not in c["value"], "the cookie is no JWT"
    first = c["value"]

    step("sessions page")
    driver.get(f"{GW}/auth/ui/sessions")
    wait.until(lambda d: "Your sessions" in page())
    assert text_of(By.ID, "amr") == "pwd"
    shot("sessions", 1200)

    # (2) The access token expires; the next request refreshes by itself.
    step("refresh")
    ask("ADVANCE 931")
    driver.get(f"{GW}/app/dashboard?tab=2")
    at("/app/dashboard?tab=2")
    assert EMAIL in page()
    second = session_cookie()["value"]
    assert second != first, "the cookie was rotated"
    driver.get(f"{GW}/app/dashboard?tab=3")
    assert EMAIL in page() and session_cookie()["value"] == second

    # (4) A cross-site form POST from another origin (another port).
    step("cross-site POST")
    driver.get(f"{EVIL}/csrf")
    at("/app/transfer")
    assert "forbidden" in page(), page()

    # (5) CORS: an allowed origin reads the API's answer; another cannot.
    step("CORS")
    script = """
      const done = arguments[arguments.length - 1];
      fetch(arguments[0] + '/auth/login', {
        method: 'POST', credentials: 'include',
        headers: {'content-type': 'application/json'},
        body: JSON.stringify({email: arguments[1], password: arguments[2]})
      }).then(r => r.json()).then(j => done({ok: true, token: !!j.access_token}))
        .catch(e => done({ok: false, error: String(e)}));
    """
    driver.get(f"{ALLOWED}/")
    r = driver.execute_async_script(script, GW, EMAIL, PASSWORD)
    assert r == {"ok": True, "token": True}, r
    driver.get(f"{EVIL}/")
    r = driver.execute_async_script(script, GW, EMAIL, PASSWORD)
    assert r["ok"] is False and "TypeError" in r["error"], r

    # (6) A passkey, registered while signed in.
    step("passkey registration")
    driver.add_virtual_authenticator(
        VirtualAuthenticatorOptions(
            protocol=Protocol.CTAP2,
            transport=Transport.INTERNAL,
            has_resident_key=True,
            has_user_verification=True,
            is_user_consenting=True,
            is_user_verified=True,
        )
    )
    # The sign-in is older than accounts.reauth_secs (the clock moved on):
    # adding a passkey needs the user to confirm it is them first.
    driver.get(f"{GW}/auth/ui/sessions")
    assert present(By.ID, "reauth-needed"), page()
    assert not present(By.ID, "passkey-register"), page()
    click(By.LINK_TEXT, "confirm it is you")
    wait.until(lambda d: "Confirm it is you" in page())
    fill("password", PASSWORD)
    submit("Confirm")
    wait.until(lambda d: "notice=reauthed" in d.current_url)
    fill("passkey-name", "Test key")
    click(By.ID, "passkey-register")
    wait.until(lambda d: "notice=passkey-added" in d.current_url or "could not" in page())
    assert "Passkey added." in page(), page()
    assert "Test key" in text_of(By.ID, "passkeys")
    shot("sessions-passkey", 1250)

    # (3) Sign out: the app is out of reach.
    step("sign out")
    driver.get(f"{GW}/auth/ui/logout")
    shot("logout")
    submit("Sign out")
    wait.until(lambda d: "You have been signed out." in page())
    shot("signed-out")
    assert session_cookie() is None
    driver.get(f"{GW}/app/dashboard?tab=4")
    at("/auth/ui/login?rd=%2Fapp%2Fdashboard%3Ftab%3D4")

    # (6) Sign in with the passkey alone: no email, no password.
    step("passkey sign-in")
    click(By.ID, "passkey-login")
    at("/app/dashboard?tab=4")
    assert EMAIL in page(), page()
    driver.get(f"{GW}/auth/ui/sessions")
    assert text_of(By.ID, "amr") == "webauthn"

    # The remaining portal pages, for the README.
    step("other pages")
    driver.get(f"{GW}/auth/ui/forgot")
    shot("forgot")
    fill("email", EMAIL)
    submit("Send the link")
    wait.until(lambda d: "Check your email" in page())
    token = ask(f"MAILTOKEN {EMAIL} /auth/password/reset")
    driver.get(f"{GW}/auth/password/reset?token={token}")
    at("/auth/ui/reset")
    shot("reset")
    print("PASSED", flush=True)
finally:
    try:
        driver.quit()
    finally:
        for s in servers:
            s.shutdown()
