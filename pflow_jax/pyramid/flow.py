"""Spatial-pyramid flow matching: multi-resolution latents, stage endpoints, the loss.

Follows the official add_pyramid_noise / get_pyramid_latent / calculate_loss
(pyramid_dit/pyramid_dit_for_video_gen_pipeline.py), channels-last
[B, T, H, W, C]. Pyramids are lists ordered low -> high resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pflow_jax.config import PREDICTIONS
from pflow_jax.pyramid import temporal
from pflow_jax.pyramid.schedule import PyramidSchedule

# velocity_fn(x [b, T, h, w, C], timesteps [b] float32 on the 0..N scale, cond) -> v like x.
VelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def check_resolution(shape: Sequence[int], stages: int) -> None:
  """Raises ValueError unless shape is [B, T, H, W, C] with H, W divisible by 2^(K-1)."""
  if len(shape) != 5:
    raise ValueError(f'expected latents of shape [B, T, H, W, C], got shape {tuple(shape)}')
  factor = 2 ** (stages - 1)
  h, w = shape[2], shape[3]
  if h % factor or w % factor:
    raise ValueError(f'latent resolution {h}x{w} is not divisible by 2^(stages-1) = {factor}: '
                     f'each of the {stages} pyramid stages halves it')


def downsample2x(x: jax.Array) -> jax.Array:
  """Halves H and W of [B, T, H, W, C] by a 2x2 mean.

  For even sizes this is exactly torch's bilinear interpolate to half size
  (align_corners=False): each output samples the midpoint of a 2x2 block.
  """
  b, t, h, w, c = x.shape
  return x.reshape(b, t, h // 2, 2, w // 2, 2, c).mean(axis=(3, 5))


def upsample2x(x: jax.Array) -> jax.Array:
  """Doubles H and W of [B, T, H, W, C] by nearest neighbour (copies each pixel 2x2)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


def downsample_pyramid(latents: jax.Array, stages: int) -> list[jax.Array]:
  """[z_0, ..., z_{K-1}]: the full-resolution latents halved K-1 times, low -> high."""
  check_resolution(latents.shape, stages)
  levels = [latents]
  for _ in range(stages - 1):
    levels.append(downsample2x(levels[-1]))
  return levels[::-1]


def noise_pyramid(noise: jax.Array, stages: int) -> list[jax.Array]:
  """One full-resolution noise draw seen at every level, low -> high.

  Each halving is a 2x2 mean times 2, so every level stays unit-variance white
  noise while the levels share the same underlying draw.
  """
  check_resolution(noise.shape, stages)
  levels = [noise]
  for _ in range(stages - 1):
    levels.append(2.0 * downsample2x(levels[-1]))
  return levels[::-1]


def stage_endpoints(latent_pyramid: Sequence[jax.Array], noise_pyramid: Sequence[jax.Array],
                    schedule: PyramidSchedule, stage: int) -> tuple[jax.Array, jax.Array]:
  """(start, end) of a stage's training path at that stage's resolution.

  start: pure noise for stage 0, else noise at start_sigma mixed with the
  nearest-upsampled clean latent of the stage below. end: noise at end_sigma
  mixed with the clean latent, or the clean latent itself for the last stage.
  """
  k = schedule.stages
  if len(latent_pyramid) != k or len(noise_pyramid) != k:
    raise ValueError(f'expected {k} pyramid levels, got {len(latent_pyramid)} latent and '
                     f'{len(noise_pyramid)} noise levels')
  if not 0 <= stage < k:
    raise ValueError(f'stage must be in [0, {k - 1}], got {stage}')
  noise = noise_pyramid[stage]
  s = float(schedule.start_sigmas[stage])
  e = float(schedule.end_sigmas[stage])
  if stage == 0:
    start = noise
  else:
    start = s * noise + (1.0 - s) * upsample2x(latent_pyramid[stage - 1])
  if stage == k - 1:
    end = latent_pyramid[stage]
  else:
    end = e * noise + (1.0 - e) * latent_pyramid[stage]
  return start, end


# The noise estimate of the 'clean' parameterisation divides by the noise level of
# x; near the clean end of the last stage that level goes to 0, so it is floored.
MIN_NOISE_LEVEL = 0.025


def velocity_from_prediction(out: jax.Array, x: jax.Array, r: jax.Array,
                             schedule: PyramidSchedule, stage: int, prediction: str) -> jax.Array:
  """The stage's velocity `start - end` from the model output `out` at x on ratio r.

  prediction 'velocity' (official): out is the velocity. 'clean': out is the
  clean latent z at the stage's resolution. On stage k the path is
  x = r * start + (1 - r) * end with start = s n + (1 - s) up(down(z)) (s = 1,
  no coarse term, on stage 0) and end = e n + (1 - e) z, so x carries the
  noise n with weight sigma = r s + (1 - r) e; given z, n = (x - r (1 - s)
  up(down(z)) - (1 - r)(1 - e) z) / sigma, and the velocity is
  (s - e) n + (1 - s) up(down(z)) - (1 - e) z. The noise in the velocity is
  then read off x itself rather than reproduced by the network, so a step
  removes whatever noise x holds (for the last stage: v = (x - z) / r).
  r: float32, broadcastable to x ([b, 1, 1, 1, 1] or a scalar).
  """
  if prediction == 'velocity':
    return out.astype(jnp.float32)
  if prediction != 'clean':
    raise ValueError(f'prediction must be one of {PREDICTIONS}, got {prediction!r}')
  s = float(schedule.start_sigmas[stage])
  e = float(schedule.end_sigmas[stage])
  z = out.astype(jnp.float32)
  coarse = (1.0 - s) * upsample2x(downsample2x(z)) if stage > 0 else jnp.zeros_like(z)
  sigma = jnp.maximum(r * s + (1.0 - r) * e, MIN_NOISE_LEVEL)
  noise = (x - r * coarse - (1.0 - r) * (1.0 - e) * z) / sigma
  return (s - e) * noise + coarse - (1.0 - e) * z


def sample_timestep_indices(rng: jax.Array, batch: int, num_train_timesteps: int) -> jax.Array:
  """int32 [batch] indices into a stage's tables: u ~ U(0, 1), clamp(floor(u * N))."""
  u = jax.random.uniform(rng, (batch,), jnp.float32)
  idx = jnp.floor(u * num_train_timesteps).astype(jnp.int32)
  return jnp.clip(idx, 0, num_train_timesteps - 1)


def _check_sample_ratios(sample_ratios: Sequence[int], stages: int, batch: int) -> tuple[int, ...]:
  ratios = tuple(sample_ratios)
  if len(ratios) != stages:
    raise ValueError(f'sample_ratios {list(ratios)} needs one entry per stage ({stages})')
  if any(isinstance(r, bool) or int(r) != r or r < 1 for r in ratios):
    raise ValueError(f'sample_ratios {list(ratios)} must be positive integers')
  ratios = tuple(int(r) for r in ratios)
  if batch % sum(ratios):
    raise ValueError(f'batch size {batch} is not divisible by sum(sample_ratios) = '
                     f'{sum(ratios)}: the batch is split into that many stage columns')
  return ratios


def _columns(x: jax.Array, num_columns: int, first: int, count: int) -> jax.Array:
  """Samples j with first <= j % num_columns < first + count (official `[c::columns]`).

  A reshape rather than a strided gather, so a batch sharded on its leading
  axis stays local.
  """
  rows = x.shape[0] // num_columns
  x = x.reshape((rows, num_columns) + x.shape[1:])[:, first:first + count]
  return x.reshape((rows * count,) + x.shape[2:])


class _Column(NamedTuple):
  """One stage's share of the batch, on that stage's flow path."""
  stage: int
  take: Callable[[jax.Array], jax.Array]  # this column's samples of any [B, ...] array
  levels: list[jax.Array]                 # its clean latent pyramid, coarsest first
  start: jax.Array
  end: jax.Array
  timesteps: jax.Array                    # [b], the DiT's time input
  ratio: jax.Array                        # [b, 1, 1, 1, 1]: x = ratio * start + (1 - ratio) * end

  def point(self) -> jax.Array:
    return self.ratio * self.start + (1.0 - self.ratio) * self.end


def _stage_columns(latents: jax.Array, cond: Any, noise_rng: jax.Array, time_rng: jax.Array,
                   schedule: PyramidSchedule, sample_ratios: Sequence[int]) -> list[_Column]:
  """The batch split into stage columns: sample j goes to column j % sum(sample_ratios),
  sample_ratios[k] columns for stage k; each stage gets its view of one full-resolution
  noise draw and its own timesteps."""
  k = schedule.stages
  check_resolution(latents.shape, k)
  batch = latents.shape[0]
  ratios = _check_sample_ratios(sample_ratios, k, batch)
  for leaf in jax.tree.leaves(cond):
    if jnp.shape(leaf)[:1] != (batch,):
      raise ValueError(f'every cond leaf needs leading batch dim {batch}, got shape '
                       f'{jnp.shape(leaf)}')
  num_columns = sum(ratios)
  latents = latents.astype(jnp.float32)
  noise = jax.random.normal(noise_rng, latents.shape, jnp.float32)
  time_rngs = jax.random.split(time_rng, k)
  columns, first = [], 0
  for stage, count in enumerate(ratios):
    take = functools.partial(_columns, num_columns=num_columns, first=first, count=count)
    first += count
    levels = downsample_pyramid(take(latents), k)
    start, end = stage_endpoints(levels, noise_pyramid(take(noise), k), schedule, stage)
    idx = sample_timestep_indices(time_rngs[stage], start.shape[0], schedule.num_train_timesteps)
    ratio = jnp.asarray(schedule.stage_ratios[stage])[idx][:, None, None, None, None]
    columns.append(_Column(stage, take, levels, start, end,
                           jnp.asarray(schedule.stage_timesteps[stage])[idx], ratio))
  return columns


def _column_error(out: jax.Array, x: jax.Array, target: jax.Array, column: _Column,
                  schedule: PyramidSchedule, prediction: str) -> jax.Array:
  """Per-sample mean squared error [b] of the model's velocity at x against target."""
  if out.shape != x.shape:
    raise ValueError(f'the velocity function returned shape {out.shape} for input shape '
                     f'{x.shape}')
  v = velocity_from_prediction(out, x, column.ratio, schedule, column.stage, prediction)
  err = jnp.square(v - target)
  return err.reshape(err.shape[0], -1).mean(axis=1)


def _reduce(errors: Sequence[jax.Array], batch: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The mean over the batch of per-sample errors (official calculate_loss), and per stage."""
  total = sum(e.sum() for e in errors)
  return total / batch, {'loss_per_stage': jnp.stack([e.mean() for e in errors])}


def pyramid_flow_loss(velocity_fn: VelocityFn, latents: jax.Array, cond: Any, rng: jax.Array,
                      schedule: PyramidSchedule, sample_ratios: Sequence[int],
                      prediction: str = 'velocity') -> tuple[jax.Array, dict[str, jax.Array]]:
  """The official pyramid flow-matching loss; (loss, {'loss_per_stage': [K]}).

  Sample j of the batch goes to column j % sum(sample_ratios); the columns map
  to stages in order, sample_ratios[k] columns for stage k. Each stage gets its
  own view of one full-resolution noise draw and its own timesteps, and one
  velocity_fn call on all its samples (cond sliced the same way). The loss is
  the per-sample mean squared error against `start - end`, averaged over the
  batch, in float32. With stages=1 it is full-resolution rectified flow.
  prediction: what velocity_fn outputs ('velocity' or 'clean', see
  velocity_from_prediction); the loss is on the velocity either way.
  """
  noise_rng, time_rng = jax.random.split(rng)
  errors = []
  for column in _stage_columns(latents, cond, noise_rng, time_rng, schedule, sample_ratios):
    x = column.point()
    out = velocity_fn(x, column.timesteps, jax.tree.map(column.take, cond))
    errors.append(_column_error(out, x, column.start - column.end, column, schedule,
                                prediction))
  return _reduce(errors, latents.shape[0])


# unit_velocity_fn(target [b, 1, h, w, C] (noisy), history [per plan level: b, W, h_l, w_l, C],
#                  num_history: int32 scalar, plan, timesteps [b], cond) -> velocity like target.
UnitVelocityFn = Callable[..., jax.Array]


def temporal_pyramid_flow_loss(unit_velocity_fn: UnitVelocityFn, latents: jax.Array, cond: Any,
                               rng: jax.Array, schedule: PyramidSchedule,
                               sample_ratios: Sequence[int], units: jax.Array,
                               plans: Sequence[Any], corrupt_ratio: float = 1 / 3,
                               prediction: str = 'velocity'
                               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The official autoregressive loss with the temporal pyramid (frame_per_unit 1).

  As `pyramid_flow_loss`, the batch is split into stage columns, each with its
  view of one full-resolution noise draw and its own timesteps; stage k's
  column holds units[k] units (int32 [K], traced: one compiled step serves
  every layout, see temporal.stage_length_for_step). Its target is frame
  units[k] - 1 on stage k's path, and the loss covers that frame only. The
  earlier frames are its history: clean latents at the plan's levels,
  corrupted per sample with s ~ U(0, corrupt_ratio) as h <- s * noise +
  (1 - s) * h (fresh noise), laid out by plans[k] (temporal.history_plan).
  """
  batch, frames = latents.shape[:2]
  k = schedule.stages
  if len(plans) != k or units.shape != (k,):
    raise ValueError(f'need one plan and one unit count per stage ({k}), got {len(plans)} '
                     f'plans and units of shape {units.shape}')
  for plan in plans:
    if plan.max_history > frames - 1:
      raise ValueError(f'a plan for {plan.max_history} history frames needs clips of at least '
                       f'{plan.max_history + 1} latent frames, got {frames}')
  noise_rng, time_rng, corrupt_rng = jax.random.split(rng, 3)
  corrupt_rngs = jax.random.split(corrupt_rng, k)
  errors = []
  for column in _stage_columns(latents, cond, noise_rng, time_rng, schedule, sample_ratios):
    stage = column.stage
    num_history = jnp.clip(units[stage] - 1, 0, frames - 1)
    frame = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=num_history,
                              slice_size=1, axis=1)
    x = frame(column.point())
    plan = plans[stage]
    history = [column.levels[level][:, :plan.max_history] for level in plan.levels]
    if plan.max_history:
      history = temporal.corrupt_history(history, corrupt_rngs[stage], corrupt_ratio)[0]
    out = unit_velocity_fn(x, history, num_history, plan, column.timesteps,
                           jax.tree.map(column.take, cond))
    errors.append(_column_error(out, x, frame(column.start - column.end), column, schedule,
                                prediction))
  return _reduce(errors, batch)
