#!/usr/bin/env bash
# The main job, from a fresh machine: set-up, release build, then the toy
# mutual-information experiment (paper Table 5) at its full protocol.
# Extra arguments go to `eqco toy-mi` (e.g. --threads 2 --out runs/toy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked
exec target/release/eqco toy-mi --out runs/toy-mi "$@"
