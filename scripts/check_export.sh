#!/usr/bin/env bash
# Exports ResNet-18 (ImageNet stem, 3 channels; small stem, 1 channel) and
# ResNet-50 backbones after one pretraining step each, and loads every file
# into torchvision with strict=True (scripts/check_export.py). setup.sh installs
# torchvision (pinned) into the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
cargo build --release --locked --bin eqco
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for spec in "resnet18 imagenet 3" "resnet18 small 1" "resnet50 imagenet 3"; do
    read -r arch stem channels <<<"$spec"
    run="$tmp/$arch-$stem-$channels"
    target/release/eqco pretrain --out "$run" --threads 2 \
        --set backbone="$arch" --set width=1 --set stem="$stem" --set channels="$channels" \
        --set max_images=64 --set batch_size=32 --set k_negatives=31 --set max_steps=1 >/dev/null 2>&1
    target/release/eqco export --checkpoint "$run/checkpoints/latest.safetensors" \
        --format safetensors --out "$run.safetensors"
    python scripts/check_export.py "$run.safetensors"
done
