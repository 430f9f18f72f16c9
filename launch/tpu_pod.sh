#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; JAX finds its peers itself.
#   bash launch/tpu_pod.sh my-tpu us-central2-b configs/moving_digits.py gs://bucket/runs/digits [--config.x=y]
# The workdir must be on storage every worker sees (GCS); install the repo and
# `pip install -r requirements.txt "jax[tpu]"` on the workers first.
set -euo pipefail
TPU=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command \
  "cd pflow_jax && python -m pflow_jax.train --config=$CONFIG --workdir=$WORKDIR $*"
