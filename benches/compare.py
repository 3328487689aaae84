#!/usr/bin/env python3
"""Portcullis side by side with bare Pingora and nginx, in one run.

Run it through `benches/compare.sh`, which builds the binaries first. What
it does (issue 9):

- nginx (from apt) is the upstream (`return 200`), and also the
  `proxy_pass` and `auth_request` peers; every process listens on an
  ephemeral loopback port and is stopped by its pid at the end.
- Each proxy under test is pinned to core 0 (`taskset -c 0`; Portcullis and
  the control with `threads = 1`); the upstream and the load generator
  (`wrk -t1 -c32`) share core 1, and their CPU use is reported.
- Variants run interleaved, `COMPARE_ROUNDS` rounds (default 3) of
  `COMPARE_SECS` seconds (default 5) each: direct, nginx, bare Pingora
  (and bare Pingora with `work_stealing = false`), Portcullis public,
  required HS256, required EdDSA, required with an API key, the 401 path,
  nginx `auth_request` to Portcullis `GET /auth/verify`, and a public
  route on a gateway with 50 routes over 10 hosts (issue 24: host routes
  matched from a table built once per config), and the required HS256
  route with `identity_assertion = true` (issue 23: `X-User-Assertion`
  signed with RS256, cached per session and route).
- Tokens come from real logins; 100k revoked token ids are seeded into
  each gateway's store first (`examples/seed.rs`).
- Latency: p50/p99 at half the median bare-Pingora maximum, from an
  open-loop generator (`examples/openloop.rs`) that charges stalls to every
  request they delay.
- The table, with the machine and the date, replaces the section between
  the `compare` markers in docs/benchmarks.md (`COMPARE_WRITE=0` prints it
  only).
"""

import datetime
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The build profile of the binaries under test: `dist`, what an operator
# runs (Cargo.toml); bare Pingora is built with the same profile, so their
# ratio compares code with code.
PROFILE = os.environ.get("COMPARE_PROFILE", "dist")
REL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), PROFILE)
ROUNDS = int(os.environ.get("COMPARE_ROUNDS", "3"))
SECS = int(os.environ.get("COMPARE_SECS", "5"))
CONNS = 32
REVOCATIONS = int(os.environ.get("COMPARE_REVOCATIONS", "100000"))
# A release dir of an earlier build (its `portcullis` and `examples/seed`):
# its public and required HS256 routes run in the same rounds, so a change
# is measured before and after in one run (the redesign of issue 21).
BEFORE = os.environ.get("COMPARE_BEFORE", "")
PASSWORD = "Vx9-quartz-Lantern-47"
# The gateways' log filter: warnings, and the access log (issue 24) on as it
# is by default, one line per request into the gateway's log file in the
# work dir, so the rows pay for it (`COMPARE_LOG=warn` leaves it out).
GATEWAY_LOG = os.environ.get("COMPARE_LOG", "warn,access=info")
# Seconds between starting the gateways and the first round.
SETTLE = float(os.environ.get("COMPARE_SETTLE", "15"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PROXY_CORE, LOAD_CORE = "0", "1"

procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early (status {proc.returncode}); see its log in the work dir")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {timeout} s")


def start(cmd, core, log, what, port):
    p = subprocess.Popen(
        ["taskset", "-c", core] + cmd,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    procs.append(p)
    wait_port(port, p, what)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_secs(pid):
    """User + system CPU seconds of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_conf(work, name, port, body, upstream_block=""):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    temps = "\n".join(
        f"    {k}_temp_path {d}/{k};" for k in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    )
    with open(conf, "w") as f:
        f.write(
            f"""daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temps}
    keepalive_requests 10000000;
    {upstream_block}
    server {{
        listen 127.0.0.1:{port};
{body}
    }}
}}
"""
        )
    return [NGINX, "-p", d, "-c", conf, "-e", f"{d}/error.log"]


# The many-apps variant: 10 hosts with 5 routes each; requests name one host.
MANY_HOSTS = 10
MANY_HOST = "app7.bench.test"
HOSTS = {"public_many": MANY_HOST}


def many_routes(up_port):
    out = []
    for h in range(MANY_HOSTS):
        for prefix, auth in [("/pub", "public"), ("/api", "required"), ("/a", "required"),
                             ("/b/c", "optional"), ("/", "required")]:
            out.append(f"""
[[routes]]
host = "app{h}.bench.test"
prefix = "{prefix}"
upstream = "http://127.0.0.1:{up_port}"
auth = "{auth}"
""")
    return "".join(out)


# The assertion variant (issue 23): the required route of the HS256
# gateway again, with `X-User-Assertion` (RS256, the default signing_alg).
ASSERT_ROUTE = """
[[routes]]
prefix = "/asserted"
upstream = "http://127.0.0.1:{up_port}"
auth = "required"
identity_assertion = true
"""


def gateway_conf(work, name, port, up_port, algorithm, extra_routes=""):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "gateway.toml")
    with open(conf, "w") as f:
        f.write(
            f"""[server]
listen = "127.0.0.1:{port}"
tls_listen = ""
admin_listen = ""
data_dir = "{d}/data"
threads = 1

[tokens]
algorithm = "{algorithm}"

[demo]
echo_listen = ""

[[routes]]
prefix = "/pub"
upstream = "http://127.0.0.1:{up_port}"
auth = "public"

[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:{up_port}"
auth = "required"
scopes = ["bench"]
""" + extra_routes
        )
    return conf


def login(port):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/auth/login",
        data=json.dumps({"email": "seed0@example.com", "password": PASSWORD}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["access_token"]


def api_key(port, access):
    """A real API key of the seeded user, with the scope the /api route lists."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/auth/api-keys",
        data=json.dumps({"name": "bench", "scopes": ["bench"]}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {access}"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["key"]


def tampered(token):
    """The same token with one signature character changed: the 401 path
    still pays for the signature check."""
    head, sig = token.rsplit(".", 1)
    mid = len(sig) // 2
    c = "A" if sig[mid] != "A" else "B"
    return f"{head}.{sig[:mid]}{c}{sig[mid + 1:]}"


def wrk(port, path, token, pids, host=None):
    cmd = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{CONNS}", f"-d{SECS}s"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    before = [cpu_secs(p) for p in pids]
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.time() - t0
    ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = [(cpu_secs(p) - b) / wall for p, b in zip(pids, before)]
    wrk_cpu = (ru2.ru_utime - ru.ru_utime + ru2.ru_stime - ru.ru_stime) / wall
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return rps, int(non2xx.group(1)) if non2xx else 0, errors.group(0) if errors else "", cpu, wrk_cpu


def openloop(port, path, token, rate):
    cmd = ["taskset", "-c", LOAD_CORE, f"{REL}/examples/openloop", f"127.0.0.1:{port}", path,
           str(rate), str(SECS), str(CONNS)]
    if token:
        cmd.append(token)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return dict(kv.split("=") for kv in out.split())


def main():
    for tool in ["taskset", "wrk", NGINX]:
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"{tool} is missing; benches/compare.sh installs it")
    work = tempfile.mkdtemp(prefix="portcullis-compare-")
    try:
        run(work)
    finally:
        stop_all()
        if os.environ.get("COMPARE_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)


def run(work):
    up_port = free_port()
    upstream = start(
        nginx_conf(work, "upstream", up_port, '        location / { return 200 "ok\\n"; }'),
        LOAD_CORE, f"{work}/upstream.log", "nginx upstream", up_port)

    ports = {k: free_port() for k in ["nginx", "bare", "bare_nosteal", "hs", "ed", "authreq", "before", "many"]}
    nginx_proxy = start(
        nginx_conf(work, "nginx", ports["nginx"], f"""        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}""", upstream_block=f"upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}"),
        PROXY_CORE, f"{work}/nginx.log", "nginx proxy", ports["nginx"])
    bare = start([f"{REL}/examples/bare_proxy", f"127.0.0.1:{ports['bare']}", f"127.0.0.1:{up_port}", "1"],
                 PROXY_CORE, f"{work}/bare.log", "bare Pingora", ports["bare"])
    bare_nosteal = start([f"{REL}/examples/bare_proxy", f"127.0.0.1:{ports['bare_nosteal']}",
                          f"127.0.0.1:{up_port}", "1", "nosteal"],
                         PROXY_CORE, f"{work}/bare_nosteal.log", "bare Pingora (no stealing)",
                         ports["bare_nosteal"])

    gateways = {}
    builds = [("hs", "HS256", REL), ("ed", "EdDSA", REL)] + ([("before", "HS256", BEFORE)] if BEFORE else [])
    for key, alg, rel in builds:
        extra = ASSERT_ROUTE.format(up_port=up_port) if key == "hs" else ""
        conf = gateway_conf(work, key, ports[key], up_port, alg, extra)
        seeded = subprocess.run([f"{rel}/examples/seed", conf, "1", "0", str(REVOCATIONS), PASSWORD],
                                capture_output=True, text=True)
        if seeded.returncode != 0:
            sys.exit(f"seeding {key}: {seeded.stderr}")
        print(seeded.stdout.strip(), f"({alg})", flush=True)
        env = dict(os.environ, RUST_LOG=GATEWAY_LOG)
        p = subprocess.Popen(["taskset", "-c", PROXY_CORE, f"{rel}/portcullis", "serve", "--config", conf],
                             stdout=open(f"{work}/{key}.log", "wb"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
        procs.append(p)
        wait_port(ports[key], p, f"portcullis {alg}")
        gateways[key] = p
    many_conf = gateway_conf(work, "many", ports["many"], up_port, "HS256", many_routes(up_port))
    many = subprocess.Popen(["taskset", "-c", PROXY_CORE, f"{REL}/portcullis", "serve", "--config", many_conf],
                            stdout=open(f"{work}/many.log", "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG=GATEWAY_LOG))
    procs.append(many)
    wait_port(ports["many"], many, "portcullis (50 routes over 10 hosts)")
    # A fresh data dir's one-time start work (the first maintenance sweep
    # writes the revocation snapshot and trims the seeded revocation log)
    # runs on the proxy core: let it finish before any round is measured.
    time.sleep(SETTLE)
    hs_token, ed_token = login(ports["hs"]), login(ports["ed"])
    hs_key = api_key(ports["hs"], hs_token)

    authreq = start(
        nginx_conf(work, "authreq", ports["authreq"], f"""        location = /_verify {{
            internal;
            proxy_pass http://pc/auth/verify;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location / {{
            auth_request /_verify;
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}""", upstream_block=f"upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }} "
                              f"upstream pc {{ server 127.0.0.1:{ports['hs']}; keepalive 64; }}"),
        PROXY_CORE, f"{work}/authreq.log", "nginx auth_request", ports["authreq"])

    # name, label, port, path, token, pids under test (CPU shown), expect 2xx
    variants = [
        ("direct", "direct to the upstream (no proxy)", up_port, "/api/item", None, [], True),
        ("nginx", "nginx `proxy_pass`, 1 worker", ports["nginx"], "/api/item", None, [nginx_proxy.pid], True),
        ("bare", "bare Pingora", ports["bare"], "/api/item", None, [bare.pid], True),
        ("bare_nosteal", "bare Pingora, `work_stealing = false`", ports["bare_nosteal"], "/api/item", None,
         [bare_nosteal.pid], True),
        ("public", "Portcullis, public route", ports["hs"], "/pub/item", None, [gateways["hs"].pid], True),
        ("required_hs", "Portcullis, required route, HS256", ports["hs"], "/api/item", hs_token,
         [gateways["hs"].pid], True),
        ("required_ed", "Portcullis, required route, EdDSA", ports["ed"], "/api/item", ed_token,
         [gateways["ed"].pid], True),
        ("required_key", "Portcullis, required route, API key (Bearer)", ports["hs"], "/api/item", hs_key,
         [gateways["hs"].pid], True),
        ("required_assert", "Portcullis, required route, HS256, `identity_assertion` (RS256)", ports["hs"],
         "/asserted/item", hs_token, [gateways["hs"].pid], True),
        ("unauthorized", "Portcullis, 401 (bad signature)", ports["hs"], "/api/item", tampered(hs_token),
         [gateways["hs"].pid], False),
        ("authreq", "nginx `auth_request` → Portcullis `/auth/verify`", ports["authreq"], "/api/item",
         hs_token, [authreq.pid, gateways["hs"].pid], True),
        ("public_many", f"Portcullis, public route, 50 routes over {MANY_HOSTS} hosts", ports["many"],
         "/pub/item", None, [many.pid], True),
    ]
    if BEFORE:
        before_token = login(ports["before"])
        variants += [
            ("public_before", "earlier build, public route", ports["before"], "/pub/item", None,
             [gateways["before"].pid], True),
            ("required_before", "earlier build, required route, HS256", ports["before"], "/api/item",
             before_token, [gateways["before"].pid], True),
        ]
    results = {v[0]: [] for v in variants}
    cpu = {v[0]: [] for v in variants}
    for r in range(ROUNDS):
        # Rotate the order each round so drift does not favour one variant.
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for name, _, port, path, token, pids, ok in order:
            rps, non2xx, errors, pcpu, wrk_cpu = wrk(port, path, token, pids + [upstream.pid],
                                                     HOSTS.get(name))
            if ok and non2xx:
                sys.exit(f"{name}: {non2xx} non-2xx answers; see the logs in {work} (COMPARE_KEEP=1)")
            if not ok and non2xx == 0:
                sys.exit(f"{name}: expected 401s, got 2xx")
            results[name].append(rps)
            cpu[name].append((pcpu, wrk_cpu))
            print(f"round {r + 1} {name:13} {rps:10.0f} req/s  cpu: proxy {'+'.join(f'{c:.0%}' for c in pcpu[:-1]) or '-'}"
                  f", upstream {pcpu[-1]:.0%}, wrk {wrk_cpu:.0%} {errors}", flush=True)

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(results[a], results[b]))

    ratios = [
        ("public route / bare Pingora", ratio("public", "bare"), "≥ 0.95×"),
        ("public route / bare Pingora (`work_stealing = false`)", ratio("public", "bare_nosteal"), "—"),
        ("required HS256 (100k revocations) / public", ratio("required_hs", "public"), "≥ 0.95×"),
        ("required EdDSA / public", ratio("required_ed", "public"), "≥ 0.90×"),
        ("required, API key / public", ratio("required_key", "public"), "≥ 0.95×"),
        ("required with `identity_assertion` / required HS256", ratio("required_assert", "required_hs"), "≥ 0.90×"),
        (f"public, 50 routes over {MANY_HOSTS} hosts / public", ratio("public_many", "public"), "≥ 0.95×"),
        ("required HS256 / nginx `auth_request` + verify", ratio("required_hs", "authreq"), "≥ 3×"),
        ("bare Pingora / nginx", ratio("bare", "nginx"), "—"),
    ]
    if BEFORE:
        ratios += [
            ("public route, this build / earlier build", ratio("public", "public_before"), "≈ 1.00×"),
            ("required HS256, this build / earlier build", ratio("required_hs", "required_before"), "≈ 1.00×"),
        ]
    # Half the bare-Pingora maximum, or half a variant's own maximum where
    # that is lower (nginx auth_request): never latency at saturation.
    rate = int(statistics.median(results["bare"]) / 2)
    lat = []
    for name, label, port, path, token, _, _ in variants:
        # The open-loop generator sends no Host of its choosing.
        if name in ("direct", "unauthorized", "bare_nosteal", "public_many"):
            continue
        r = min(rate, int(statistics.median(results[name]) / 2))
        lat.append((label, r, openloop(port, path, token, r)))
        print(f"latency {name:13} at {r} req/s: {lat[-1][2]}", flush=True)

    lines = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    load = os.getloadavg()
    lines.append(f"Run of {now}: {os.cpu_count()} cores ({cpu_model}), Linux {platform.release()}; "
                 f"load average before the run {load[0]:.1f}. {ROUNDS} interleaved rounds of {SECS} s, "
                 f"`wrk -t1 -c{CONNS}` and the nginx upstream on core {LOAD_CORE}, each proxy under test "
                 f"alone on core {PROXY_CORE}; {REVOCATIONS:,} revoked token ids seeded into each gateway. "
                 f"This build and bare Pingora built with `--profile {PROFILE}`"
                 + (f"; the earlier build from `{BEFORE}`." if BEFORE else "."))
    lines.append("")
    lines.append("| variant | req/s per round | median | proxy CPU | upstream CPU | wrk CPU |")
    lines.append("|---|---|---|---|---|---|")
    for name, label, *_ in variants:
        rs = results[name]
        pc = statistics.median(sum(c[0][:-1]) for c in cpu[name]) if cpu[name][0][0][:-1] else None
        uc = statistics.median(c[0][-1] for c in cpu[name])
        wc = statistics.median(c[1] for c in cpu[name])
        lines.append(f"| {label} | {' / '.join(f'{x:,.0f}' for x in rs)} | **{statistics.median(rs):,.0f}** | "
                     f"{'—' if pc is None else f'{pc:.0%}'} | {uc:.0%} | {wc:.0%} |")
    lines.append("")
    lines.append("| ratio (median of the per-round ratios) | measured | target |")
    lines.append("|---|---|---|")
    for label, v, target in ratios:
        lines.append(f"| {label} | **{v:.2f}×** | {target} |")
    lines.append("")
    lines.append(f"Latency at {rate:,} req/s (half the median bare-Pingora maximum; a variant whose own "
                 f"maximum is lower runs at half of that), open loop over "
                 f"{CONNS} connections for {SECS} s, measured from each request's scheduled send time:")
    lines.append("")
    lines.append("| variant | req/s | p50 µs | p90 µs | p99 µs | max µs | errors |")
    lines.append("|---|---|---|---|---|---|---|")
    for label, r, d in lat:
        lines.append(f"| {label} | {r:,} | {d['p50_us']} | {d['p90_us']} | {d['p99_us']} | {d['max_us']} | {d['errors']} |")
    table = "\n".join(lines)
    print()
    print(table)
    if os.environ.get("COMPARE_WRITE", "1") == "1":
        doc = os.path.join(ROOT, "docs", "benchmarks.md")
        text = open(doc).read()
        begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            _, tail = rest.split(end, 1)
            text = f"{head}{begin}\n{table}\n{end}{tail}"
        else:
            text += f"\n{begin}\n{table}\n{end}\n"
        open(doc, "w").write(text)
        print(f"\nwritten to {doc}")


if __name__ == "__main__":
    main()
