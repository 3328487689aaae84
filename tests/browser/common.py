"""What the browser scripts share: Debian's Chromium under Selenium, and
element actions that survive a page being swapped by a navigation.

Imported by portal_e2e.py, console_e2e.py, shared_signin.py and
federation_e2e.py (their directory is on `sys.path` when Python runs
them). Nothing is downloaded: the browser and driver are the system's.
"""

import os
import sys
import tempfile
import time
import urllib.parse

os.environ["SE_OFFLINE"] = "true"

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Seconds an action or a wait may take.
WAIT = 20
# A page may be replaced while it is read (a form submits, a script
# navigates): waits read again instead of failing.
RACY = (StaleElementReferenceException, NoSuchElementException)


def step(msg):
    print(f"STEP {msg}", flush=True)


def ask(line):
    """A question to the Rust test on stdout; its answer on stdin starts
    with OK (what follows is returned)."""
    print(line, flush=True)
    answer = sys.stdin.readline().strip()
    assert answer.startswith("OK"), f"{line}: {answer}"
    return answer[2:].strip()


def path_of(url):
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def chrome(cfg, profile_prefix, extra_args=(), browser_log=False):
    """Headless Chromium with a fresh profile, trusting the dev
    certificate; `cfg` may name other `chromium`/`chromedriver` paths."""
    profile = tempfile.mkdtemp(prefix=profile_prefix)
    opts = webdriver.ChromeOptions()
    opts.binary_location = cfg.get("chromium", "/usr/bin/chromium")
    for a in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",
        *extra_args,
        "--window-size=1000,820",
        f"--user-data-dir={profile}",
    ]:
        opts.add_argument(a)
    if browser_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(
        service=Service(executable_path=cfg.get("chromedriver", "/usr/bin/chromedriver")),
        options=opts,
    )


def swapped(e):
    """True when an element action failed only because the document it was
    found in was being replaced by a navigation (a form submitted, a
    redirect landed): chromedriver then reports a stale node, a missing
    node, or "Node with given id does not belong to the document"."""
    if isinstance(e, RACY):
        return True
    msg = str(e)
    return "does not belong to the document" in msg or "stale element" in msg


def settled(d):
    try:
        return d.execute_script("return document.readyState") == "complete"
    except WebDriverException:
        return False  # the document went away while asked: not settled yet


class Actions:
    """Element actions on the page a driver shows now; `wait`, a wait that
    reads again while a page is swapped; `shot`, screenshots into `shots`
    (none when it is empty)."""

    def __init__(self, driver, shots=""):
        self.driver = driver
        self.shots = shots
        self.wait = WebDriverWait(driver, WAIT, ignored_exceptions=RACY)

    def shot(self, name, height=820):
        """A screenshot `height` pixels tall (the window is 1000 x 820)."""
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            self.driver.set_window_size(1000, height)
            self.driver.save_screenshot(os.path.join(self.shots, f"{name}.png"))
            self.driver.set_window_size(1000, 820)

    def at(self, path):
        """Waits until the browser is on a page whose path starts with `path`."""
        self.wait.until(lambda d: path_of(d.current_url).startswith(path))

    def act(self, what, fn):
        """Runs an element action on the page now shown, again (up to WAIT
        s) while the page is being swapped; any other failure is raised."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                WebDriverWait(self.driver, WAIT).until(settled)
                return fn()
            except WebDriverException as e:
                if not swapped(e) or time.monotonic() > deadline:
                    raise AssertionError(f"{what}: {e}") from e
                time.sleep(0.1)

    def fill(self, field, value):
        def go():
            el = self.driver.find_element(By.ID, field)
            el.clear()
            el.send_keys(value)

        self.act(f"fill {field}", go)

    def submit(self, text):
        xpath = f"//button[normalize-space()='{text}']"
        self.act(f"submit {text}", lambda: self.driver.find_element(By.XPATH, xpath).click())

    def click(self, by, sel):
        self.act(f"click {sel}", lambda: self.driver.find_element(by, sel).click())

    def text_of(self, by, sel):
        return self.act(f"read {sel}", lambda: self.driver.find_element(by, sel).text)

    def present(self, by, sel):
        return self.act(f"look for {sel}", lambda: bool(self.driver.find_elements(by, sel)))

    def page(self):
        """The text of the page now shown (read again if it was replaced)."""
        return self.act("read the page", lambda: self.driver.find_element(By.TAG_NAME, "body").text)
