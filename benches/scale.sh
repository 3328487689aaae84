#!/usr/bin/env bash
# Portcullis on a data dir of 1M users, 1M sessions and 1M revoked token
# ids (issue 9): seeding time, start-up time, resident size, login p50.
#   bash benches/scale.sh
#   SCALE_USERS=100000 SCALE_SESSIONS=100000 SCALE_REVOCATIONS=100000 bash benches/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin portcullis --example seed
exec python3 benches/scale.py
