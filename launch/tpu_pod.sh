#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; JAX finds its peers itself.
#   bash launch/tpu_pod.sh my-tpu us-central2-b configs/moving_digits.py gs://bucket/runs/digits [--config.x=y]
# The workdir must be one every worker sees: a bucket (gs://) or a shared mount. Install
# the repo and `pip install -r requirements.txt "jax[tpu]" gcsfs google-cloud-storage` on
# the workers first (the last two for a gs:// workdir).
# Overrides are shell-quoted for the remote shell, so tuples such as
# --config.model.rope_axes_dim='(16,24,24)' arrive intact.
# DRY_RUN=1 prints the command (shell-quoted) instead of running it.
set -euo pipefail
TPU=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REMOTE="cd pflow_jax && python -m pflow_jax.train $(printf '%q ' --config="$CONFIG" --workdir="$WORKDIR" "$@")"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command "$REMOTE")
if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "${CMD[@]}"; echo; else exec "${CMD[@]}"; fi
