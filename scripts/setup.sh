#!/usr/bin/env bash
# Idempotent set-up: the project's virtualenv with torch==2.11.0 (libtorch for
# tch 0.24). Safe to run again: it does nothing when everything is in place.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
TORCH_VERSION=2.11.0

if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 2
fi
if [ ! -x "$VIRTUAL_ENV/bin/python" ]; then
    echo "setup: creating $VIRTUAL_ENV"
    python3 -m venv "$VIRTUAL_ENV"
fi
have=$("$VIRTUAL_ENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
    echo "setup: installing torch==$TORCH_VERSION into $VIRTUAL_ENV (about 4.7 GB, a few minutes)"
    "$VIRTUAL_ENV/bin/pip" install --quiet --no-input --disable-pip-version-check "torch==$TORCH_VERSION"
fi

# Fashion-MNIST, the default dataset, from the Debian package (MIT licence).
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: installing the Debian package dataset-fashion-mnist"
        (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null; }) ||
            echo "setup: warning: could not install dataset-fashion-mnist" >&2
    elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
        echo "setup: installing the Debian package dataset-fashion-mnist (sudo)"
        sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null ||
            echo "setup: warning: could not install dataset-fashion-mnist" >&2
    else
        echo "setup: warning: Fashion-MNIST is missing; install the Debian package dataset-fashion-mnist" >&2
    fi
fi
