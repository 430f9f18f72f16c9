"""The temporal pyramid: history compression, corruption, unit layouts, tokens, the mask.

Follows the official autoregressive video code of jy0205/Pyramid-Flow:
add_pyramid_noise_with_temporal_pyramid, sample_stage_length and generate /
generate_i2v (pyramid_dit/pyramid_dit_for_video_gen_pipeline.py), and merge_input
/ _prepare_pyramid_image_ids (pyramid_dit/flux_modules/modeling_pyramid_flux.py,
the same mask in mmdit_modules/modeling_pyramid_mmdit.py). Channels-last
[B, T, H, W, C]; stages count 0 (lowest resolution) .. K-1 (full resolution).

Units: a video is cut into units oldest -> newest. Unit 0 is the first latent
frame alone (the causal VAE encodes it on its own); every later unit holds
`frame_per_unit` frames. The model denoises one target unit conditioned on the
clean history of all earlier units.

History compression (identical in training and inference; only training
corrupts the history): the newest history unit is kept at the target's stage,
each older unit one stage coarser, and every unit that would fall to stage 0
stays at stage 0. The official code emits one clip per unit at stages >= 1,
one clip for the newest unit, and one clip holding all remaining stage-0 units.

Training and sampling lay every history length out with `history_plan`: gather
tables in one fixed shape (padding masked), so one compiled program serves them
all. The official clip-by-clip layout (one sequence per history length) is the
tests' reference, tests/temporal_reference.py, and the plans are checked
against it.

Everything shape-related takes static Python ints and returns numpy or Python
values (computed once on the host); functions of arrays are jittable with
those ints static.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def _check_int(name: str, value: int, low: int) -> int:
  if isinstance(value, bool) or int(value) != value or value < low:
    raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
  return int(value)


# ----------------------------------------------------------------------------
# Units and history compression.


def history_stages(num_history_units: int, target_stage: int) -> tuple[int, ...]:
  """Stage of each history unit, oldest -> newest.

  The j-th newest unit (j = 0 the unit just before the target) sits at stage
  max(target_stage - j, 0).
  """
  n = _check_int('num_history_units', num_history_units, 0)
  s = _check_int('target_stage', target_stage, 0)
  return tuple(max(s - j, 0) for j in reversed(range(n)))


# ----------------------------------------------------------------------------
# Training corruption of the clean history.


def corrupt_history(history: Sequence[jax.Array], rng: jax.Array,
                    corrupt_ratio: float = 1 / 3) -> tuple[list[jax.Array], jax.Array]:
  """(corrupted clips, sigma [B]): h <- s * noise + (1 - s) * h, s ~ U(0, corrupt_ratio).

  As the official training: one s per sample, shared by all its history clips;
  fresh white noise per clip at the clip's own resolution (not the target's
  noise pyramid). Computed in float32.
  """
  if not 0.0 <= corrupt_ratio <= 1.0:
    raise ValueError(f'corrupt_ratio must be in [0, 1], got {corrupt_ratio!r}')
  if not history:
    raise ValueError('corrupt_history needs at least one history clip')
  batch = history[0].shape[0]
  if any(h.shape[0] != batch for h in history):
    raise ValueError(f'history clips must share the batch size, got shapes '
                     f'{[tuple(h.shape) for h in history]}')
  sigma_rng, noise_rng = jax.random.split(rng)
  sigma = jax.random.uniform(sigma_rng, (batch,), jnp.float32) * corrupt_ratio
  return mix_noise(history, noise_rng, sigma), sigma


def mix_noise(history: Sequence[jax.Array], rng: jax.Array, sigma: jax.Array) -> list[jax.Array]:
  """h <- s * noise + (1 - s) * h for each clip, s = sigma [B] per sample, fresh white noise
  per clip at its own resolution, in float32."""
  out = []
  for h, key in zip(history, jax.random.split(rng, len(history))):
    s = sigma.reshape((h.shape[0],) + (1,) * (h.ndim - 1))
    noise = jax.random.normal(key, h.shape, jnp.float32)
    out.append(s * noise + (1.0 - s) * h.astype(jnp.float32))
  return out


# ----------------------------------------------------------------------------
# How many units each stage column holds (official sample_stage_length).


def _units_in_training(max_temporal_length: int, frame_per_unit: int,
                       video_sync_group: int) -> tuple[int, int]:
  m = _check_int('max_temporal_length', max_temporal_length, 1)
  f = _check_int('frame_per_unit', frame_per_unit, 1)
  g = _check_int('video_sync_group', video_sync_group, 1)
  if (m - 1) % f:
    raise ValueError(f'max_temporal_length {m} is not 1 + whole units of {f} frames')
  units = 1 + (m - 1) // f
  if units < g:
    raise ValueError(f'video_sync_group {g} exceeds the {units} units per training video '
                     f'(the official code divides by units // group)')
  return units, units // g


def sample_stage_length(accumulate_steps: int, rank: int, *, max_temporal_length: int,
                        frame_per_unit: int = 1, video_sync_group: int = 8, stages: int = 3,
                        max_units: int | None = None) -> tuple[int, ...]:
  """Units per stage column, low -> high stage: the official rule, exactly.

  Nothing is random: with N = 1 + (max_temporal_length - 1) // frame_per_unit
  units per training video and turns = N // video_sync_group, the highest
  stage gets high = (rank % group + 1) + (accumulate_steps % turns) * group
  units, every lower stage 1 + N - high (so high + low = N + 1), each capped
  at max_units (the units the batch's videos actually have). The ranks of one
  sync group see the same videos, so per step the group trains them at
  `group` different target positions, and `turns` successive steps cover
  high = 1 .. group * turns once each.

  accumulate_steps is the official counter, incremented before use: 1 on the
  first call, one per micro-batch. The official code hard-codes 3 stages
  [low, mid, high] with low = mid; other K give every stage below the top
  the low count.
  """
  units, turns = _units_in_training(max_temporal_length, frame_per_unit, video_sync_group)
  step = _check_int('accumulate_steps', accumulate_steps, 0)
  r = _check_int('rank', rank, 0)
  k = _check_int('stages', stages, 1)
  # high <= group * turns <= N, so both counts are >= 1 (the official max(., 1) never binds).
  high = r % video_sync_group + 1 + (step % turns) * video_sync_group
  low = 1 + units - high
  if max_units is not None:
    cap = _check_int('max_units', max_units, 1)
    high, low = min(high, cap), min(low, cap)
  return (low,) * (k - 1) + (high,)


def stage_length_layouts(*, max_temporal_length: int, frame_per_unit: int = 1,
                         video_sync_group: int = 8, stages: int = 3,
                         max_units: int | None = None) -> tuple[tuple[int, ...], ...]:
  """Every layout one official sync-group cycle trains, ordered by high = 1 .. group * turns.

  These group * turns layouts (duplicates kept, so each carries the official
  weight) are all the static shapes a training run needs.
  """
  _, turns = _units_in_training(max_temporal_length, frame_per_unit, video_sync_group)
  out = []
  for turn in range(turns):
    for rank in range(video_sync_group):
      out.append(sample_stage_length(turn, rank, max_temporal_length=max_temporal_length,
                                     frame_per_unit=frame_per_unit,
                                     video_sync_group=video_sync_group, stages=stages,
                                     max_units=max_units))
  return tuple(out)


def stage_length_for_step(step: int, seed: int, *, max_temporal_length: int,
                          frame_per_unit: int = 1, video_sync_group: int = 8, stages: int = 3,
                          max_units: int | None = None) -> tuple[int, ...]:
  """The layout of global training step `step` under SPMD (one static layout per step).

  A jitted SPMD step runs one program on every device, so all ranks must share
  a layout, where the official ranks of a sync group differ. Each block of
  P = group * turns consecutive steps visits every layout of
  stage_length_layouts once (the official per-cycle coverage and weights), in
  an order drawn by numpy from (seed, block), so consecutive steps are not
  correlated in length. Deterministic in (step, seed): resumable.
  """
  layouts = stage_length_layouts(max_temporal_length=max_temporal_length,
                                 frame_per_unit=frame_per_unit,
                                 video_sync_group=video_sync_group, stages=stages,
                                 max_units=max_units)
  s = _check_int('step', step, 0)
  p = len(layouts)
  order = np.random.default_rng([_check_int('seed', seed, 0), s // p]).permutation(p)
  return layouts[order[s % p]]


# ----------------------------------------------------------------------------
# Token bookkeeping for a concatenation of clips.


def interp_positions(size: int, ref_size: int) -> np.ndarray:
  """float32 [size]: arange(ref_size) linearly resized to `size` points.

  torch F.interpolate(mode='linear', align_corners=False): point i samples
  the reference axis at (i + 0.5) * ref_size / size - 0.5, clamped to
  [0, ref_size - 1]; the identity when size == ref_size. For a 2^k times
  coarser axis this is the centre of the covered reference cells.
  """
  n = _check_int('size', size, 1)
  ref = _check_int('ref_size', ref_size, 1)
  if n == ref:
    return np.arange(n, dtype=np.float32)
  src = (np.arange(n, dtype=np.float64) + 0.5) * (ref / n) - 0.5
  return np.clip(src, 0.0, ref - 1.0).astype(np.float32)


# ----------------------------------------------------------------------------
# The attention mask over [text; video].


def attention_mask(segment_ids: jax.Array, order_ids: jax.Array, *,
                   temporal_causal: bool = True) -> jax.Array:
  """bool [B, L, L], True = query attends key: same segment id, and order_k <= order_q if causal.

  The official dense mask (merge_input). For one sample: a video token of
  frame f sees the valid text and the video of frames <= f; a valid text
  token sees the valid text and the video of frame 0 only; padded text sees
  only padded text (so no row is empty) and nobody sees it. With
  frame_per_unit > 1 the mask is causal per frame even inside a unit.
  """
  if segment_ids.shape != order_ids.shape or segment_ids.ndim != 2:
    raise ValueError(f'segment_ids {segment_ids.shape} and order_ids {order_ids.shape} must '
                     f'both be [B, L]')
  mask = segment_ids[:, :, None] == segment_ids[:, None, :]
  if temporal_causal:
    mask &= order_ids[:, :, None] >= order_ids[:, None, :]
  return mask


# ----------------------------------------------------------------------------
# Fixed-shape history sequences: one compiled program for every history length.


@dataclasses.dataclass(frozen=True, eq=False)
class HistoryPlan:
  """Gather tables laying out the compressed history of a target at `target_stage`.

  frame_per_unit is 1 (one latent frame per unit, the official setting), so
  history unit j is frame j. The history is read from a *bank*: frames
  [0, max_history) at every stage level the history can use, each frame
  tokenised row-major on its level's token grid, levels concatenated in
  `levels` order (frame-major inside a level). Row n of the tables is the
  history of n units (frames 0..n-1), padded to `length` slots.

  Attributes:
    target_stage, max_history, compress: the plan's arguments.
    levels: stage levels present in the bank, low -> high.
    level_grids: token grid (h, w) of each level.
    level_offsets: first bank token of each level.
    bank_size: tokens in the bank.
    length: history slots (the longest history's token count).
    index: int32 [max_history + 1, length], bank token of each slot (0 if padding).
    valid: bool [max_history + 1, length], False for padding slots.
    positions: float32 [max_history + 1, length, 3], (frame, y, x) of each
      slot, y and x on the target's token grid (0 for padding).
  """
  target_stage: int
  max_history: int
  compress: bool
  levels: tuple[int, ...]
  level_grids: tuple[tuple[int, int], ...]
  level_offsets: tuple[int, ...]
  bank_size: int
  length: int
  index: np.ndarray
  valid: np.ndarray
  positions: np.ndarray

  def tokens(self, num_history: int) -> int:
    """Valid history tokens of a num_history-unit history."""
    return int(self.valid[num_history].sum())


def history_plan(target_stage: int, max_history: int, *, stages: int,
                 latent_hw: tuple[int, int], patch_size: int,
                 compress: bool = True) -> HistoryPlan:
  """The plan of `HistoryPlan` for histories of 0..max_history units (frame_per_unit 1).

  compress=True is the temporal pyramid (history_stages); False keeps every
  history frame at the target's resolution (the full-resolution baseline).
  """
  k = _check_int('stages', stages, 1)
  s = _check_int('target_stage', target_stage, 0)
  if s >= k:
    raise ValueError(f'target_stage must be in [0, {k - 1}], got {s}')
  w_max = _check_int('max_history', max_history, 0)
  p = _check_int('patch_size', patch_size, 1)
  h, w = latent_hw
  factor = 2 ** (k - 1) * p
  if h % factor or w % factor:
    raise ValueError(f'latent size {h}x{w} is not divisible by 2^(stages-1) x patch_size = '
                     f'{factor}')

  def grid(stage):
    return (h >> (k - 1 - stage)) // p, (w >> (k - 1 - stage)) // p

  levels = tuple(range(s + 1)) if compress else (s,)
  grids = tuple(grid(lv) for lv in levels)
  offsets, total = [], 0
  for gh, gw in grids:
    offsets.append(total)
    total += w_max * gh * gw
  target_grid = grid(s)

  rows = []
  for n in range(w_max + 1):
    stages_of = history_stages(n, s) if compress else (s,) * n
    slots = []
    for frame, stage in enumerate(stages_of):
      li = levels.index(stage)
      gh, gw = grids[li]
      ys = interp_positions(gh, target_grid[0])
      xs = interp_positions(gw, target_grid[1])
      first = offsets[li] + frame * gh * gw
      for r in range(gh):
        for c in range(gw):
          slots.append((first + r * gw + c, frame, ys[r], xs[c]))
    rows.append(slots)
  length = max(len(r) for r in rows)
  index = np.zeros((w_max + 1, length), np.int32)
  valid = np.zeros((w_max + 1, length), bool)
  positions = np.zeros((w_max + 1, length, 3), np.float32)
  for n, slots in enumerate(rows):
    for i, (bank_index, frame, y, x) in enumerate(slots):
      index[n, i], valid[n, i] = bank_index, True
      positions[n, i] = (frame, y, x)
  for a in (index, valid, positions):
    a.setflags(write=False)
  return HistoryPlan(target_stage=s, max_history=w_max, compress=bool(compress), levels=levels,
                     level_grids=grids, level_offsets=tuple(offsets), bank_size=total,
                     length=length, index=index, valid=valid, positions=positions)


def history_plans(*, stages: int, max_history: int, latent_hw: tuple[int, int],
                  patch_size: int, compress: bool = True) -> tuple[HistoryPlan, ...]:
  """One `history_plan` per target stage, low -> high."""
  return tuple(history_plan(s, max_history, stages=stages, latent_hw=latent_hw,
                            patch_size=patch_size, compress=compress) for s in range(stages))
