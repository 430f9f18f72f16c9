"""Text -> video: the pyramid sampler driven by the model, then latent decode."""

from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pflow_jax import config as config_lib
from pflow_jax.models import text as text_lib
from pflow_jax.models.latent_codec import LatentCodec
from pflow_jax.parallel import rules
from pflow_jax.pyramid import sampler, schedule as schedule_lib


def make_generate_fn(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                     codec: LatentCodec, *, num_samples: int,
                     steps_per_stage: Sequence[int], guidance_scale: float):
  """generate(params, tokens [N, L], rng) -> videos float [-1, 1] [N, T, H, W, C], jitted.

  `tokens` are tokenized prompts for the toy text encoder. Classifier-free
  guidance uses the empty caption as the unconditional input, as in training.
  """
  schedule = schedule_lib.make_schedule(
      stages=config.pyramid.stages, stage_range=config.pyramid.stage_range,
      gamma=config.pyramid.gamma, shift=config.pyramid.shift,
      num_train_timesteps=config.pyramid.num_train_timesteps)
  t, h, w = config_lib.latent_size(config)
  shape = (num_samples, t, h, w, codec.latent_channels)
  steps = tuple(int(s) for s in steps_per_stage)
  if len(steps) != config.pyramid.stages:
    raise ValueError(f'steps_per_stage {steps} needs one entry per stage ({config.pyramid.stages})')

  @jax.jit
  def generate(params: nnx.State, tokens: jax.Array, rng: jax.Array) -> jax.Array:
    model = nnx.merge(graphdef, params)
    with rules.use_rules(config.rules):
      cond = model.encode_text({'tokens': tokens})
      uncond = model.encode_text({'tokens': jnp.zeros_like(tokens)})
      velocity_fn = functools.partial(model.velocity, full_size=(h, w))
      latents = sampler.sample(velocity_fn, cond, uncond, rng, schedule, shape, steps,
                               guidance_scale)
      return codec.decode(latents)

  return generate


def to_uint8(videos: jax.Array) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels on the host."""
  return np.asarray(jnp.clip((videos + 1.0) * 127.5 + 0.5, 0, 255).astype(jnp.uint8))


def tokenize_prompts(config: ml_collections.ConfigDict, prompts: Sequence[str]) -> np.ndarray:
  return text_lib.tokenize(list(prompts), config.text.max_length)
