#!/usr/bin/env bash
# The acceptance run for a machine with a GPU: every CUDA and NCCL path of
# eqco once, in under 10 minutes, with nothing but the built binary, the
# Fashion-MNIST files and a Python with torch (for the PyTorch side of the
# benchmark and for torchrun).
#
#   scripts/gpu-check.sh [--device cuda|cpu] [--bin target/release/eqco]
#                        [--data DIR] [--python PY] [--out DIR]
#
# Steps, each timed and marked ok or FAILED (the script goes on after a
# failure and exits 1 at the end if any step failed):
#   1. eqco bench train, fp32 and bf16, against PyTorch in the same call;
#   2. exact resume: a run cut mid-epoch and resumed against the same run
#      uninterrupted, beside a second uninterrupted run that measures the
#      device's own nondeterminism (cuDNN's algorithm choice and atomics):
#      the resumed losses must equal the uninterrupted ones within it;
#   3. eqco eval knn on the device;
#   4. data-parallel pretraining on NCCL (Gloo with --device cpu): our
#      launcher at world size 1, and 2 where there are two GPUs (CPU: 2
#      workers), and torchrun's --no-python launch at world size 1;
#   5. eqco bench dist on the same backend.
# `--device cpu` runs every step on the CPU (Gloo instead of NCCL), to show
# that the script works on a machine without a GPU.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

DEVICE=cuda
BIN="$ROOT/target/release/eqco"
DATA=""
PY=""
OUT="${OUT:-$ROOT/runs/gpu-check}"
usage() { sed -n 2,22p "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in
    cpu|cuda) ;;
    *) echo "gpu-check: --device must be cpu or cuda, not '$DEVICE'" >&2; exit 2 ;;
esac

# The Python with torch: the flag, the project's venv, the device machine's.
# `torch_site PY` prints the site-packages holding PY's torch (without
# importing torch, which takes seconds).
torch_site() {
    "$1" -c 'import importlib.util as u, os; s = u.find_spec("torch"); print(os.path.dirname(os.path.dirname(s.origin)))' 2>/dev/null
}
if [ -z "$PY" ]; then
    for p in "${VIRTUAL_ENV:-}/bin/python" "$ROOT/.venv/bin/python" /opt/torch/.venv/bin/python; do
        if [ -x "$p" ] && torch_site "$p" >/dev/null; then PY=$p; break; fi
    done
fi
if [ -z "$PY" ] || ! torch_site "$PY" >/dev/null; then
    echo "gpu-check: no Python with torch found; pass --python PATH" >&2
    exit 2
fi
# The Fashion-MNIST folder: the flag, Debian's, or a copy carried in data/.
if [ -z "$DATA" ]; then
    for d in /usr/share/datasets/fashion-mnist "$ROOT/data/fashion-mnist"; do
        if [ -f "$d/train-images-idx3-ubyte.gz" ]; then DATA=$d; break; fi
    done
fi
if [ -z "$DATA" ] || [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
    echo "gpu-check: no Fashion-MNIST files (train-images-idx3-ubyte.gz …) found; pass --data DIR" >&2
    exit 2
fi
if [ ! -x "$BIN" ]; then
    echo "gpu-check: no eqco binary at $BIN; build it (cargo build --release) or pass --bin PATH" >&2
    exit 2
fi

# The binary runs on the libtorch of that Python's torch (the one it was
# built against, or the same version elsewhere) and its CUDA libraries.
SITE=$(torch_site "$PY")
LIBS="$SITE/torch/lib"
for d in "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu*/lib; do [ -d "$d" ] && LIBS="$LIBS:$d"; done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
TORCHRUN="$(dirname "$PY")/torchrun"

rm -rf "$OUT"
mkdir -p "$OUT"
FAILED=()
T0=$SECONDS
step() {
    local name=$1
    shift
    echo
    echo "=== $name"
    local t=$SECONDS
    if "$@"; then
        echo "--- ok: $name ($((SECONDS - t)) s)"
    else
        echo "--- FAILED: $name ($((SECONDS - t)) s)"
        FAILED+=("$name")
    fi
}

# A small job on the data: 5,000 images, 2 epochs of N = 256 (38 steps).
SMALL=(--set "data_dir=$DATA" --set max_images=5000 --set epochs=2 --set knn_every=0
       --set checkpoint_every=10 --device "$DEVICE")
if [ "$DEVICE" = cuda ]; then
    BACKEND=nccl
    # The GPUs this process may use (CUDA_VISIBLE_DEVICES and MIG counted).
    GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
else
    BACKEND=gloo
    GPUS=0
fi

machine() {
    echo "binary: $BIN"
    echo "python: $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
    echo "data:   $DATA"
    echo "CPU:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, bf16: $(grep -q -E 'avx512_bf16|amx_bf16' /proc/cpuinfo && echo native || echo emulated)"
    if [ "$DEVICE" = cuda ]; then
        nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || return 1
        "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch sees", torch.cuda.device_count(), "GPU(s)")'
    fi
}

bench_train() {
    local extra=()
    [ "$DEVICE" = cpu ] && extra=(--methods simo --models fmnist --steps 2 --threads "$(nproc)")
    "$BIN" bench train --device "$DEVICE" --precision fp32,bf16 --memory-format channels_last \
        --python "$PY" "${extra[@]}"
}

# Losses per step of a run folder's metrics.jsonl, compared: prints the
# largest difference of `a` against `b` and of `a` against `floor`, and
# fails unless the resumed run is within 10× the floor (exactly equal where
# the device is deterministic and the floor is 0).
compare_losses() {
    "$PY" - "$@" <<'EOF'
import json, sys
def losses(run):
    with open(f"{run}/metrics.jsonl") as f:
        return [(m["step"], m["loss"]) for m in map(json.loads, f) if "loss" in m]
full, again, resumed = (losses(r) for r in sys.argv[1:4])
assert [s for s, _ in full] == [s for s, _ in resumed], "the resumed run has other steps"
floor = max(abs(a - b) for (_, a), (_, b) in zip(full, again))
drift = max(abs(a - b) for (_, a), (_, b) in zip(full, resumed))
print(f"{len(full)} steps; largest |loss difference|: uninterrupted twice {floor:.3e} "
      f"(the device's nondeterminism), uninterrupted vs cut at step 23 and resumed {drift:.3e}")
if drift > 10 * floor:
    sys.exit(f"resume is not exact: {drift:.3e} > 10 × {floor:.3e}")
print("resume is exact" if drift == 0 else "resume is exact within the device's nondeterminism")
EOF
}

resume() {
    local r=$OUT/resume
    "$BIN" pretrain "${SMALL[@]}" --out "$r/full" >"$r-full.log" 2>&1 || { tail -20 "$r-full.log"; return 1; }
    "$BIN" pretrain "${SMALL[@]}" --out "$r/again" >"$r-again.log" 2>&1 || { tail -20 "$r-again.log"; return 1; }
    "$BIN" pretrain "${SMALL[@]}" --set max_steps=23 --out "$r/cut" >"$r-cut.log" 2>&1 || { tail -20 "$r-cut.log"; return 1; }
    "$BIN" pretrain --resume "$r/cut" --set max_steps=38 --device "$DEVICE" >"$r-resumed.log" 2>&1 \
        || { tail -20 "$r-resumed.log"; return 1; }
    grep -h -m1 '^precision' "$r-full.log"
    compare_losses "$r/full" "$r/again" "$r/cut"
}

knn() {
    "$BIN" eval knn --checkpoint "$OUT/resume/full/checkpoints/latest.safetensors" \
        --bank 10000 --device "$DEVICE" --out "$OUT/knn"
}

data_parallel() {
    local n=$1
    "$BIN" pretrain "${SMALL[@]}" --set epochs=1 --set "dist_backend=$BACKEND" --nproc-per-node "$n" \
        --out "$OUT/dp-$n" 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    "$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); print({k: s[k] for k in ("steps", "processes", "precision", "comm_share", "img_per_s") if k in s})' \
        "$OUT/dp-$n/summary.json"
}

torchrun_launch() {
    if [ ! -x "$TORCHRUN" ]; then echo "no torchrun beside $PY"; return 1; fi
    "$TORCHRUN" --standalone --nproc-per-node 1 --no-python "$BIN" pretrain "${SMALL[@]}" \
        --set epochs=1 --set "dist_backend=$BACKEND" --out "$OUT/torchrun" 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    test -f "$OUT/torchrun/summary.json"
}

bench_dist() {
    local nproc=1
    if [ "$DEVICE" = cpu ] || [ "$GPUS" -ge 2 ]; then nproc=1,2; fi
    "$BIN" bench dist --device "$DEVICE" --nproc "$nproc" --set "data_dir=$DATA" \
        --set "dist_backend=$BACKEND" --steps 20 --warmup 3
}

step "machine" machine
step "bench train, fp32 and bf16, against PyTorch ($DEVICE)" bench_train
step "pretrain, cut at step 23 and resumed, against the uninterrupted run ($DEVICE)" resume
step "eval knn ($DEVICE)" knn
step "data parallel on $BACKEND, world size 1 (our launcher)" data_parallel 1
if [ "$DEVICE" = cpu ] || [ "$GPUS" -ge 2 ]; then
    step "data parallel on $BACKEND, world size 2 (our launcher)" data_parallel 2
else
    echo
    echo "=== data parallel on $BACKEND, world size 2: skipped (this machine has $GPUS GPU)"
fi
step "data parallel on $BACKEND, world size 1 (torchrun --no-python)" torchrun_launch
step "bench dist on $BACKEND" bench_dist

echo
echo "gpu-check: $((SECONDS - T0)) s in all, on $DEVICE; files in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'gpu-check: FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "gpu-check: every step ok"
