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

Two views of the same layout. The clip functions (history_clips, clip_shapes,
temporal_clips, token_layout, joint_token_ids) build one sequence the official
way, concatenating the clips of a given history length; the tests hold them as
the reference. Training and sampling use `history_plan`: gather tables that
lay out every history length in one fixed shape (padding masked), so one
compiled program serves them all; tests check the plans against the clips.

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


def unit_frames(num_units: int, frame_per_unit: int) -> int:
  """Latent frames covered by the first num_units units: 0, or 1 + (n - 1) * frame_per_unit."""
  n = _check_int('num_units', num_units, 0)
  f = _check_int('frame_per_unit', frame_per_unit, 1)
  return 0 if n == 0 else 1 + (n - 1) * f


def unit_range(unit: int, frame_per_unit: int) -> tuple[int, int]:
  """[start, stop) latent-frame range of unit `unit` (unit 0 is frame 0 alone)."""
  u = _check_int('unit', unit, 0)
  return unit_frames(u, frame_per_unit), unit_frames(u + 1, frame_per_unit)


def history_stages(num_history_units: int, target_stage: int) -> tuple[int, ...]:
  """Stage of each history unit, oldest -> newest.

  The j-th newest unit (j = 0 the unit just before the target) sits at stage
  max(target_stage - j, 0).
  """
  n = _check_int('num_history_units', num_history_units, 0)
  s = _check_int('target_stage', target_stage, 0)
  return tuple(max(s - j, 0) for j in reversed(range(n)))


@dataclasses.dataclass(frozen=True)
class HistoryClip:
  """A run of history frames [start, start + frames) kept at pyramid stage `stage`."""
  stage: int
  start: int
  frames: int


def history_clips(num_history_units: int, target_stage: int,
                  frame_per_unit: int) -> tuple[HistoryClip, ...]:
  """The official clip grouping of the compressed history, oldest -> newest.

  One clip per unit at stages >= 1 and one for the newest unit; all older
  units that reach stage 0 form a single stage-0 clip.
  """
  stages = history_stages(num_history_units, target_stage)
  n = len(stages)
  if n == 0:
    return ()
  # Units that get their own clip: the newest, then every one at stage >= 1.
  own = [u for u in range(n) if u == n - 1 or stages[u] > 0]
  clips = []
  first_own = own[0]
  if first_own > 0:
    clips.append(HistoryClip(0, 0, unit_frames(first_own, frame_per_unit)))
  for u in own:
    start, stop = unit_range(u, frame_per_unit)
    clips.append(HistoryClip(stages[u], start, stop - start))
  return tuple(clips)


def clip_shapes(num_history_units: int, target_stage: int, frame_per_unit: int,
                latent_hw: tuple[int, int], stages: int) -> tuple[tuple[int, int, int], ...]:
  """(frames, H, W) of each history clip and of the target (last), for static planning.

  latent_hw is the full-resolution latent size; stage k has it halved
  K - 1 - k times.
  """
  k = _check_int('stages', stages, 1)
  if not 0 <= target_stage < k:
    raise ValueError(f'target_stage must be in [0, {k - 1}], got {target_stage}')
  h, w = latent_hw
  factor = 2 ** (k - 1)
  if h % factor or w % factor:
    raise ValueError(f'latent size {h}x{w} is not divisible by 2^(stages-1) = {factor}')

  def size(stage):
    return h >> (k - 1 - stage), w >> (k - 1 - stage)

  shapes = [(c.frames, *size(c.stage))
            for c in history_clips(num_history_units, target_stage, frame_per_unit)]
  target_frames = frame_per_unit if num_history_units else 1
  return tuple(shapes) + ((target_frames, *size(target_stage)),)


def split_units(levels: Sequence[jax.Array], num_units: int,
                frame_per_unit: int) -> tuple[list[jax.Array], list[jax.Array]]:
  """(history, target) of arrays [B, T, ...] cut to num_units units; the last unit is the target.

  Frames after the num_units-th unit are dropped (the official `actual_frames`).
  """
  n = _check_int('num_units', num_units, 1)
  start, stop = unit_range(n - 1, frame_per_unit)
  for lv in levels:
    if lv.shape[1] < stop:
      raise ValueError(f'{n} units of {frame_per_unit} frames need {stop} frames, got an '
                       f'array of shape {lv.shape}')
  return [lv[:, :start] for lv in levels], [lv[:, start:stop] for lv in levels]


def temporal_clips(history_pyramid: Sequence[jax.Array], target: jax.Array, target_stage: int,
                   frame_per_unit: int) -> list[jax.Array]:
  """[oldest ... newest history clips at their stages, target], ready to tokenise.

  history_pyramid: the clean history at every stage, low -> high resolution
  (flow.downsample_pyramid of the full-resolution history [B, T_h, H, W, C],
  T_h = unit_frames(n, frame_per_unit)); empty, or T_h = 0, for no history.
  target: [B, t, H_s, W_s, C] at target_stage's resolution, t = frame_per_unit
  (1 when there is no history: the first frame is its own unit).
  """
  s = _check_int('target_stage', target_stage, 0)
  fpu = _check_int('frame_per_unit', frame_per_unit, 1)
  if target.ndim != 5:
    raise ValueError(f'target must be [B, t, H, W, C], got shape {target.shape}')
  t_hist = history_pyramid[0].shape[1] if history_pyramid else 0
  if history_pyramid:
    if s >= len(history_pyramid):
      raise ValueError(f'target_stage {s} needs more than the {len(history_pyramid)} '
                       f'history pyramid levels given')
    ref = history_pyramid[s]
    for lv in history_pyramid:
      if lv.ndim != 5 or lv.shape[:2] != ref.shape[:2] or lv.shape[4] != ref.shape[4]:
        raise ValueError(f'history levels must share [B, T, ..., C]; got shapes '
                         f'{[tuple(x.shape) for x in history_pyramid]}')
    if (ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[4]) != (
        target.shape[0], target.shape[2], target.shape[3], target.shape[4]):
      raise ValueError(f'target {target.shape} must match history level {s} {ref.shape} in '
                       f'batch, resolution and channels')
  if t_hist and (t_hist - 1) % fpu:
    raise ValueError(f'{t_hist} history frames are not whole units: need 1 + n * {fpu}')
  num_history = 0 if t_hist == 0 else 1 + (t_hist - 1) // fpu
  want = fpu if num_history else 1
  if target.shape[1] != want:
    raise ValueError(f'target must hold {want} frame(s) after {num_history} history units, '
                     f'got {target.shape[1]}')
  clips = [history_pyramid[c.stage][:, c.start:c.start + c.frames]
           for c in history_clips(num_history, s, fpu)]
  return clips + [target]


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
  out = []
  for h, key in zip(history, jax.random.split(noise_rng, len(history))):
    s = sigma.reshape((batch,) + (1,) * (h.ndim - 1))
    noise = jax.random.normal(key, h.shape, jnp.float32)
    out.append(s * noise + (1.0 - s) * h.astype(jnp.float32))
  return out, sigma


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


@dataclasses.dataclass(frozen=True, eq=False)
class TokenLayout:
  """Host-side description of the video tokens of concatenated clips, oldest -> newest.

  Attributes:
    positions: float32 [Lv, 3] (frame, y, x): frame = running latent-frame
      index over the clips; y, x on the last clip's token grid (the target's,
      the finest), lower-resolution clips linearly interpolated onto it.
    frame_index: int32 [Lv], the frame column of positions.
    clip_lengths: tokens per clip (frames * h * w on the token grid).
    tokens_per_frame: tokens of each latent frame, oldest -> newest.
  """
  positions: np.ndarray
  frame_index: np.ndarray
  clip_lengths: tuple[int, ...]
  tokens_per_frame: tuple[int, ...]


def token_layout(shapes: Sequence[tuple[int, int, int]], patch_size: int = 1) -> TokenLayout:
  """Token positions of clips given as latent (frames, H, W), tokenised p x p per frame.

  Tokens are frame-major then row-major inside each clip (the official
  patchify order), clips concatenated in order (official
  _prepare_pyramid_image_ids with interp_condition_pos).
  """
  p = _check_int('patch_size', patch_size, 1)
  if not shapes:
    raise ValueError('token_layout needs at least one clip')
  grids = []
  for t, h, w in shapes:
    _check_int('clip frames', t, 1)
    if h % p or w % p or h < p or w < p:
      raise ValueError(f'clip size {h}x{w} is not a positive multiple of patch_size {p}')
    grids.append((t, h // p, w // p))
  ref_h, ref_w = grids[-1][1:]
  if any(h > ref_h or w > ref_w for _, h, w in grids):
    raise ValueError(f'the last clip (token grid {ref_h}x{ref_w}) must be the finest, got '
                     f'clip shapes {list(shapes)}')
  pos, lengths, per_frame = [], [], []
  frame = 0
  for t, h, w in grids:
    ys, xs = interp_positions(h, ref_h), interp_positions(w, ref_w)
    tt, yy, xx = np.meshgrid(np.arange(frame, frame + t, dtype=np.float32), ys, xs,
                             indexing='ij')
    pos.append(np.stack([tt, yy, xx], axis=-1).reshape(-1, 3))
    lengths.append(t * h * w)
    per_frame += [h * w] * t
    frame += t
  positions = np.concatenate(pos).astype(np.float32)
  positions.setflags(write=False)
  frame_index = positions[:, 0].astype(np.int32)
  frame_index.setflags(write=False)
  return TokenLayout(positions=positions, frame_index=frame_index,
                     clip_lengths=tuple(lengths), tokens_per_frame=tuple(per_frame))


# ----------------------------------------------------------------------------
# The attention mask over [text; video].


def joint_token_ids(text_valid: jax.Array, frame_index: np.ndarray | jax.Array,
                    segment: int = 1) -> tuple[jax.Array, jax.Array]:
  """(segment_ids, order_ids), int32 [B, Lt + Lv], of one sample's [text; video] sequence.

  Valid tokens carry `segment` (>= 1), padded text -segment; order ids are
  0 for text and the latent-frame index for video tokens (the official
  RoPE ids: text sits at frame 0). Samples packed into one row concatenate
  their ids along axis 1 with distinct segments; filler tokens take segment 0
  and order 0.
  """
  seg = _check_int('segment', segment, 1)
  text_valid = jnp.asarray(text_valid).astype(bool)
  if text_valid.ndim != 2:
    raise ValueError(f'text_valid must be [B, Lt], got shape {text_valid.shape}')
  frames = jnp.asarray(frame_index, jnp.int32)
  if frames.ndim != 1:
    raise ValueError(f'frame_index must be [Lv], got shape {frames.shape}')
  batch, lt = text_valid.shape
  text_seg = jnp.where(text_valid, seg, -seg).astype(jnp.int32)
  segment_ids = jnp.concatenate(
      [text_seg, jnp.full((batch, frames.shape[0]), seg, jnp.int32)], axis=1)
  order_ids = jnp.concatenate(
      [jnp.zeros((batch, lt), jnp.int32), jnp.broadcast_to(frames, (batch, frames.shape[0]))],
      axis=1)
  return segment_ids, order_ids


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


def frame_block_mask(segments: Sequence[tuple[int, Sequence[int]]], *,
                     temporal_causal: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(block_sizes int32 [nb], block_mask bool [nb, nb]) of the mask over text and frame blocks.

  segments: per packed sample, (text length, tokens of each latent frame
  oldest -> newest), laid out [text; frame 0; frame 1; ...] one after the
  other. Blocks are the text and each frame; block (i, j) is True when every
  query of block i attends every key of block j, so the token mask is
  block_mask[block(q), block(k)], AND a key mask hiding padded text (text
  padding is data, not layout). Queries of padded text then differ from
  attention_mask, but no valid token ever reads them.
  """
  sizes, segs, orders = [], [], []
  for s, (text_len, per_frame) in enumerate(segments):
    _check_int('text length', text_len, 0)
    if text_len:
      sizes.append(text_len)
      segs.append(s)
      orders.append(0)
    for f, n in enumerate(per_frame):
      sizes.append(_check_int('tokens per frame', n, 1))
      segs.append(s)
      orders.append(f)
  if not sizes:
    raise ValueError('frame_block_mask needs at least one token')
  segs, orders = np.array(segs), np.array(orders)
  mask = segs[:, None] == segs[None, :]
  if temporal_causal:
    mask &= orders[:, None] >= orders[None, :]
  return np.array(sizes, np.int32), mask


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
