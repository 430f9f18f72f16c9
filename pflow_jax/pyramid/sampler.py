"""The pyramid sampler: Euler steps per stage, renoising jumps between stages, CFG.

Follows the official generate / generate_one_unit / sample_block_noise
(pyramid_dit/pyramid_dit_for_video_gen_pipeline.py) for one unit of frames
generated jointly (no temporal autoregression), channels-last [B, T, H, W, C].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from pflow_jax.pyramid import flow, temporal
from pflow_jax.pyramid.schedule import MAX_GAMMA, PyramidSchedule, inference_schedule
from pflow_jax.pyramid.schedule import jump_coefficients


def block_noise(rng: jax.Array, shape: Sequence[int], gamma: float) -> jax.Array:
  """float32 noise whose 2x2 spatial blocks are N(0, (1 + gamma) I_4 - gamma 1 1^T).

  Blocks are independent across batch, frames, channels and block position.
  The covariance is (1 + gamma) on the zero-sum subspace and 1 - 3 gamma along
  the block mean, so its square root scales those two parts of white noise.
  """
  if len(shape) != 5 or shape[2] % 2 or shape[3] % 2:
    raise ValueError(f'block_noise needs shape [B, T, H, W, C] with even H and W, got '
                     f'{tuple(shape)}')
  if not 0.0 < gamma <= MAX_GAMMA + 1e-12:
    raise ValueError(f'gamma must be in (0, 1/3] for a valid block covariance, got {gamma!r}')
  b, t, h, w, c = shape
  white = jax.random.normal(rng, (b, t, h // 2, 2, w // 2, 2, c), jnp.float32)
  mean = white.mean(axis=(3, 5), keepdims=True)
  noise = (math.sqrt(1.0 + gamma) * (white - mean)
           + math.sqrt(max(1.0 - 3.0 * gamma, 0.0)) * mean)
  return noise.reshape(b, t, h, w, c)


def stage_jump(x: jax.Array, rng: jax.Array, schedule: PyramidSchedule,
               next_stage: int, renoise: bool = True) -> jax.Array:
  """Carries the end of stage next_stage-1 to the start of next_stage (2x resolution).

  renoise False is the paper's ablation without the corrective noise: the
  next stage starts from the plain upsampled end.
  """
  up = flow.upsample2x(x.astype(jnp.float32))
  if not renoise:
    return up
  alpha, beta = jump_coefficients(schedule, next_stage)
  return alpha * up + beta * block_noise(rng, up.shape, schedule.gamma)


def _guided_cond(cond: Any, uncond: Any, guidance_scale: float) -> tuple[bool, Any]:
  """(guided, the model's cond): with guidance the model runs on the batch [uncond; cond]."""
  guided = uncond is not None and guidance_scale != 1.0
  if not guided:
    return False, cond
  return True, jax.tree.map(lambda u, c: jnp.concatenate([u, c]), uncond, cond)


def stage_velocity(model_fn: Callable[[jax.Array, jax.Array], jax.Array], guided: bool,
                   guidance_scale: float, schedule: PyramidSchedule, stage: int,
                   prediction: str) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
  """velocity(x, t, r) on a stage from model_fn(x_in, timesteps): with guidance x_in is
  [x; x] and the velocities combine as v_u + w (v_c - v_u)."""

  def velocity(x: jax.Array, t: jax.Array, r: jax.Array) -> jax.Array:
    x_in = jnp.concatenate([x, x]) if guided else x
    out = model_fn(x_in, jnp.full((x_in.shape[0],), t, jnp.float32))
    if out.shape != x_in.shape:
      raise ValueError(f'the model returned shape {out.shape} for input shape {x_in.shape}')
    v = flow.velocity_from_prediction(out, x_in, r, schedule, stage, prediction)
    if guided:
      v_uncond, v_cond = jnp.split(v, 2)
      v = v_uncond + guidance_scale * (v_cond - v_uncond)
    return v

  return velocity


def euler_stage(velocity: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
                x: jax.Array, schedule: PyramidSchedule, stage: int, steps: int) -> jax.Array:
  """x integrated over a stage's inference schedule in `steps` Euler steps (a fori_loop, so
  compile time does not grow with the step count)."""
  timesteps, ratios = inference_schedule(schedule, stage, steps)
  timesteps, ratios = jnp.asarray(timesteps), jnp.asarray(ratios)

  def euler(j, x):
    return x + (ratios[j + 1] - ratios[j]) * velocity(x, timesteps[j], ratios[j])

  return jax.lax.fori_loop(0, steps, euler, x)


def sample(velocity_fn: flow.VelocityFn, cond: Any, uncond: Any, rng: jax.Array,
           schedule: PyramidSchedule, shape: tuple[int, ...], steps_per_stage: Sequence[int],
           guidance_scale: float, prediction: str = 'velocity',
           renoise: bool = True) -> jax.Array:
  """Float32 latents of full-resolution `shape` [B, T, H, W, C] from noise.

  The initial noise is drawn at full resolution and taken down the noise
  pyramid (as the official code does), so stage 0 starts from white noise at
  the lowest resolution. Guidance (when uncond is given and the Python float
  guidance_scale is not 1) runs velocity_fn once per step on the batch
  [uncond; cond] and combines v_u + w (v_c - v_u). prediction: what
  velocity_fn outputs (flow.velocity_from_prediction); guidance combines the
  velocities. renoise: add the corrective noise at stage jumps (stage_jump).
  """
  k = schedule.stages
  flow.check_resolution(shape, k)
  steps = tuple(steps_per_stage)
  if len(steps) != k:
    raise ValueError(f'steps_per_stage {list(steps)} needs one entry per stage ({k})')
  guided, model_cond = _guided_cond(cond, uncond, guidance_scale)
  noise_rng, jump_rng = jax.random.split(rng)
  x = flow.noise_pyramid(jax.random.normal(noise_rng, tuple(shape), jnp.float32), k)[0]
  jump_rngs = jax.random.split(jump_rng, max(k - 1, 1))
  for stage in range(k):
    if stage > 0:
      x = stage_jump(x, jump_rngs[stage - 1], schedule, stage, renoise)
    velocity = stage_velocity(lambda x_in, t_in: velocity_fn(x_in, t_in, model_cond), guided,
                              guidance_scale, schedule, stage, prediction)
    x = euler_stage(velocity, x, schedule, stage, steps[stage])
  return x


class UnitModel(Protocol):
  """The model as the autoregressive sampler uses it (models/flow_model.FlowModel)."""

  def unit_velocity(self, target, history, num_history, plan, timesteps, cond): ...

  def unit_history_cache(self, target_shape, history, num_history, plan, cond): ...

  def unit_velocity_cached(self, target, cache, timesteps, cond): ...


HISTORY_NOISE_STREAM = 0x68697374  # folded into a frame's key for its history noise


def sample_unit(model: UnitModel, cond: Any, uncond: Any, rng: jax.Array,
                schedule: PyramidSchedule, frames: jax.Array, unit: jax.Array,
                plans: Sequence[Any], steps_per_stage: Sequence[int], guidance_scale: float,
                use_cache: bool, prediction: str = 'velocity',
                renoise: bool = True, history_noise: float = 0.0) -> jax.Array:
  """Latent frame `unit` [B, 1, H, W, C] generated through all pyramid stages.

  frames [B, T, H, W, C] holds the clean frames generated (or given) so far;
  the history is the last min(unit, W) of them before `unit` (W =
  plans[0].max_history, the window), renumbered from frame 0, compressed by the
  plans as in training, with no corruption. Each stage starts from the jump
  of the previous one (stage 0 from the frame's noise at the lowest
  resolution) and takes its Euler steps; with guidance the model runs on the
  batch [uncond; cond] and combines v_u + w (v_c - v_u). use_cache computes the
  history's keys/values once per stage (exact with 'clean' history
  conditioning) instead of at every step. prediction: what the model outputs
  (flow.velocity_from_prediction). renoise: as in `sample`. history_noise s
  corrupts the history as training does, h <- (1 - s) h + s noise, with one
  fixed s (0: clean history, the official sampler).
  """
  k = schedule.stages
  steps = tuple(steps_per_stage)
  if len(steps) != k or len(plans) != k:
    raise ValueError(f'need one step count and one plan per stage ({k}), got {steps}, '
                     f'{len(plans)} plans')
  window = plans[0].max_history
  batch, _, h, w, c = frames.shape
  guided, model_cond = _guided_cond(cond, uncond, guidance_scale)
  double = (lambda a: jnp.concatenate([a, a])) if guided else (lambda a: a)

  start = jnp.maximum(unit - window, 0)
  num_history = jnp.minimum(unit, window)
  unit_rng = jax.random.fold_in(rng, unit)
  bank = jax.lax.dynamic_slice_in_dim(frames, start, window, axis=1) if window else None
  bank_levels = flow.downsample_pyramid(bank.astype(jnp.float32), k) if window else None
  if window and history_noise:  # each level with its own noise, as training corrupts it
    bank_levels = temporal.mix_noise(
        bank_levels, jax.random.fold_in(unit_rng, HISTORY_NOISE_STREAM),
        jnp.full((batch,), history_noise, jnp.float32))

  noise_rng, jump_rng = jax.random.split(unit_rng)
  # The frame's noise is a function of (rng, unit): a frame gets the same noise
  # whether generation started at frame 0 or continues a given prefix.
  x = flow.noise_pyramid(jax.random.normal(noise_rng, (batch, 1, h, w, c), jnp.float32), k)[0]
  for stage in range(k):
    plan = plans[stage]
    if stage > 0:
      x = stage_jump(x, jax.random.fold_in(jump_rng, stage), schedule, stage, renoise)
    history = [double(bank_levels[level]) for level in plan.levels] if window else []
    cache = None
    if use_cache:
      cache = model.unit_history_cache((x.shape[0] * (2 if guided else 1),) + x.shape[1:],
                                       history, num_history, plan, model_cond)

    def model_fn(x_in, t_in, plan=plan, history=history, cache=cache):
      if use_cache:
        return model.unit_velocity_cached(x_in, cache, t_in, model_cond)
      return model.unit_velocity(x_in, history, num_history, plan, t_in, model_cond)

    velocity = stage_velocity(model_fn, guided, guidance_scale, schedule, stage, prediction)
    x = euler_stage(velocity, x, schedule, stage, steps[stage])
  return x
