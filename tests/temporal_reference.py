"""The official way to lay out the temporal pyramid, clip by clip: the reference the
tests hold `pflow_jax.pyramid.temporal`'s history plans against.

Follows the official merge_input / _prepare_pyramid_image_ids
(jy0205/Pyramid-Flow, pyramid_dit/flux_modules/modeling_pyramid_flux.py) and
add_pyramid_noise_with_temporal_pyramid: one sequence per history length,
concatenating a clip per history unit (the stage-0 units in one clip). Training
and sampling never use it; they use the fixed-shape gather tables of
`temporal.history_plan`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pflow_jax.pyramid.temporal import _check_int, history_stages, interp_positions


def unit_frames(num_units: int, frame_per_unit: int) -> int:
  """Latent frames covered by the first num_units units: 0, or 1 + (n - 1) * frame_per_unit."""
  n = _check_int('num_units', num_units, 0)
  f = _check_int('frame_per_unit', frame_per_unit, 1)
  return 0 if n == 0 else 1 + (n - 1) * f


def unit_range(unit: int, frame_per_unit: int) -> tuple[int, int]:
  """[start, stop) latent-frame range of unit `unit` (unit 0 is frame 0 alone)."""
  u = _check_int('unit', unit, 0)
  return unit_frames(u, frame_per_unit), unit_frames(u + 1, frame_per_unit)


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
