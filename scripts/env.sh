# Sourced by the other scripts: puts the project's virtualenv first on PATH so
# that torch-sys (LIBTORCH_USE_PYTORCH=1, see .cargo/config.toml) links against
# the torch==2.11.0 installed there. Nothing here is needed at run time: the
# binary carries an rpath to that libtorch.
EQCO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$EQCO_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
