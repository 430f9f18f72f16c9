"""Pyramid ablation: full-resolution flow matching vs 2 and 3 stages, two gammas.

  python launch/sweep.py --sweep=configs/sweeps/pyramid_ablation.py \
      --config=configs/moving_digits.py --workdir=runs/ablation [--run]
"""


def sweep(add):
  add(**{'pyramid.stages': 1, 'pyramid.sample_ratios': (1,), 'sample.steps_per_stage': (60,),
         'sample.video_steps_per_stage': (30,)})
  add(**{'pyramid.stages': 2, 'pyramid.sample_ratios': (1, 1),
         'sample.steps_per_stage': (30, 30), 'sample.video_steps_per_stage': (15, 15)})
  for gamma in (1 / 3, 0.25):
    add(**{'pyramid.stages': 3, 'pyramid.gamma': gamma})
