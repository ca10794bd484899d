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

# Python packages for the checks and tests, pinned: the TensorBoard reader
# and server (tests/tensorboard.rs, `tensorboard --logdir runs`), torchvision's
# ResNet (tests/embed.rs, scripts/check_export.sh; 0.26 is the release for
# torch 2.11) and safetensors' own reader (tests/embed.rs). Installed only when
# the pinned version is missing.
pip_pin() {
    local pkg=$1 version=$2 have
    have=$("$VIRTUAL_ENV/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)
    if [ "$have" != "$version" ]; then
        echo "setup: installing $pkg==$version into $VIRTUAL_ENV"
        "$VIRTUAL_ENV/bin/pip" install --quiet --no-input --disable-pip-version-check "$pkg==$version"
    fi
}
pip_pin tensorboard 2.21.0
pip_pin torchvision 0.26.0
pip_pin safetensors 0.8.0
# The Python package's build backend and its tests (python/, scripts/test.sh).
pip_pin maturin 1.9.4
pip_pin pytest 8.4.2

# Debian packages: `apt_install PACKAGE FILE` installs PACKAGE when FILE is
# missing (apt as root, else sudo).
apt_install() {
    local pkg=$1 file=$2
    [ -e "$file" ] && return 0
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: installing the Debian package $pkg"
        (apt-get install -y -qq "$pkg" >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "$pkg" >/dev/null; }) ||
            echo "setup: warning: could not install $pkg" >&2
    elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
        echo "setup: installing the Debian package $pkg (sudo)"
        sudo apt-get install -y -qq "$pkg" >/dev/null ||
            echo "setup: warning: could not install $pkg" >&2
    else
        echo "setup: warning: $file is missing; install the Debian package $pkg" >&2
    fi
}

# Fashion-MNIST, the default dataset (MIT licence).
apt_install dataset-fashion-mnist /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Gloo's headers, for the shim's c10d process group (the Gloo that runs is
# the one inside libtorch).
apt_install libgloo-dev /usr/include/gloo/config.h
# `ip`, with which the multi-host tests make two hosts of network namespaces.
apt_install iproute2 /usr/sbin/ip

# With a CUDA build of torch, the headers the NCCL process group compiles
# against: CUDA's crt/ and cccl's nv/ (the wheel's nvidia packages have the rest).
cuda=$("$VIRTUAL_ENV/bin/python" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)
nvidia="$("$VIRTUAL_ENV/bin/python" -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null)/nvidia"
if [ "${cuda%%.*}" = 13 ] && { [ ! -f "$nvidia/cu13/include/crt/host_config.h" ] || [ ! -d "$nvidia/cu13/include/nv" ]; }; then
    echo "setup: installing nvidia-cuda-crt and nvidia-cuda-cccl 13.0 (headers for NCCL)"
    "$VIRTUAL_ENV/bin/pip" install --quiet --no-input --disable-pip-version-check \
        "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*" ||
        echo "setup: warning: could not install the CUDA headers; NCCL will not be compiled in" >&2
fi
