#!/usr/bin/env bash
# The acceptance run for a machine with a GPU: every CUDA and NCCL path of
# eqco once, in under 6 minutes on one GPU, with nothing but the built
# binary, the Fashion-MNIST files and a Python with torch (for the PyTorch
# side of the benchmark and for torchrun).
#
#   scripts/gpu-check.sh [--device cuda|cpu] [--bin target/release/eqco]
#                        [--data DIR] [--python PY] [--out DIR]
#
# Steps, each timed and marked ok or FAILED (the script goes on after a
# failure and exits 1 at the end if any step failed):
#   1. eqco bench train (SiMo and SimCLR), fp32 and bf16, against PyTorch
#      in the same call;
#   2. exact resume: a run cut mid-epoch and resumed against the same run
#      uninterrupted, beside a second uninterrupted run that measures the
#      device's own nondeterminism (cuDNN's algorithm choice and atomics):
#      the resumed losses must equal the uninterrupted ones within it;
#   3. eqco eval knn on the device, and a run with the kNN monitor under a
#      24 MiB pinned_memory_mib whose page-locked peak (the CUDA host
#      allocator's count, blocks at their rounded size) must stay under it;
#   4. SiMo and SimCLR with sync BN in a process group of one
#      (dist_one_rank_group: NCCL's communicator, the SyncBN function, the
#      gathers and the overlapped all-reduce all run on one GPU), with
#      gradient overlap on and off: their losses must agree within the
#      device's floor;
#   5. a failure in that group (its checkpoint folder made unwritable
#      mid-run): the rank must abort its communicators and end, naming the
#      folder, within seconds;
#   6. data-parallel pretraining: our launcher at world size 2 where there
#      are two GPUs (CPU: 2 workers), and torchrun's --no-python launch of a
#      one-rank group;
#   7. eqco bench dist on the same backend.
# `--device cpu` runs every step on the CPU (Gloo instead of NCCL), to show
# that the script works on a machine without a GPU.
#
# It writes only into the folder --out names (default runs/gpu-check),
# which it creates and marks as its own; it refuses a folder that holds
# anything it did not write. When the variable OUT names a folder (a
# device machine returns what is there), its log and summaries are copied
# there at the end.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

DEVICE=cuda
BIN="$ROOT/target/release/eqco"
DATA=""
PY=""
DIR="$ROOT/runs/gpu-check"
usage() { sed -n 2,40p "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        --out) DIR=$2; shift 2 ;;
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

# The output folder: new, or one this script wrote before (its mark).
MARK=.written-by-gpu-check
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ] && [ ! -f "$DIR/$MARK" ]; then
    echo "gpu-check: $DIR holds files this script did not write; pass --out with a new or empty folder" >&2
    exit 2
fi
if [ -f "$DIR/$MARK" ]; then
    find "$DIR" -mindepth 1 -maxdepth 1 ! -name "$MARK" -exec rm -rf {} +
fi
mkdir -p "$DIR" && touch "$DIR/$MARK" || { echo "gpu-check: cannot create $DIR" >&2; exit 1; }
DIR="$(cd "$DIR" && pwd)"
# Temporary files (torchrun's, PyTorch's caches) go into the folder too.
export TMPDIR="$DIR/tmp"
mkdir -p "$TMPDIR"
# Everything printed goes to the log too.
exec > >(tee "$DIR/gpu-check.log") 2>&1
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
    local extra=(--methods simo,simclr --models fmnist,resnet18-32)
    [ "$DEVICE" = cpu ] && extra=(--methods simo --models fmnist --steps 2 --threads "$(nproc)")
    "$BIN" bench train --device "$DEVICE" --precision fp32,bf16 --memory-format channels_last \
        --python "$PY" "${extra[@]}"
}

# Losses per step of three run folders' metrics.jsonl: `a`, `again` (the
# same run twice: the device's own nondeterminism, the floor) and `other`.
# Prints the largest differences and fails unless `other` is within 10× the
# floor of `a`, or within LEAST (relative) where that is larger; 0 where
# the device is deterministic and LEAST is 0.
compare_losses() {
    "$PY" - "$@" <<'EOF'
import json, sys
def losses(run):
    with open(f"{run}/metrics.jsonl") as f:
        return [(m["step"], m["loss"]) for m in map(json.loads, f) if "loss" in m]
a, again, other = (losses(r) for r in sys.argv[1:4])
what, least = sys.argv[4], float(sys.argv[5])
assert len(a) > 0 and [s for s, _ in a] == [s for s, _ in other], f"{what}: other steps"
floor = max(abs(x - y) for (_, x), (_, y) in zip(a, again))
drift = max(abs(x - y) for (_, x), (_, y) in zip(a, other))
scale = max(abs(x) for _, x in a)
bound = max(10 * floor, least * scale)
print(f"{len(a)} steps; largest |loss difference|: the same run twice {floor:.3e} "
      f"(the device's nondeterminism), {what} {drift:.3e} (bound {bound:.3e})")
if drift > bound:
    sys.exit(f"{what}: {drift:.3e} > {bound:.3e}")
EOF
}

resume() {
    local r=$DIR/resume
    "$BIN" pretrain "${SMALL[@]}" --out "$r/full" >"$r-full.log" 2>&1 || { tail -20 "$r-full.log"; return 1; }
    "$BIN" pretrain "${SMALL[@]}" --out "$r/again" >"$r-again.log" 2>&1 || { tail -20 "$r-again.log"; return 1; }
    "$BIN" pretrain "${SMALL[@]}" --set max_steps=23 --out "$r/cut" >"$r-cut.log" 2>&1 || { tail -20 "$r-cut.log"; return 1; }
    "$BIN" pretrain --resume "$r/cut" --set max_steps=38 --device "$DEVICE" >"$r-resumed.log" 2>&1 \
        || { tail -20 "$r-resumed.log"; return 1; }
    grep -h -m1 '^precision' "$r-full.log"
    compare_losses "$r/full" "$r/again" "$r/cut" "cut at step 23 and resumed" 0
}

knn() {
    "$BIN" eval knn --checkpoint "$DIR/resume/full/checkpoints/latest.safetensors" \
        --bank 10000 --device "$DEVICE" --out "$DIR/knn"
}

# The page-locked memory cap, rounding included: a run with the kNN
# monitor at every epoch under pinned_memory_mib = 24 (its 16 MiB block for
# the trainer's pool, the monitor's beside it) must hold at most 24 MiB at
# once by the CUDA host allocator's own count (summary.json's
# pinned_peak_bytes). On the CPU nothing is locked and the figure is absent.
pinned() {
    local r=$DIR/pinned
    "$BIN" pretrain "${SMALL[@]}" --set knn_every=1 --set pinned_memory_mib=24 --out "$r" >"$r.log" 2>&1 \
        || { tail -20 "$r.log"; return 1; }
    grep -h -m1 '^pinned batch pool' "$r.log"
    "$PY" - "$r/summary.json" "$DEVICE" <<'EOF'
import json, sys
s, device = json.load(open(sys.argv[1])), sys.argv[2]
peak = s.get("pinned_peak_bytes")
if device == "cpu":
    assert peak is None, f"pinned_peak_bytes on the CPU: {peak}"
    print("CPU: nothing page-locked, no pinned_peak_bytes (as it should be)")
    sys.exit(0)
assert peak is not None, "no pinned_peak_bytes in summary.json"
print(f"page-locked at most: {peak / 2**20:.1f} MiB (cap 24 MiB)")
assert 0 < peak <= 24 * 2**20, f"{peak} bytes > the 24 MiB cap"
EOF
}

# One epoch (19 steps) of PRESET in a process group of one with sync BN,
# into DIR/NAME.
one_rank() {
    local preset=$1 name=$2
    shift 2
    "$BIN" pretrain --config "$preset" "${SMALL[@]}" --set epochs=1 --set "dist_backend=$BACKEND" \
        --set dist_one_rank_group=true --set bn=sync "$@" --out "$DIR/$name" >"$DIR/$name.log" 2>&1 \
        || { tail -20 "$DIR/$name.log"; return 1; }
}

# SiMo and SimCLR with sync BN in a group of one, overlap on (twice: the
# floor) and off; then the summary of one, with its share of collectives.
sync_bn() {
    local preset
    for preset in fmnist-simo fmnist-simclr; do
        one_rank "$preset" "$preset-overlap" || return 1
        one_rank "$preset" "$preset-overlap-again" || return 1
        one_rank "$preset" "$preset-no-overlap" --set grad_overlap=false || return 1
        compare_losses "$DIR/$preset-overlap" "$DIR/$preset-overlap-again" "$DIR/$preset-no-overlap" \
            "$preset: overlap off against on" 1e-5 || return 1
    done
    "$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); print({k: s[k] for k in ("steps", "processes", "precision", "comm_share", "img_per_s") if k in s})' \
        "$DIR/fmnist-simclr-overlap/summary.json"
}

# A failure in a group of one: the checkpoint folder becomes a file once
# training runs; the rank must end (exit 1), naming it, within 20 s.
failure() {
    local run=$DIR/failure log=$DIR/failure.log
    "$BIN" pretrain "${SMALL[@]}" --set epochs=50 --set checkpoint_every=2 --set log_every=1 \
        --set "dist_backend=$BACKEND" --set dist_one_rank_group=true --out "$run" >"$log" 2>&1 &
    local pid=$! t=$SECONDS
    while [ ! -f "$run/metrics.jsonl" ] || [ "$(wc -l <"$run/metrics.jsonl")" -lt 3 ]; do
        if ! kill -0 "$pid" 2>/dev/null || [ $((SECONDS - t)) -gt 120 ]; then
            kill "$pid" 2>/dev/null; tail -20 "$log"; return 1
        fi
        sleep 0.2
    done
    mv "$run/checkpoints" "$run/checkpoints.moved" && echo "not a folder" >"$run/checkpoints"
    local broken=$SECONDS
    while kill -0 "$pid" 2>/dev/null && [ $((SECONDS - broken)) -le 20 ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid"; echo "still running 20 s after its checkpoint folder broke"; tail -20 "$log"; return 1
    fi
    wait "$pid"
    local rc=$?
    grep '^error:' "$log" | tail -1
    echo "exit $rc, $((SECONDS - broken)) s after the folder broke"
    [ "$rc" -eq 1 ] && grep -q "$run/checkpoints" "$log"
}

data_parallel() {
    local n=$1
    "$BIN" pretrain "${SMALL[@]}" --set epochs=1 --set "dist_backend=$BACKEND" --nproc-per-node "$n" \
        --out "$DIR/dp-$n" 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    "$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); print({k: s[k] for k in ("steps", "processes", "precision", "comm_share", "img_per_s") if k in s})' \
        "$DIR/dp-$n/summary.json"
}

torchrun_launch() {
    if [ ! -x "$TORCHRUN" ]; then echo "no torchrun beside $PY"; return 1; fi
    "$TORCHRUN" --standalone --nproc-per-node 1 --no-python "$BIN" pretrain "${SMALL[@]}" \
        --set epochs=1 --set "dist_backend=$BACKEND" --set dist_one_rank_group=true \
        --out "$DIR/torchrun" 2>&1 | tail -5
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    test -f "$DIR/torchrun/summary.json"
}

bench_dist() {
    local nproc=1
    if [ "$DEVICE" = cpu ] || [ "$GPUS" -ge 2 ]; then nproc=1,2; fi
    "$BIN" bench dist --device "$DEVICE" --nproc "$nproc" --set "data_dir=$DATA" \
        --set "dist_backend=$BACKEND" --set dist_one_rank_group=true --steps 10 --warmup 3
}

# The log and every summary, copied into $OUT when it is set (a device
# machine returns that folder).
export_summaries() {
    [ -n "${OUT:-}" ] || return 0
    mkdir -p "$OUT" || return 1
    cp "$DIR/gpu-check.log" "$OUT/" || return 1
    local f rel
    for f in "$DIR"/*/summary.json "$DIR"/*/*/summary.json "$DIR"/knn/*.json; do
        [ -f "$f" ] || continue
        rel=${f#"$DIR"/}
        cp "$f" "$OUT/${rel//\//-}"
    done
}

step "machine" machine
step "bench train, fp32 and bf16, against PyTorch ($DEVICE)" bench_train
step "pretrain, cut at step 23 and resumed, against the uninterrupted run ($DEVICE)" resume
step "eval knn ($DEVICE)" knn
step "pinned memory under pinned_memory_mib, rounding and the kNN monitor included ($DEVICE)" pinned
step "sync BN in a group of one on $BACKEND, overlap on and off (SiMo, SimCLR)" sync_bn
step "a failure in a group of one on $BACKEND ends the rank within seconds" failure
if [ "$DEVICE" = cpu ] || [ "$GPUS" -ge 2 ]; then
    step "data parallel on $BACKEND, world size 2 (our launcher)" data_parallel 2
else
    echo
    echo "=== data parallel on $BACKEND, world size 2: skipped (this machine has $GPUS GPU)"
fi
step "a group of one on $BACKEND under torchrun --no-python" torchrun_launch
step "bench dist on $BACKEND" bench_dist

echo
echo "gpu-check: $((SECONDS - T0)) s in all, on $DEVICE; files in $DIR"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'gpu-check: FAILED: %s\n' "${FAILED[@]}"
    export_summaries
    exit 1
fi
echo "gpu-check: every step ok"
export_summaries
