"""Does the model use its prompt? The training loss per stage with own, shuffled and empty captions.

A model that uses the text fits its own clips' velocities better with their own
captions than with another clip's caption. The gap is measured on the training
objective itself (make_loss_fn, without caption dropout), per pyramid stage, on
the same clips, noise and timesteps for the three caption sets:

  own       each clip's caption
  shuffled  the caption of the previous clip in the batch (a different prompt)
  empty     the unconditional caption classifier-free guidance uses
  text_gain 1 - own / shuffled per stage: the share of the loss the prompt explains

An autoregressive model is scored on every target frame, from frame 0 (no history,
where the prompt decides everything) to the last, and the losses averaged: its
training steps draw one frame per stage column.

The moving-digits default at 2,400 steps has text_gain 0.20 / 0.07 / 0.005 on
stages 0 / 1 / 2 (0.02 / 0.008 / 0.005 with SD3's positions; docs/sample_quality.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pflow_jax import config as config_lib
from pflow_jax.models.latent_codec import LatentCodec
from pflow_jax.training import step as step_lib

CAPTION_SETS = ('own', 'shuffled', 'empty')


def caption_ablation(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, params: nnx.State,
                     codec: LatentCodec, videos: np.ndarray, tokens: np.ndarray,
                     draws: int = 3, batch_size: int = 48, seed: int = 0,
                     unit_lengths: Sequence[int] | None = None) -> dict[str, list[float]]:
  """Mean training loss per stage for each caption set; see the module docstring.

  videos: uint8 [N, T, H, W, C] clips; tokens: int32 [N, L] their captions. N is
  cut to whole batches of batch_size (a multiple of sum(pyramid.sample_ratios));
  each batch is scored with `draws` noise/timestep draws. unit_lengths
  (autoregressive models only): the target frames to score, as frames up to and
  including the target (1 is frame 0); default all of a clip's latent frames.
  """
  columns = sum(config.pyramid.sample_ratios)
  if batch_size % columns:
    raise ValueError(f'batch_size {batch_size} is not a multiple of sum(pyramid.sample_ratios) '
                     f'= {columns}')
  num_batches = len(videos) // batch_size
  if num_batches < 1 or len(tokens) != len(videos):
    raise ValueError(f'need at least {batch_size} clips with one caption each; got '
                     f'{len(videos)} clips and {len(tokens)} captions')
  if len(np.unique(tokens, axis=0)) < 2:
    raise ValueError('the clips share one caption: shuffling changes nothing')
  no_dropout = config.copy_and_resolve_references()
  with no_dropout.unlocked():
    no_dropout.pyramid.text_dropout = 0.0
  loss_fn = step_lib.make_loss_fn(no_dropout, graphdef)
  stages = config.pyramid.stages
  if config.temporal.autoregressive:
    frames = config_lib.latent_size(config)[0]
    lengths = list(range(1, frames + 1)) if unit_lengths is None else list(unit_lengths)
    if not lengths or not all(1 <= n <= frames for n in lengths):
      raise ValueError(f'unit_lengths {lengths} must lie in [1, {frames}]')
    unit_sets = [jnp.full((stages,), n, jnp.int32) for n in lengths]
  elif unit_lengths is not None:
    raise ValueError('unit_lengths is for autoregressive models')
  else:
    unit_sets = [None]

  @jax.jit
  def stage_losses(params, video, tokens, rng, units):
    return loss_fn(params, {'video': video, 'tokens': tokens}, rng, codec, units)[1][
        'loss_per_stage']

  sums = {name: 0.0 for name in CAPTION_SETS}
  for b in range(num_batches):
    video = jnp.asarray(videos[b * batch_size:(b + 1) * batch_size])
    own = jnp.asarray(tokens[b * batch_size:(b + 1) * batch_size])
    captions = {'own': own, 'shuffled': jnp.roll(own, 1, axis=0), 'empty': jnp.zeros_like(own)}
    for d in range(draws):
      rng = jax.random.fold_in(jax.random.key(seed), b * draws + d)
      for units in unit_sets:
        for name in CAPTION_SETS:
          sums[name] = sums[name] + np.asarray(
              stage_losses(params, video, captions[name], rng, units))
  count = num_batches * draws * len(unit_sets)
  report = {name: [float(v) for v in sums[name] / count] for name in CAPTION_SETS}
  report['text_gain'] = [1.0 - o / s for o, s in zip(report['own'], report['shuffled'])]
  return report
