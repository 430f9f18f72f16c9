#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all local GPUs per process.
#   sbatch --nodes=2 --gpus-per-node=8 launch/gpu_slurm.sh configs/moving_digits.py runs/digits [--config.x=y ...]
# JAX discovers the coordinator from SLURM variables (pflow_jax/distributed.py).
# DRY_RUN=1 prints the command (shell-quoted) instead of running it.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
CONFIG=$1; WORKDIR=$2; shift 2
CMD=(srun --kill-on-bad-exit=1 python -m pflow_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@")
if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${CMD[@]}"; echo; else exec "${CMD[@]}"; fi
