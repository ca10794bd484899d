#!/usr/bin/env bash
# The test suite, from a fresh machine: set-up, every test of the crate, then
# the Python package's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo test --release --locked --all-targets --features test-hooks "$@"
# The Python package (`pip install ./python`: `import eqco` and the `eqco`
# command) built into the venv, and its tests against PyTorch.
pip install --quiet --no-build-isolation --disable-pip-version-check ./python
python -m pytest python/tests -q
