#!/usr/bin/env python3
"""Portcullis on a large data dir (issue 9, "Memory and scale").

Run it through `benches/scale.sh`, which builds the binaries first.

- Seeds `SCALE_USERS` users, `SCALE_SESSIONS` sessions and
  `SCALE_REVOCATIONS` revoked token ids (default 1M each) into a fresh sled
  data dir with `examples/seed.rs` (through `Store::import`).
- Starts the real binary on that data dir, `SCALE_STARTS` times (default 3),
  and reports the time from exec to the first answered `/healthz`.
- Reports the resident size (VmRSS, and the peak VmHWM) after start, then
  after `SCALE_LOGINS` logins of random seeded users (default 10,000, by
  `SCALE_LOGIN_THREADS` clients at once, default 4), with the logins' p50
  and p99, and a proxied request per login (issue 26's second RSS target).
- Reports the data dir's size, and the load average beside each figure
  (the machine is shared).

Every process listens on ephemeral loopback ports and is stopped by pid.
"""

import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
USERS = int(os.environ.get("SCALE_USERS", "1000000"))
SESSIONS = int(os.environ.get("SCALE_SESSIONS", "1000000"))
REVOCATIONS = int(os.environ.get("SCALE_REVOCATIONS", "1000000"))
STARTS = int(os.environ.get("SCALE_STARTS", "3"))
LOGINS = int(os.environ.get("SCALE_LOGINS", "10000"))
LOGIN_THREADS = int(os.environ.get("SCALE_LOGIN_THREADS", "4"))
PASSWORD = "Vx9-quartz-Lantern-47"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def load():
    return "load %.1f" % os.getloadavg()[0]


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def main():
    # SCALE_DIR: a work dir to keep and reuse (seeded once, then only
    # started again: for measuring start-up and memory after a change).
    work = os.environ.get("SCALE_DIR") or tempfile.mkdtemp(prefix="portcullis-scale-")
    os.makedirs(work, exist_ok=True)
    try:
        run(work)
    finally:
        if os.environ.get("SCALE_KEEP") != "1" and not os.environ.get("SCALE_DIR"):
            shutil.rmtree(work, ignore_errors=True)


def run(work):
    port, admin, echo = free_port(), free_port(), free_port()
    conf = os.path.join(work, "gateway.toml")
    with open(conf, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
tls_listen = ""
admin_listen = "127.0.0.1:{admin}"
data_dir = "{work}/data"

[throttle]
auth_per_minute = 0
max_failed_logins = 0

[demo]
echo_listen = "127.0.0.1:{echo}"

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:{echo}"
auth = "required"
""")
    if os.path.exists(os.path.join(work, "data", "seeded")):
        print(f"reusing the seeded data dir in {work}; {du(work) / 2**20:.0f} MiB", flush=True)
    else:
        t0 = time.time()
        out = subprocess.run([f"{REL}/examples/seed", conf, str(USERS), str(SESSIONS), str(REVOCATIONS), PASSWORD],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"seeding: {out.stderr}")
        print(out.stdout.strip(), f"(wall {time.time() - t0:.0f} s); data dir {du(work) / 2**20:.0f} MiB", flush=True)
        open(os.path.join(work, "data", "seeded"), "w").close()

    starts = []
    for i in range(STARTS):
        t = time.time()
        p = subprocess.Popen([f"{REL}/portcullis", "serve", "--config", conf],
                             stdout=open(f"{work}/gw{i}.log", "wb"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
        try:
            while True:
                if p.poll() is not None:
                    sys.exit(f"the gateway exited ({p.returncode}); see {work}/gw{i}.log (SCALE_KEEP=1)")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    time.sleep(0.01)
            starts.append(time.time() - t)
            rss, hwm = status_kib(p.pid, "VmRSS"), status_kib(p.pid, "VmHWM")
            print(f"start {i + 1}: {starts[-1]:.2f} s to /healthz; RSS {mib(rss)} (peak {mib(hwm)}); {load()}",
                  flush=True)
            if i == STARTS - 1:
                measure_logins(p, port)
        finally:
            p.terminate()
            p.wait(timeout=30)
    print(f"start-up, median of {STARTS}: {statistics.median(starts):.2f} s")
    print(f"data dir {du(os.path.join(work, 'data')) / 2**20:.0f} MiB", flush=True)


def login_once(port):
    email = f"seed{random.randrange(USERS)}@example.com"
    body = json.dumps({"email": email, "password": PASSWORD}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/auth/login", data=body,
                                 headers={"content-type": "application/json"}, method="POST")
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        token = json.load(r)["access_token"]
    ms = (time.perf_counter() - t) * 1000
    req = urllib.request.Request(f"http://127.0.0.1:{port}/x", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
    return ms


def measure_logins(p, port):
    from concurrent.futures import ThreadPoolExecutor
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=LOGIN_THREADS) as pool:
        lat = sorted(pool.map(lambda _: login_once(port), range(LOGINS)))
    rss, hwm = status_kib(p.pid, "VmRSS"), status_kib(p.pid, "VmHWM")
    print(f"{LOGINS} logins of random users ({LOGIN_THREADS} at once, {time.time() - t0:.0f} s): "
          f"p50 {lat[len(lat) // 2]:.1f} ms, p99 {lat[max(int(len(lat) * 0.99) - 1, 0)]:.1f} ms; "
          f"then RSS {mib(rss)} (peak {mib(hwm)}); {load()}", flush=True)


if __name__ == "__main__":
    main()
