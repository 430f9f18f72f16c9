"""Overfit check: the whole pipeline (real clips -> latents -> pyramid loss -> optimiser ->
pyramid sampler -> pixels) memorises two training clips (benchmarks/memorisation.py).

A bug anywhere on that path (a timestep or ratio that differs between training and
sampling, a wrong stage jump, a caption that never reaches the DiT) leaves the samples
far from their clips however long the model trains. The bound comes from the data: a
memorised sample's error to its own clip is under a quarter of what drawing nothing
(a black clip) costs, and its nearest training clip is its own. The same check on the
untrained model fails, so the test can fail.

The model is `:tiny` with two settings the probe showed it needs (docs/sample_quality.md):
the clean-latent output (its 32-wide stream cannot carry the 64 values per token that a
velocity's noise part must reproduce) and spatial RoPE with sincos spacing 1 (at the
official spacing, 1/3, the four tokens of stage 1 look alike).
"""

import numpy as np

from benchmarks import memorisation
from configs import moving_digits

STEPS = 1500


def test_the_pipeline_memorises_two_clips():
  config = moving_digits.get_config('tiny')
  config.dtype = 'float32'
  config.model.update(rope_axes_dim=(4, 6, 6), pos_embed_max_size=4)
  config.pyramid.prediction = 'clean'
  config.optim.update(lr=3e-3, warmup_steps=10)
  clips, captions = memorisation.distinct_clips(config, 2)
  probe = memorisation.Probe(config, clips, captions, copies=3, num_steps=STEPS)
  rows = np.arange(len(probe.own))
  bound = 0.25 * probe.blank

  untrained = probe.sample_errors()
  assert np.all(untrained[rows, probe.own] > bound), untrained
  probe.train(STEPS)
  trained = probe.sample_errors()
  assert np.all(trained[rows, probe.own] < bound), (trained[rows, probe.own], bound)
  assert np.all(trained.argmin(axis=1) == probe.own), trained
