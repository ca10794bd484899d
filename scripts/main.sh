#!/usr/bin/env bash
# The main job, from a fresh machine: set-up (venv with torch, Fashion-MNIST),
# release build, then self-supervised pretraining with the default preset
# (fmnist-simo: SiMo with EqCo on Fashion-MNIST, a few minutes on a CPU),
# then the commands to run next on its run folder.
# Extra arguments go to `eqco pretrain` (e.g. --set k_negatives=16 --out runs/k16).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --locked
out=runs/pretrain
if [ -e "$out/metrics.jsonl" ]; then
    out="runs/pretrain-$(date +%Y%m%d-%H%M%S)"
fi
# An --out among the extra arguments names the run folder instead.
args=("$@")
own_out=(--out "$out")
for i in "${!args[@]}"; do
    case "${args[$i]}" in
        --out) out="${args[$((i + 1))]:-}"; own_out=() ;;
        --out=*) out="${args[$i]#--out=}"; own_out=() ;;
    esac
done
target/release/eqco pretrain "${own_out[@]}" "$@"
