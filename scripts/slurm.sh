#!/usr/bin/env bash
# One eqco worker of a SLURM job: maps SLURM's task variables onto torchrun's
# (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
# and runs eqco with the arguments given. Start one task per GPU:
#
#   srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 \
#       scripts/slurm.sh pretrain --config simo --device cuda --out /shared/runs/simo
#
# MASTER_ADDR defaults to the job's first node, MASTER_PORT to 29500 + the
# job id modulo 1000 (so two jobs on one node do not collide); set either to
# override. EQCO names the binary (default: this checkout's release build,
# else `eqco` on PATH).
set -euo pipefail
need() {
    if [ -z "${!1:-}" ]; then
        echo "error: \`$1\` is not set: run this script through srun (it maps SLURM's task variables onto torchrun's)" >&2
        exit 2
    fi
}
need SLURM_PROCID
need SLURM_NTASKS
need SLURM_LOCALID
export RANK="$SLURM_PROCID"
export WORLD_SIZE="$SLURM_NTASKS"
export LOCAL_RANK="$SLURM_LOCALID"
# SLURM_TASKS_PER_NODE reads like "8(x2)" or "8,7": this node's count first.
tasks="${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}"
tasks="${tasks%%(*}"
export LOCAL_WORLD_SIZE="${tasks%%,*}"
if [ -z "${MASTER_ADDR:-}" ]; then
    need SLURM_JOB_NODELIST
    MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
fi
export MASTER_ADDR
export MASTER_PORT="${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${EQCO:-}" ]; then
    if [ -x "$here/target/release/eqco" ]; then EQCO="$here/target/release/eqco"; else EQCO=eqco; fi
fi
exec "$EQCO" "$@"
