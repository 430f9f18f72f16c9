"""Pyramid ablation: full-resolution flow matching vs 2 and 3 stages, two gammas."""


def sweep(add):
  add(**{'pyramid.stages': 1, 'pyramid.sample_ratios': [1], 'sample.steps_per_stage': [60]})
  add(**{'pyramid.stages': 2, 'pyramid.sample_ratios': [1, 1],
         'sample.steps_per_stage': [30, 30]})
  for gamma in (1 / 3, 0.5):
    add(**{'pyramid.stages': 3, 'pyramid.gamma': gamma})
