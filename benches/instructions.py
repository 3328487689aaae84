#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: a measure that
the load of a shared machine does not move (wall-clock ratios from
`benches/compare.sh` do, by several percent from run to run).

    python3 benches/instructions.py                # this build
    INSTR_BEFORE=/path/to/old/release python3 benches/instructions.py
    INSTR_REQUESTS=2000 INSTR_LOG=warn,access=info python3 benches/instructions.py
    INSTR_SIM=1 INSTR_BEFORE=... python3 benches/instructions.py
        # also simulates the caches and branch predictors (callgrind's
        # --cache-sim and --branch-sim): instruction-cache misses, data-cache
        # misses and mispredicted branches per request, which explain a
        # wall-clock gap between builds that run the same instructions

Builds nothing: run `benches/compare.sh` (or `cargo build --profile dist --bin
portcullis --example seed`; COMPARE_PROFILE=release for `target/release`) first. For each build it seeds a gateway like
compare.sh's HS256 one (100k revocations), starts it under
`valgrind --tool=callgrind`, sends 200 warm-up requests, zeroes the
counters, sends INSTR_REQUESTS keep-alive requests to the public route and
then to the required route (a real login's token), and prints the
instructions per request of the whole process (the kernel's part of a
request is not counted: it is the same for every build). Every process it
starts listens on an ephemeral loopback port and is stopped by its pid.
Each build first starts once outside callgrind (INSTR_SETTLE seconds) so
the one-time work of a fresh data dir is not counted.
"""

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

N = int(os.environ.get("INSTR_REQUESTS", "2000"))
LOG = os.environ.get("INSTR_LOG", "warn")
BEFORE = os.environ.get("INSTR_BEFORE", "")
SETTLE = float(os.environ.get("INSTR_SETTLE", "20"))
SIM = os.environ.get("INSTR_SIM") == "1"
# callgrind's event names → what the table calls them (with INSTR_SIM=1).
SIM_EVENTS = [("I1mr", "I1 miss"), ("ILmr", "LL i-miss"), ("D1mr", "D1 read miss"),
              ("D1mw", "D1 write miss"), ("DLmr", "LL d-miss"), ("Bcm", "cond. mispredict"),
              ("Bim", "ind. mispredict")]


def requests(port, path, token, n):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(4)]
    for i in range(n):
        conn = conns[i % 4]
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"{path}: status {r.status}")
    for conn in conns:
        conn.close()


def totals(out_file):
    """Every event's total in a callgrind dump, by event name."""
    events = None
    with open(out_file) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            if line.startswith("summary:") or line.startswith("totals:"):
                counts = [int(x) for x in line.split()[1:]]
                return dict(zip(events or ["Ir"], counts))
    sys.exit(f"no totals in {out_file}")


def measure(work, name, rel, up_port):
    port = c.free_port()
    conf = c.gateway_conf(work, name, port, up_port, "HS256")
    seeded = subprocess.run([f"{rel}/examples/seed", conf, "1", "0", str(c.REVOCATIONS), c.PASSWORD],
                            capture_output=True, text=True)
    if seeded.returncode != 0:
        sys.exit(f"seeding {name}: {seeded.stderr}")
    # A first start does its one-time work on the fresh data dir (the first
    # maintenance sweep writes the revocation snapshot and trims the log):
    # let it, outside callgrind, so the counts below are requests only.
    first = subprocess.Popen([f"{rel}/portcullis", "serve", "--config", conf],
                             stdout=open(os.path.join(work, f"{name}.first.log"), "wb"),
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=dict(os.environ, RUST_LOG=LOG))
    c.procs.append(first)
    c.wait_port(port, first, f"portcullis ({name})")
    time.sleep(SETTLE)
    first.terminate()
    first.wait(timeout=60)
    out = os.path.join(work, f"{name}.callgrind")
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if SIM else []
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *sim,
                          f"{rel}/portcullis", "serve", "--config", conf],
                         stdout=open(os.path.join(work, f"{name}.log"), "wb"), stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG=LOG))
    c.procs.append(p)
    c.wait_port(port, p, f"portcullis ({name}) under callgrind", timeout=300)
    time.sleep(SETTLE)  # the start's sweep, now short, out of the counts
    token = c.login(port)
    result = {}
    for path, tok in [("/pub", None), ("/api", token)]:
        requests(port, path, tok, 200)
        subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
        requests(port, path, tok, N)
        dumped = f"{out}.{len(result) + 1}"
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
        for _ in range(600):
            if os.path.exists(dumped):
                break
            time.sleep(0.1)
        time.sleep(1)
        result[path] = {k: v / N for k, v in totals(dumped).items()}
    p.terminate()
    p.wait(timeout=120)
    return result


def main():
    for tool in ["valgrind", "callgrind_control", "nginx"]:
        if not shutil.which(tool) and not os.path.exists(c.NGINX):
            sys.exit(f"{tool} is missing")
    work = tempfile.mkdtemp(prefix="portcullis-instr-")
    try:
        up_port = c.free_port()
        c.start(c.nginx_conf(work, "upstream", up_port, '        location / { return 200 "ok\\n"; }'),
                c.LOAD_CORE, f"{work}/upstream.log", "nginx upstream", up_port)
        builds = [("this", c.REL)] + ([("before", BEFORE)] if BEFORE else [])
        rows = {name: measure(work, name, rel, up_port) for name, rel in builds}
        print(f"instructions per request (callgrind, {N} requests, RUST_LOG={LOG})")
        for name, r in rows.items():
            print(f"  {name:7} public {r['/pub']['Ir']:9.0f}   required HS256 {r['/api']['Ir']:9.0f}   "
                  f"public/required {r['/pub']['Ir'] / r['/api']['Ir']:.3f}")
        if BEFORE:
            for path, label in [("/pub", "public"), ("/api", "required")]:
                print(f"  {label}: this / before = {rows['this'][path]['Ir'] / rows['before'][path]['Ir']:.3f}")
        if SIM:
            print("per request (callgrind's simulated caches and branch predictors)")
            for path, label in [("/pub", "public"), ("/api", "required")]:
                for ev, what in SIM_EVENTS:
                    cells = "   ".join(f"{name} {r[path].get(ev, 0):8.1f}" for name, r in rows.items())
                    print(f"  {label:8} {what:17} {cells}")
    finally:
        c.stop_all()
        if os.environ.get("INSTR_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
