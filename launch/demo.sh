#!/usr/bin/env bash
# Installs the project into .venv, trains the embedded default (moving MNIST
# digits, CPU, 16-25 minutes on 2 cores: 1 install, 7-12 training), samples from it
# and scores 256 samples on the moving-digits ruler (docs/evaluation.md; the digit
# scorer is trained once, 6-11 minutes, and cached under data/).
# Rerunning resumes from the last checkpoint in $WORKDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORKDIR=${WORKDIR:-runs/moving_digits}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pflow_jax.train --config=configs/moving_digits.py --workdir="$WORKDIR" "$@"
.venv/bin/python -m pflow_jax.sample --workdir="$WORKDIR" --prompt "a 3 moving left" \
    --num_samples 4 --out "$WORKDIR/samples/a_3_moving_left.mp4" --overwrite
.venv/bin/python -m pflow_jax.evaluate --workdir="$WORKDIR" --num_samples=256
