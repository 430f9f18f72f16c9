"""Temporal pyramid: history compression, corruption, stage lengths, token positions, the mask."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflow_jax.pyramid import flow
from pflow_jax.pyramid import temporal
import temporal_reference

# Stage of each history unit, oldest -> newest, written from the spec for K = 3:
# newest at the target's stage, each older one stage coarser, the rest at 0.
HAND_STAGES = {
    # (history units, target stage): stages
    (0, 0): (), (0, 1): (), (0, 2): (),
    (1, 0): (0,), (1, 1): (1,), (1, 2): (2,),
    (2, 0): (0, 0), (2, 1): (0, 1), (2, 2): (1, 2),
    (4, 0): (0, 0, 0, 0), (4, 1): (0, 0, 0, 1), (4, 2): (0, 0, 1, 2),
}


def official_loop_stages(num_units, target_stage):
  """The official training loop transcribed: stage per history unit, oldest -> newest."""
  if num_units == 1:
    return ()
  newest_first = [target_stage]          # last_cond_latent at the target's stage
  cur_unit_num, cur_stage = 2, target_stage
  while cur_unit_num < num_units:
    cur_stage = max(cur_stage - 1, 0)
    if cur_stage == 0:
      break
    cur_unit_num += 1
    newest_first.append(cur_stage)
  if cur_stage == 0 and cur_unit_num < num_units:
    newest_first += [0] * (num_units - cur_unit_num)
  return tuple(reversed(newest_first))


def unit_of_frame(frame, fpu):
  return 0 if frame == 0 else 1 + (frame - 1) // fpu


@pytest.mark.parametrize('key', sorted(HAND_STAGES))
def test_history_stages_by_hand(key):
  assert temporal.history_stages(*key) == HAND_STAGES[key]


def test_history_stages_match_official_loop():
  for stages in (1, 2, 3, 4):
    for target_stage in range(stages):
      for num_units in range(1, 9):
        assert temporal.history_stages(num_units - 1, target_stage) == official_loop_stages(
            num_units, target_stage), (num_units, target_stage)


def test_unit_frames():
  # Unit 0 is frame 0 alone; later units hold frame_per_unit frames.
  assert [temporal_reference.unit_frames(n, 1) for n in range(4)] == [0, 1, 2, 3]
  assert [temporal_reference.unit_frames(n, 2) for n in range(4)] == [0, 1, 3, 5]
  assert [temporal_reference.unit_range(u, 5) for u in range(3)] == [(0, 1), (1, 6), (6, 11)]


@pytest.mark.parametrize('fpu', [1, 2])
@pytest.mark.parametrize('num_units', [1, 2, 5])
@pytest.mark.parametrize('target_stage', [0, 1, 2])
def test_temporal_clips_content(fpu, num_units, target_stage):
  stages = 3
  total = temporal_reference.unit_frames(num_units + 1, fpu)     # one more unit than used
  video = jnp.asarray(np.random.default_rng(num_units).normal(size=(2, total, 8, 8, 3)),
                      jnp.float32)
  full = flow.downsample_pyramid(video, stages)
  history, targets = temporal_reference.split_units(full, num_units, fpu)
  t_hist = temporal_reference.unit_frames(num_units - 1, fpu)
  assert history[0].shape[1] == t_hist
  np.testing.assert_array_equal(targets[target_stage],
                                full[target_stage][:, t_hist:t_hist + (fpu if t_hist else 1)])

  clips = temporal_reference.temporal_clips(history, targets[target_stage], target_stage, fpu)
  np.testing.assert_array_equal(clips[-1], targets[target_stage])
  # Walk the history clips frame by frame: each frame must be its unit's stage level.
  hand = HAND_STAGES[(num_units - 1, target_stage)]
  frame = 0
  for clip in clips[:-1]:
    for i in range(clip.shape[1]):
      stage = hand[unit_of_frame(frame, fpu)]
      np.testing.assert_array_equal(clip[:, i], full[stage][:, frame])
      frame += 1
  assert frame == t_hist
  shapes = temporal_reference.clip_shapes(num_units - 1, target_stage, fpu, (8, 8), stages)
  assert shapes == tuple(c.shape[1:4] for c in clips)


def test_official_clip_grouping():
  # 4 history units, target at stage 2, 2 frames per unit: units 0-1 at stage 0
  # in one clip (frames 0..2), unit 2 at stage 1, unit 3 at stage 2.
  assert temporal_reference.history_clips(4, 2, 2) == (
      temporal_reference.HistoryClip(0, 0, 3), temporal_reference.HistoryClip(1, 3, 2),
      temporal_reference.HistoryClip(2, 5, 2))
  # Target at stage 0: the newest unit is its own clip, the rest one clip.
  assert temporal_reference.history_clips(4, 0, 1) == (
      temporal_reference.HistoryClip(0, 0, 3), temporal_reference.HistoryClip(0, 3, 1))
  assert temporal_reference.clip_shapes(4, 2, 2, (16, 8), 3) == (
      (3, 4, 2), (2, 8, 4), (2, 16, 8), (2, 16, 8))
  assert temporal_reference.clip_shapes(0, 1, 2, (16, 8), 3) == ((1, 8, 4),)


def test_temporal_clips_under_jit():
  video = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 8, 8, 2)), jnp.float32)
  history, targets = temporal_reference.split_units(flow.downsample_pyramid(video, 3), 4, 1)
  fn = jax.jit(temporal_reference.temporal_clips, static_argnums=(2, 3))
  for a, b in zip(fn(history, targets[1], 1, 1),
                  temporal_reference.temporal_clips(history, targets[1], 1, 1)):
    np.testing.assert_array_equal(a, b)


def test_temporal_clips_rejects_bad_input():
  video = jnp.zeros((1, 5, 8, 8, 2))
  levels = flow.downsample_pyramid(video, 3)
  with pytest.raises(ValueError, match='whole units'):
    temporal_reference.temporal_clips([lv[:, :4] for lv in levels], levels[2][:, 4:5], 2, 2)
  with pytest.raises(ValueError, match='frame'):
    temporal_reference.temporal_clips([lv[:, :3] for lv in levels], levels[2][:, 3:4], 2, 2)
  with pytest.raises(ValueError, match='resolution'):
    temporal_reference.temporal_clips([lv[:, :3] for lv in levels], levels[1][:, 3:5], 2, 2)
  with pytest.raises(ValueError, match='frames'):
    temporal_reference.split_units(levels, 4, 2)


def test_corruption_statistics():
  ratio = 0.3
  b = 4000
  ones = [jnp.ones((b, 1, 4, 4, 2)), jnp.ones((b, 2, 2, 2, 2))]
  out, sigma = jax.jit(temporal.corrupt_history, static_argnums=2)(
      ones, jax.random.key(0), ratio)
  sigma = np.asarray(sigma)
  assert sigma.shape == (b,) and sigma.min() >= 0 and sigma.max() < ratio
  np.testing.assert_allclose(sigma.mean(), ratio / 2, atol=0.005)          # 4 sd of the mean
  np.testing.assert_allclose(sigma.var(), ratio ** 2 / 12, rtol=0.06)
  pooled = np.concatenate([np.asarray(o).reshape(b, -1) for o in out], axis=1)
  # h = 1: out = s n + 1 - s, mean 1 - r/2, variance E[s^2] + Var(s) = 5 r^2 / 12.
  np.testing.assert_allclose(pooled.mean(), 1 - ratio / 2, atol=0.005)
  np.testing.assert_allclose(pooled.var(), 5 * ratio ** 2 / 12, rtol=0.04)
  noise = [(np.asarray(o).reshape(b, -1) - (1 - sigma[:, None])) / sigma[:, None] for o in out]
  allnoise = np.concatenate(noise, axis=1)
  np.testing.assert_allclose(allnoise.mean(), 0, atol=0.01)
  np.testing.assert_allclose(allnoise.var(), 1, rtol=0.03)
  # Fresh noise per clip: the two clips' noise is uncorrelated.
  assert abs(np.corrcoef(noise[0][:, :16].ravel(), noise[1].ravel())[0, 1]) < 0.02


def test_corruption_shares_sigma_across_clips():
  zeros = [jnp.zeros((256, 1, 8, 8, 1)), jnp.zeros((256, 1, 4, 4, 4))]
  out, sigma = temporal.corrupt_history(zeros, jax.random.key(1), 1 / 3)
  # h = 0: each clip is s * white noise, so its per-sample spread estimates s.
  spread = [np.asarray(o).reshape(256, -1).std(axis=1) for o in out]
  assert np.corrcoef(spread[0], spread[1])[0, 1] > 0.9
  np.testing.assert_allclose(spread[0] / np.asarray(sigma), 1, atol=0.4)
  same, _ = temporal.corrupt_history([jnp.ones((2, 1, 2, 2, 1))], jax.random.key(2), 0.0)
  np.testing.assert_array_equal(same[0], 1.0)


def test_sample_stage_length_official_values():
  kw = dict(max_temporal_length=16, frame_per_unit=1, video_sync_group=8)
  # N = 16 units, turns = 2: high = rank + 1 + (steps % 2) * 8, low = mid = 17 - high.
  assert temporal.sample_stage_length(1, 0, **kw) == (8, 8, 9)
  assert temporal.sample_stage_length(2, 0, **kw) == (16, 16, 1)
  assert temporal.sample_stage_length(1, 7, **kw) == (1, 1, 16)
  assert temporal.sample_stage_length(2, 3, **kw) == (13, 13, 4)
  assert temporal.sample_stage_length(10, 11, **kw) == (13, 13, 4)   # rank 11 = 3 in its group
  assert temporal.sample_stage_length(1, 0, max_units=5, **kw) == (5, 5, 5)
  assert temporal.sample_stage_length(2, 0, max_units=5, **kw) == (5, 5, 1)
  assert temporal.sample_stage_length(1, 0, stages=4, **kw) == (8, 8, 8, 9)
  # 2 frames per unit: N = 1 + 30 // 2 = 16 units.
  assert temporal.sample_stage_length(1, 0, max_temporal_length=31, frame_per_unit=2,
                                      video_sync_group=8) == (8, 8, 9)


@pytest.mark.parametrize('frames,group', [(16, 8), (31, 8), (32, 4)])
def test_sample_stage_length_cycle_and_budget(frames, group):
  n = frames                    # units with frame_per_unit = 1
  turns = n // group
  highs = collections.Counter()
  for step in range(5, 5 + turns):          # any `turns` consecutive steps
    for rank in range(group):
      low, mid, high = temporal.sample_stage_length(
          step, rank, max_temporal_length=frames, video_sync_group=group)
      assert low == mid and high + mid == n + 1     # the fixed unit budget
      highs[high] += 1
  assert highs == collections.Counter(range(1, group * turns + 1))
  layouts = temporal.stage_length_layouts(max_temporal_length=frames, video_sync_group=group)
  assert layouts == tuple((n + 1 - h, n + 1 - h, h) for h in range(1, group * turns + 1))


def test_stage_length_for_step_visits_every_layout_per_block():
  kw = dict(max_temporal_length=16, video_sync_group=8)
  layouts = temporal.stage_length_layouts(**kw)
  p = len(layouts)
  blocks = [[temporal.stage_length_for_step(s, 7, **kw) for s in range(i * p, (i + 1) * p)]
            for i in range(3)]
  for block in blocks:
    assert collections.Counter(block) == collections.Counter(layouts)
  assert blocks[0] != blocks[1] and blocks[0] != sorted(blocks[0])
  assert blocks[2] == [temporal.stage_length_for_step(s, 7, **kw) for s in range(2 * p, 3 * p)]
  assert blocks[0] != [temporal.stage_length_for_step(s, 8, **kw) for s in range(p)]


def test_stage_length_rejects_bad_config():
  with pytest.raises(ValueError, match='video_sync_group'):
    temporal.sample_stage_length(1, 0, max_temporal_length=4, video_sync_group=8)
  with pytest.raises(ValueError, match='whole units'):
    temporal.sample_stage_length(1, 0, max_temporal_length=16, frame_per_unit=2)


def torch_linear_resize(values, size):
  """torch F.interpolate(mode='linear', align_corners=False) of a 1D array to `size` points."""
  n_in = len(values)
  out = np.empty(size)
  for i in range(size):
    src = max((i + 0.5) * (n_in / size) - 0.5, 0.0)
    lo = int(np.floor(src))
    hi = min(lo + 1, n_in - 1)
    lam = src - lo
    out[i] = (1 - lam) * values[lo] + lam * values[hi]
  return out


@pytest.mark.parametrize('size,ref', [(4, 8), (2, 8), (1, 4), (3, 5), (5, 7), (6, 6)])
def test_interp_positions_is_torch_linear(size, ref):
  got = temporal.interp_positions(size, ref)
  np.testing.assert_allclose(got, torch_linear_resize(np.arange(ref, dtype=np.float64), size),
                             atol=1e-6)


def test_interp_positions_are_block_centres():
  for f in (2, 4):
    got = temporal.interp_positions(12 // f, 12)
    np.testing.assert_allclose(got, [np.mean(range(f * i, f * i + f)) for i in range(12 // f)])


def test_token_layout_matches_naive_loop():
  shapes = temporal_reference.clip_shapes(4, 2, 2, (8, 16), 3)      # 4 history units, 2 frames each
  lay = temporal_reference.token_layout(shapes, patch_size=2)
  ref_h, ref_w = shapes[-1][1] // 2, shapes[-1][2] // 2
  expected, frame = [], 0
  for t, h, w in shapes:
    ys = torch_linear_resize(np.arange(ref_h, dtype=np.float64), h // 2)
    xs = torch_linear_resize(np.arange(ref_w, dtype=np.float64), w // 2)
    for _ in range(t):
      for y in ys:
        for x in xs:
          expected.append((frame, y, x))
      frame += 1
  np.testing.assert_allclose(lay.positions, np.array(expected), atol=1e-6)
  np.testing.assert_array_equal(lay.frame_index, np.array(expected)[:, 0])
  assert lay.clip_lengths == tuple(t * h * w // 4 for t, h, w in shapes)
  assert lay.tokens_per_frame == tuple(h * w // 4 for t, h, w in shapes for _ in range(t))
  assert frame == temporal_reference.unit_frames(5, 2)
  with pytest.raises(ValueError, match='finest'):
    temporal_reference.token_layout([(1, 8, 8), (1, 4, 4)])
  with pytest.raises(ValueError, match='patch_size'):
    temporal_reference.token_layout([(1, 6, 6)], patch_size=4)


def naive_mask(text_valid, frames, causal):
  """The spec's rules token by token for one sample: [(kind, frame, valid)] -> [L, L]."""
  tokens = [('text', 0, bool(v)) for v in text_valid] + [('video', f, True) for f in frames]
  m = np.zeros((len(tokens), len(tokens)), bool)
  for i, (qk, qf, qv) in enumerate(tokens):
    for j, (kk, kf, kv) in enumerate(tokens):
      if not qv:                                  # padded text: only padded text
        m[i, j] = not kv
      elif not kv:                                # nobody valid sees padded text
        m[i, j] = False
      elif not causal or kk == 'text':            # valid text is seen by all valid tokens
        m[i, j] = True
      elif qk == 'text':                          # text sees video of frame 0 only
        m[i, j] = kf == 0
      else:
        m[i, j] = kf <= qf
  return m


@pytest.mark.parametrize('fpu', [1, 2])
@pytest.mark.parametrize('num_units', [1, 2, 5])
@pytest.mark.parametrize('causal', [True, False])
def test_attention_mask_matches_rules(fpu, num_units, causal):
  lay = temporal_reference.token_layout(temporal_reference.clip_shapes(num_units - 1, 2, fpu, (8, 8), 3),
                              patch_size=2)
  text_valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  seg, order = temporal_reference.joint_token_ids(jnp.asarray(text_valid), lay.frame_index)
  mask = np.asarray(jax.jit(temporal.attention_mask, static_argnames='temporal_causal')(
      seg, order, temporal_causal=causal))
  for b in range(2):
    np.testing.assert_array_equal(mask[b], naive_mask(text_valid[b], lay.frame_index, causal))
  assert mask.any(axis=-1).all()              # no empty row, hence no NaN softmax


def test_packed_segments_do_not_mix():
  lays = [temporal_reference.token_layout(temporal_reference.clip_shapes(n, s, 1, (8, 8), 3), 2)
          for n, s in ((3, 1), (2, 2))]
  valid = [np.array([[1, 1, 0]], bool), np.array([[1, 0, 0, 0]], bool)]
  ids = [temporal_reference.joint_token_ids(jnp.asarray(v), lay.frame_index, segment=i + 1)
         for i, (v, lay) in enumerate(zip(valid, lays))]
  filler = 3
  seg = jnp.concatenate([ids[0][0], ids[1][0], jnp.zeros((1, filler), jnp.int32)], axis=1)
  order = jnp.concatenate([ids[0][1], ids[1][1], jnp.zeros((1, filler), jnp.int32)], axis=1)
  mask = np.asarray(temporal.attention_mask(seg, order))[0]
  n0 = valid[0].shape[1] + len(lays[0].frame_index)
  n1 = valid[1].shape[1] + len(lays[1].frame_index)
  np.testing.assert_array_equal(mask[:n0, :n0], naive_mask(valid[0][0], lays[0].frame_index, True))
  np.testing.assert_array_equal(mask[n0:n0 + n1, n0:n0 + n1],
                                naive_mask(valid[1][0], lays[1].frame_index, True))
  off = np.ones_like(mask)
  off[:n0, :n0] = off[n0:n0 + n1, n0:n0 + n1] = off[n0 + n1:, n0 + n1:] = False
  assert not mask[off].any()
  assert mask[n0 + n1:, n0 + n1:].all()       # filler sees only filler


def test_frame_block_mask_expands_to_dense_mask():
  lays = [temporal_reference.token_layout(temporal_reference.clip_shapes(n, s, f, (8, 8), 3), 2)
          for n, s, f in ((4, 2, 2), (1, 0, 1))]
  text_lens = (3, 2)
  sizes, blocks = temporal_reference.frame_block_mask(
      [(lt, lay.tokens_per_frame) for lt, lay in zip(text_lens, lays)])
  assert blocks.shape == (len(sizes), len(sizes))
  dense = np.repeat(np.repeat(blocks, sizes, axis=0), sizes, axis=1)
  ids = [temporal_reference.joint_token_ids(jnp.ones((1, lt), bool), lay.frame_index, segment=i + 1)
         for i, (lt, lay) in enumerate(zip(text_lens, lays))]
  seg = jnp.concatenate([i[0] for i in ids], axis=1)
  order = jnp.concatenate([i[1] for i in ids], axis=1)
  np.testing.assert_array_equal(dense, np.asarray(temporal.attention_mask(seg, order))[0])
  # With padded text: block mask AND key validity agrees on every valid query row.
  valid = np.array([1, 1, 0], bool)
  s1, o1 = temporal_reference.joint_token_ids(jnp.asarray(valid[None]), lays[0].frame_index)
  sizes1, blocks1 = temporal_reference.frame_block_mask([(3, lays[0].tokens_per_frame)])
  keys = np.concatenate([valid, np.ones(len(lays[0].frame_index), bool)])
  dense1 = np.repeat(np.repeat(blocks1, sizes1, axis=0), sizes1, axis=1) & keys[None, :]
  np.testing.assert_array_equal(dense1[keys], np.asarray(temporal.attention_mask(s1, o1))[0][keys])
