"""The reproduction study: pyramid K = 1, 2, 3 stages at equal training FLOPs, 3 seeds each.

  python launch/sweep.py --sweep=configs/sweeps/reproduction.py \
      --config=configs/moving_digits.py --workdir=runs/repro --run --evaluate
  python launch/study.py --workdir=runs/repro       # table (JSON, markdown) and plots

Every run trains for the training FLOPs (training/flops.py) of BUDGET_STEPS steps
of the 3-stage default, so K = 1 (full-resolution flow matching) takes the
fewest steps. Each run keeps two checkpoints (half and all of the budget) for
the quality-against-training-compute curve. `--evaluate` then scores each
checkpoint and the sampling settings of SAMPLING below (fewer Euler steps,
and the stage jump without its corrective noise).
"""

from configs import moving_digits
from pflow_jax.training import flops

SEEDS = (0, 1, 2)
STAGES = (1, 2, 3)
BUDGET_STEPS = 2400
STEPS_PER_STAGE_TOTAL = 60  # Euler steps of one sample, split evenly over the stages


def overrides(stages: int, seed: int) -> dict:
  config = moving_digits.get_config()
  budget = BUDGET_STEPS * flops.train_step_flops(config)
  config.pyramid.stages = stages
  config.pyramid.sample_ratios = (1,) * stages
  steps = 2 * round(budget / flops.train_step_flops(config) / 2)
  per_stage = (STEPS_PER_STAGE_TOTAL // stages,) * stages
  return {'seed': seed, 'pyramid.stages': stages, 'pyramid.sample_ratios': (1,) * stages,
          'sample.steps_per_stage': per_stage, 'sample.video_steps_per_stage': per_stage,
          'train.num_steps': steps, 'train.checkpoint_every': steps // 2,
          'train.keep_checkpoints': 2, 'train.sample_every': steps}


def name(overrides: dict) -> str:
  return f"stages={overrides['pyramid.stages']}_seed={overrides['seed']}"


def sweep(add):
  for seed in SEEDS:
    for stages in STAGES:
      add(**overrides(stages, seed))


def sampling(overrides: dict) -> list[list[str]]:
  """Extra `python -m pflow_jax.evaluate` flags for a run's last checkpoint: the sampling
  compute curve (K = 1 and 3) and the jump without corrective noise (K > 1)."""
  stages = overrides['pyramid.stages']
  extra = []
  if stages in (1, 3):
    for total in (15, 30):
      extra.append([f'--steps_per_stage={",".join([str(total // stages)] * stages)}'])
  if stages > 1:
    extra.append(['--norenoise'])
  return extra
