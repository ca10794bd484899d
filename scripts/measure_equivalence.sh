#!/usr/bin/env bash
# Measures what tests/distributed.rs bounds, for one setting and seed: the
# drift of 2 Gloo workers from 1 process (W = 2 vs W = 1), and the noise
# floor (1 process at 1 vs 2 threads), per step's loss, in the first step's
# gradients and in the final weights. The tiny model of the tests, on a
# random CIFAR-10 fixture written to OUT/cifar.
#
#   bash scripts/measure_equivalence.sh OUT PRESET PRECISION FORMAT STEPS SEED [key=value ...]
#   e.g. bash scripts/measure_equivalence.sh /tmp/eq fmnist-simo bf16 channels_last 2 0 k_negatives=31
set -euo pipefail
[ $# -ge 6 ] || { sed -n 2,9p "$0" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
out=$1 preset=$2 precision=$3 format=$4 steps=$5 seed=$6
shift 6
eqco="$EQCO_ROOT/target/release/eqco"
[ -x "$eqco" ] || { echo "error: build first: cargo build --release" >&2; exit 2; }
data="$out/cifar"
if [ ! -f "$data/data_batch_1.bin" ]; then
    mkdir -p "$data"
    python - "$data" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
for name, n in [("data_batch_1.bin", 256), ("test_batch.bin", 64)]:
    labels = (np.arange(n) % 10).astype(np.uint8)[:, None]
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    open(f"{sys.argv[1]}/{name}", "wb").write(np.concatenate([labels, pixels], 1).tobytes())
PY
fi
args=(pretrain --config "$preset" --seed "$seed")
for s in dataset=cifar10 "data_dir=\"$data\"" backbone=resnet10 width=0.125 batch_size=32 \
    image_size=16 head_hidden=32 embed_dim=16 loader_threads=1 max_steps="$steps" \
    checkpoint_every=1 keep_checkpoints=0 lr=0.01 warmup_epochs=0 weight_decay=0 precision="$precision" \
    memory_format="$format" "$@"; do
    args+=(--set "$s")
done
run="$out/$preset-$precision-$format-seed$seed"
rm -rf "$run"
"$eqco" "${args[@]}" --out "$run/w1" --threads 1 >/dev/null
"$eqco" "${args[@]}" --out "$run/threads2" --threads 2 >/dev/null
"$eqco" "${args[@]}" --out "$run/w2" --threads 1 --nproc-per-node 2 >/dev/null
python - "$run" "$steps" <<'PY'
import json, sys
from safetensors.torch import load_file
run, steps = sys.argv[1], int(sys.argv[2])
def losses(r):
    return [json.loads(l)["loss"] for l in open(f"{run}/{r}/metrics.jsonl")]
def rel(x, y):
    return abs(x - y) / max(abs(x), abs(y)) if x or y else 0.0
def drift(r, prefix, step):
    a = load_file(f"{run}/w1/checkpoints/step-{step}.safetensors")
    b = load_file(f"{run}/{r}/checkpoints/step-{step}.safetensors")
    keys = [k for k in a if k.startswith(prefix) and ".running_" not in k]
    d = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)
    return (d / sum((a[k].double() ** 2).sum() for k in keys)).sqrt().item()
w1 = losses("w1")
for r, what in [("w2", "W = 2 vs W = 1"), ("threads2", "floor (1 vs 2 threads)")]:
    per_step = " ".join(f"{rel(x, y):.1e}" for x, y in zip(w1, losses(r)))
    print(f"{what}: losses [{per_step}], step-1 gradients {drift(r, 'optim.', 1):.1e}, "
          f"weights after step {steps} {drift(r, 'query.', steps):.1e}")
PY
