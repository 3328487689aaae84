"""The admin console, end to end, in Debian's Chromium driven by Selenium.

Started by the Rust test `console::chromium_runs_the_console`
(tests/it/console.rs), which boots the gateway with `[admin_console]`,
creates the administrator (TOTP on) and the user they look after, and
passes everything as JSON in argv[1]. The test clock belongs to the Rust
side: this script asks it on stdout ("TOTP" for the administrator's code
now, "MAILTOKEN <email> <link>") and reads the answer on stdin. Every check
is an assert; any failure exits non-zero and fails the Rust test. Nothing
is downloaded (the system's /usr/bin/chromium and chromedriver).
"""

import json
import os
import signal
import sys
import tempfile


from selenium.webdriver.common.by import By  # noqa: E402
import common  # noqa: E402
from common import ask, step  # noqa: E402

CFG = json.loads(sys.argv[1])
GW = CFG["gateway"]
ADMIN = CFG["admin"]
USER = CFG["user"]
PASSWORD = CFG["password"]
SHOTS = CFG["screenshots"]

signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("console test took over 200 s")))
signal.alarm(200)


driver = common.chrome(CFG, "portcullis-console-", browser_log=True)

ui = common.Actions(driver, SHOTS)
wait = ui.wait
shot = ui.shot
at = ui.at
act = ui.act
fill = ui.fill
submit = ui.submit
click = ui.click
text_of = ui.text_of
page = ui.page




def done(text):
    """An action's result, shown on the user page it leads back to."""
    wait.until(lambda d: "done=" in d.current_url and text in text_of(By.ID, "done"))


def render_dashboard():
    """Each panel of the dashboard: its title, what it shows, and the
    current total of every metric its queries name, read from the running
    gateway's /metrics (what Grafana would chart over time)."""
    import html
    import re
    import urllib.request

    text = urllib.request.urlopen(CFG["metrics"], timeout=10).read().decode()
    totals = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    with open(CFG["dashboard"]) as f:
        dash = json.load(f)
    parts = []
    for p in dash["panels"]:
        if p["type"] == "row":
            parts.append(f'<h2>{html.escape(p["title"])}</h2>')
            continue
        rows = []
        for t in p["targets"]:
            for m in sorted(set(re.findall(r"portcullis_[a-z0-9_]+", t["expr"]))):
                v = totals.get(m)
                shown = "—" if v is None else f"{v:g}"
                rows.append(f"<tr><td><code>{html.escape(m)}</code></td><td>{shown}</td></tr>")
        width = max(p["gridPos"]["w"] * 4 - 1, 20)
        parts.append(
            f'<section style="width:{width}%"><h3>{html.escape(p["title"])}</h3>'
            f'<p>{html.escape(p["description"])}</p><table>{"".join(rows)}</table></section>'
        )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(dash["title"])}</title>
<style>body{{font:14px system-ui,sans-serif;background:#111217;color:#ccccdc;margin:16px}}
h1{{font-size:20px}} h2{{font-size:15px;width:100%;margin:14px 0 4px;color:#fff}}
main{{display:flex;flex-wrap:wrap;gap:8px}} section{{background:#181b1f;border:1px solid #2c3235;border-radius:4px;padding:8px;box-sizing:border-box}}
h3{{margin:0 0 4px;font-size:14px;color:#fff}} p{{margin:0 0 6px;font-size:12px;color:#8e8e9a}}
td{{padding:1px 8px 1px 0;font-size:12px}} td:last-child{{text-align:right;color:#73bf69;font-weight:600}}</style></head>
<body><h1>{html.escape(dash["title"])} — {html.escape(dash["description"])}</h1><main>{"".join(parts)}</main></body></html>"""
    out = os.path.join(tempfile.mkdtemp(prefix="portcullis-dashboard-"), "dashboard.html")
    with open(out, "w") as f:
        f.write(doc)
    driver.get(f"file://{out}")
    assert "Sign-ins by outcome" in page(), page()
    shot("dashboard", 1400)


try:
    step("sign in with a second factor")
    driver.get(f"{GW}/auth/ui/admin/")
    at("/auth/ui/login?rd=%2Fauth%2Fui%2Fadmin%2F")
    fill("email", ADMIN)
    fill("password", PASSWORD)
    submit("Sign in")
    wait.until(lambda d: "Two-step verification" in page())
    fill("code", ask("TOTP"))
    submit("Verify")
    at("/auth/ui/admin/")
    assert ADMIN in text_of(By.ID, "who")

    step("search")
    fill("q", USER.split("@")[0][:4])
    submit("Search")
    wait.until(lambda d: "q=" in d.current_url)
    rows = text_of(By.ID, "users")
    assert USER in rows and ADMIN not in rows, rows
    shot("console-search")
    click(By.LINK_TEXT, USER)
    at("/auth/ui/admin/user?id=")
    sessions = text_of(By.ID, "sessions")
    assert "Firefox 133 on Linux" in sessions, sessions
    assert "Gecko/" not in sessions, sessions
    assert "deploy" in text_of(By.ID, "api-keys")
    assert text_of(By.ID, "totp") == "on"
    shot("console-user", 1500)

    step("roles")
    fill("role", "ops")
    submit("Add role")
    done("Role added")
    assert "ops" in text_of(By.ID, "roles")

    step("API key")
    submit("Revoke")
    done("API key revoked")
    assert "No API keys." in text_of(By.ID, "api-keys")

    step("TOTP off")
    submit("Turn off two-step verification")
    done("Two-step verification is off")
    assert text_of(By.ID, "totp") == "off"

    step("end sessions")
    submit("End every session")
    done("Every session of the user ended")
    assert "No sessions." in text_of(By.ID, "sessions")

    step("disable and enable")
    submit("Disable the account")
    done("The account is disabled")
    assert text_of(By.ID, "state") == "disabled"
    shot("console-disabled", 1100)
    submit("Enable the account")
    done("The account is enabled again")
    assert text_of(By.ID, "state") == "active"

    step("password reset")
    submit("Send a password reset")
    done("A password-reset link is on its way")
    assert ask(f"MAILTOKEN {USER} /auth/password/reset")

    # The Grafana dashboard (deploy/grafana/portcullis.json) rendered as
    # its panels with this gateway's numbers now, for the README.
    step("dashboard rendering")
    render_dashboard()

    # No page of the console broke its CSP (nothing inline runs).
    errors = [e for e in driver.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert not errors, errors
    print("PASSED", flush=True)
finally:
    driver.quit()
