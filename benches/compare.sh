#!/usr/bin/env bash
# Portcullis against bare Pingora, nginx and nginx auth_request, side by side
# in one run (issue 9). Builds the gateway and the benchmark tools, installs
# nginx and wrk from apt when missing, then runs benches/compare.py, which
# prints the table and writes it to docs/benchmarks.md.
#
#   bash benches/compare.sh            # 3 rounds of 5 s per variant
#   COMPARE_ROUNDS=5 COMPARE_SECS=10 bash benches/compare.sh
#   COMPARE_WRITE=0 bash benches/compare.sh   # print only
#   COMPARE_BEFORE=/path/to/old/target/dist bash benches/compare.sh
#       # also runs an earlier build's public and required routes in the
#       # same rounds (needs its portcullis and examples/seed)
#   COMPARE_PROFILE=release bash benches/compare.sh
#       # builds and measures the `release` profile instead of `dist`
#       # (what the README's run command and the Dockerfile build)
#   COMPARE_LOG=warn bash benches/compare.sh
#       # the gateways' RUST_LOG (default "warn,access=info": the access
#       # log on, written to each gateway's log file)
#
# Needs 2 cores (the proxy under test on core 0, the upstream and the load
# generator on core 1). Every process it starts listens on an ephemeral
# loopback port and is stopped by its pid.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps --bench
cargo build --profile "${COMPARE_PROFILE:-dist}" --bin portcullis --example bare_proxy --example seed --example openloop
exec python3 benches/compare.py
