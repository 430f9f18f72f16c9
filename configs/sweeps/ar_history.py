"""The temporal pyramid's ablation: compressed vs full-resolution history, equal training FLOPs.

  python launch/sweep.py --sweep=configs/sweeps/ar_history.py \
      --config=configs/moving_digits.py:ar --workdir=runs/ar_history --run --evaluate
  python launch/study.py --workdir=runs/ar_history --out=docs/ar_history_study

The `:ar` variant trains one target frame per sample on its history. With
temporal.compress_history (the paper's temporal pyramid) older frames are kept at
coarser resolution; without it every history frame is at the target's
resolution, which costs 2.4x the FLOPs per step here (training/flops.py). Both
train for the FLOPs of BUDGET_STEPS steps of the compressed run, 3 seeds each,
and are scored once, at the end of their budget.
"""

from configs import moving_digits
from pflow_jax.training import flops

SEEDS = (0, 1, 2)
BUDGET_STEPS = 800


def overrides(compress: bool, seed: int) -> dict:
  config = moving_digits.get_config('ar')
  budget = BUDGET_STEPS * flops.train_step_flops(config)
  config.temporal.compress_history = compress
  steps = round(budget / flops.train_step_flops(config))
  return {'seed': seed, 'temporal.compress_history': compress, 'train.num_steps': steps,
          'train.checkpoint_every': steps, 'train.keep_checkpoints': 1,
          'train.sample_every': steps}


def name(overrides: dict) -> str:
  history = 'compressed' if overrides['temporal.compress_history'] else 'full'
  return f"history={history}_seed={overrides['seed']}"


def sweep(add):
  for seed in SEEDS:
    for compress in (True, False):
      add(**overrides(compress, seed))
