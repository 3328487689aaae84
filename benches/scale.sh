#!/usr/bin/env bash
# Portcullis on a data dir of 1M users, 1M sessions and 1M revoked token
# ids (issue 9): seeding time, start-up time, resident size, login p50.
#   bash benches/scale.sh
#   SCALE_USERS=100000 SCALE_SESSIONS=100000 SCALE_REVOCATIONS=100000 SCALE_LOGINS=500 bash benches/scale.sh
# (10,000 logins and the data dir size by default; SCALE_DIR=DIR keeps and
# reuses a seeded data dir)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin portcullis --example seed
exec python3 benches/scale.py
