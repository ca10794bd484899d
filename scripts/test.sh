#!/usr/bin/env bash
# The test suite, from a fresh machine: set-up, then every test of the crate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo test --release --locked --all-targets --features test-hooks "$@"
