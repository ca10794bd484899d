#!/usr/bin/env bash
# One eqco worker of a SLURM job: maps SLURM's task variables onto torchrun's
# (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and runs eqco with
# the arguments given. eqco itself reads this node's task count from
# SLURM_TASKS_PER_NODE and SLURM_NODEID (e.g. "8(x2),7"), takes the CPUs
# srun bound the task to (sched_getaffinity) for its threads, and resumes on
# its own when SLURM requeues the job (SLURM_RESTART_COUNT > 0). Start one
# task per GPU:
#
#   srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 --kill-on-bad-exit=1 \
#       scripts/slurm.sh pretrain --config simo --device cuda --out /shared/runs/simo
#
# --kill-on-bad-exit=1 is required: a task that dies without a word (SIGKILL,
# the OOM killer) records nothing in the store, and only srun can end the
# others then. A rank that fails with an error ends the job within about a
# second through the store either way.
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
# LOCAL_WORLD_SIZE: eqco reads SLURM_TASKS_PER_NODE with SLURM_NODEID.
unset LOCAL_WORLD_SIZE
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
