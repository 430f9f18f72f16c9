"""The temporal pyramid through the model: fixed-shape history plans against the official
clip concatenation, causality through the DiT, the autoregressive loss, the KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import moving_digits
from pflow_jax.models import flow_model
from pflow_jax.pyramid import flow, schedule as schedule_lib, temporal
import temporal_reference
from tests.test_flow import exact_dirac_velocity

STAGES, HW, PATCH = 3, (8, 8), 2


@pytest.mark.parametrize('units', [1, 2, 5])
@pytest.mark.parametrize('target_stage', [0, 1, 2])
def test_history_plan_lays_out_the_official_clips(units, target_stage):
  """Valid slots = the official history clips (stages, frames, positions), oldest first."""
  plan = temporal.history_plan(target_stage, 4, stages=STAGES, latent_hw=HW, patch_size=PATCH)
  n = units - 1
  shapes = temporal_reference.clip_shapes(n, target_stage, 1, HW, STAGES)
  layout = temporal_reference.token_layout(shapes, patch_size=PATCH)
  history_tokens = sum(layout.clip_lengths[:-1])
  valid = plan.valid[n]
  assert valid.sum() == history_tokens == plan.tokens(n)
  assert not valid[history_tokens:].any()          # padding only at the end
  np.testing.assert_allclose(plan.positions[n][:history_tokens],
                             layout.positions[:history_tokens], atol=1e-6)
  # Each slot reads the bank token of its frame at its clip's stage.
  clips = temporal_reference.history_clips(n, target_stage, 1)
  expected = []
  for clip in clips:
    level = plan.levels.index(clip.stage)
    gh, gw = plan.level_grids[level]
    for f in range(clip.start, clip.start + clip.frames):
      first = plan.level_offsets[level] + f * gh * gw
      expected.extend(range(first, first + gh * gw))
  np.testing.assert_array_equal(plan.index[n][:history_tokens], expected)


def test_uncompressed_plan_keeps_history_at_the_target_resolution():
  plan = temporal.history_plan(1, 3, stages=STAGES, latent_hw=HW, patch_size=PATCH,
                               compress=False)
  assert plan.levels == (1,) and plan.tokens(3) == 3 * 2 * 2
  compressed = temporal.history_plan(1, 3, stages=STAGES, latent_hw=HW, patch_size=PATCH)
  assert compressed.tokens(3) == 2 * 2 + 2 * 1   # newest at stage 1, the rest at stage 0


def tiny_model(history_conditioning='timestep'):
  config = moving_digits.get_config('tiny')
  config.model.history_conditioning = history_conditioning
  config.dtype = 'float32'   # parity between two computation orders, to fp32 rounding
  return flow_model.FlowModel(config, rngs=nnx.Rngs(0)), config


def perturbed(model, seed=1):
  """Noise on every parameter, so zero-initialised layers take part."""
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32),
                       state)
  return nnx.merge(graphdef, state)


def jitted(model, fn):
  """fn(model, *arrays) compiled, with the model's state as an argument (tests run eagerly
  otherwise, op by op, which is slow)."""
  graphdef, state = nnx.split(model)
  compiled = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
  return lambda *args: compiled(state, *args)


def make_text(model, batch=2):
  tokens = np.zeros((batch, 40), np.int32)
  tokens[:, :5] = [3, 7, 9, 11, 2]
  tokens[1, 5:9] = [4, 4, 4, 4]
  return model.encode_text({'tokens': jnp.asarray(tokens)})


def reference_unit_velocity(model, target, history_full, num_history, target_stage, t, text):
  """The official way: concatenate the history clips and the target, dense mask."""
  dit = model.dit
  levels = flow.downsample_pyramid(history_full, STAGES) if num_history else []
  clips = temporal_reference.temporal_clips(
      [lv[:, :num_history] for lv in levels] if num_history else [], target, target_stage, 1)
  tokens = []
  ref = target.shape[2:4]
  for clip in clips:
    tok, _ = dit.embed_clip(clip, full_size=ref)
    tokens.append(tok)
  layout = temporal_reference.token_layout([c.shape[1:4] for c in clips], patch_size=PATCH)
  tokens = jnp.concatenate(tokens, axis=1)
  cond = dit.embed_conditions(t, text)
  seg, order = temporal_reference.joint_token_ids(text['mask'], layout.frame_index)
  mask = temporal.attention_mask(seg, order)
  out = dit.forward_tokens(tokens, cond, jnp.asarray(layout.positions)[None], mask,
                           history=sum(layout.clip_lengths[:-1]))
  return dit.unpatchify(out, (1, target.shape[2] // PATCH, target.shape[3] // PATCH))


@pytest.mark.parametrize('conditioning', ['timestep', 'clean'])
@pytest.mark.parametrize('num_history', [0, 1, 4])
def test_padded_unit_velocity_equals_the_official_clip_concatenation(conditioning, num_history):
  model, _ = tiny_model(conditioning)
  model = perturbed(model)
  target_stage = 2
  plan = temporal.history_plan(target_stage, 4, stages=STAGES, latent_hw=HW, patch_size=PATCH)
  keys = jax.random.split(jax.random.key(0), 2)
  history_full = jax.random.normal(keys[0], (2, 4, 8, 8, 16))
  target = jax.random.normal(keys[1], (2, 1, 8, 8, 16))
  t = jnp.array([900.0, 120.0])
  text = make_text(model)
  bank = [lv for i, lv in enumerate(flow.downsample_pyramid(history_full, STAGES))
          if i in plan.levels]
  got = jitted(model, lambda m, *a: m.unit_velocity(*a[:2], a[2], plan, *a[3:]))(
      target, bank, jnp.int32(num_history), t, text)
  want = jitted(model, lambda m, *a: reference_unit_velocity(m, *a[:2], num_history,
                                                             target_stage, *a[2:]))(
      target, history_full, t, text)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_unit_outputs_are_causal_through_the_dit():
  """Outputs of unit t (the whole sequence run as 'history' = 0) ignore later units' inputs."""
  model, _ = tiny_model()
  model = perturbed(model)
  text = make_text(model)
  shapes = temporal_reference.clip_shapes(4, 2, 1, HW, STAGES)     # 5 units, target at full resolution
  layout = temporal_reference.token_layout(shapes, patch_size=PATCH)
  clips = [jax.random.normal(jax.random.key(i), (2, *s, 16)) for i, s in enumerate(shapes)]

  def run(m, clips):
    dit = m.dit
    tokens = jnp.concatenate([dit.embed_clip(c, full_size=shapes[-1][1:])[0] for c in clips], 1)
    seg, order = temporal_reference.joint_token_ids(text['mask'], layout.frame_index)
    cond = dit.embed_conditions(jnp.array([500.0, 500.0]), text)
    return dit.forward_tokens(tokens, cond, jnp.asarray(layout.positions)[None],
                              temporal.attention_mask(seg, order))

  outputs = jitted(model, run)
  base = outputs(clips)
  ends = np.cumsum(layout.clip_lengths)
  for changed in range(1, len(clips)):
    edited = list(clips)
    edited[changed] = edited[changed] + 1.0
    out = outputs(edited)
    np.testing.assert_allclose(out[:, :ends[changed - 1]], base[:, :ends[changed - 1]],
                               atol=1e-5)
    assert float(jnp.abs(out[:, ends[changed - 1]:] - base[:, ends[changed - 1]:]).max()) > 1e-3


@pytest.mark.parametrize('num_history', [1, 4])
def test_cached_history_gives_the_recomputed_velocity(num_history):
  model, _ = tiny_model('clean')
  model = perturbed(model, seed=2)
  plan = temporal.history_plan(1, 4, stages=STAGES, latent_hw=HW, patch_size=PATCH)
  keys = jax.random.split(jax.random.key(5), 2)
  bank = [lv for i, lv in enumerate(flow.downsample_pyramid(
      jax.random.normal(keys[0], (2, 4, 8, 8, 16)), STAGES)) if i in plan.levels]
  target = jax.random.normal(keys[1], (2, 1, 4, 4, 16))
  text = make_text(model)
  n = jnp.int32(num_history)
  cached = jitted(model, lambda m, bank, n, ts, text: m.unit_velocity_cached(
      target, m.unit_history_cache(target.shape, bank, n, plan, text), ts, text))
  full = jitted(model, lambda m, bank, n, ts, text: m.unit_velocity(target, bank, n, plan, ts,
                                                                   text))
  cache = jitted(model, lambda m, bank, n, text: m.unit_history_cache(target.shape, bank, n,
                                                                      plan, text))(bank, n, text)
  reuse = jitted(model, lambda m, cache, ts, text: m.unit_velocity_cached(target, cache, ts,
                                                                          text))
  for t in (950.0, 300.0):   # one cache serves every step
    ts = jnp.full((2,), t)
    want = full(bank, n, ts, text)
    np.testing.assert_allclose(cached(bank, n, ts, text), want, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(reuse(cache, ts, text), want, atol=2e-5, rtol=2e-5)


def test_history_cache_needs_clean_conditioning():
  model, _ = tiny_model('timestep')
  plan = temporal.history_plan(1, 2, stages=STAGES, latent_hw=HW, patch_size=PATCH)
  bank = [jnp.zeros((2, 2, 2, 2, 16)), jnp.zeros((2, 2, 4, 4, 16))]
  with pytest.raises(ValueError, match="'clean'"):
    model.unit_history_cache((2, 1, 4, 4, 16), bank, jnp.int32(1), plan, make_text(model))


def test_temporal_loss_targets_the_last_unit_on_a_clean_history():
  """With the exact velocity of the target frame the loss vanishes; the history is the
  clean past at the plan's levels (no corruption at corrupt_ratio 0), masked after units - 1."""
  s = schedule_lib.make_schedule(STAGES)
  plans = temporal.history_plans(stages=STAGES, max_history=4, latent_hw=HW, patch_size=PATCH)
  z = jax.random.normal(jax.random.key(1), (6, 5, 8, 8, 3))
  seen = {}

  def unit_velocity(x, history, num_history, plan, t, cond):
    zf = jax.lax.dynamic_slice_in_dim(cond['z'], num_history, 1, axis=1)
    seen.setdefault(plan.target_stage, []).append((history, num_history, cond['z']))
    return exact_dirac_velocity(s, 8, x, t, {'z': zf, 'offset': cond['offset']})

  units = jnp.array([5, 5, 2], jnp.int32)
  loss, aux = flow.temporal_pyramid_flow_loss(
      unit_velocity, z, {'z': z, 'offset': jnp.zeros((6,))}, jax.random.key(2), s, (1, 1, 1),
      units, plans, corrupt_ratio=0.0)
  assert float(loss) < 1e-8 and aux['loss_per_stage'].shape == (3,)
  for stage, ((history, num_history, zc),) in seen.items():
    assert int(num_history) == int(units[stage]) - 1
    levels = flow.downsample_pyramid(zc, STAGES)
    for level, h in zip(plans[stage].levels, history):
      np.testing.assert_allclose(h, levels[level][:, :4], atol=1e-6)
  # A wrong velocity is penalised on the target frame only.
  zero = lambda x, *args: jnp.zeros_like(x)
  loss0, _ = flow.temporal_pyramid_flow_loss(
      zero, z, {'z': z}, jax.random.key(2), s, (1, 1, 1), units, plans)
  assert float(loss0) > 0.1


@pytest.mark.slow
def test_temporal_loss_with_the_model_has_gradients():
  model, config = tiny_model()
  model = perturbed(model)
  s = schedule_lib.make_schedule(STAGES)
  plans = temporal.history_plans(stages=STAGES, max_history=2, latent_hw=HW, patch_size=PATCH)
  z = jax.random.normal(jax.random.key(1), (3, 3, 8, 8, 16))
  graphdef, state = nnx.split(model)
  text = make_text(model, 3)

  def loss(state, units):
    m = nnx.merge(graphdef, state)
    return flow.temporal_pyramid_flow_loss(m.unit_velocity, z, text, jax.random.key(0), s,
                                           (1, 1, 1), units, plans)[0]

  step = jax.jit(jax.value_and_grad(loss))
  for units in ([3, 3, 1], [1, 1, 3]):          # one compiled program for every layout
    value, grads = step(state, jnp.array(units, jnp.int32))
    assert np.isfinite(float(value))
    assert float(optax_norm(grads)) > 0
  assert step._cache_size() == 1


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.fixture(scope='module', params=['frame_rope', 'frame_y_x_rope'])
def ar_model(request):
  """A tiny autoregressive model with perturbed weights and its config: RoPE over the frame
  index (official), or over (frame, y, x) with unit-spaced sincos cells (`:ar,quality`), where
  the compressed history's positions are interpolated onto the target's grid."""
  config = moving_digits.get_config('tiny,ar')
  if request.param == 'frame_y_x_rope':
    config.model.update(rope_axes_dim=(4, 6, 6), pos_embed_max_size=4)
  config.dtype = 'float32'   # exact comparisons; bf16 rounding differs between the two paths
  model = perturbed(flow_model.FlowModel(config, rngs=nnx.Rngs(0)), seed=3)
  graphdef, params = nnx.split(model)
  return config, graphdef, params


def test_cached_and_recomputed_generation_give_the_same_video(ar_model):
  from pflow_jax import inference
  from pflow_jax.models import latent_codec
  config, graphdef, params = ar_model
  codec = latent_codec.make_codec(config.latent)
  text = inference.prompt_text(config, ['a 3 moving left', 'a 7 moving down'])
  videos = {}
  for cache in (True, False):
    gen = inference.VideoGenerator(config, graphdef, codec, num_frames=5, window=2, cache=cache)
    videos[cache] = gen.latents(params, text, jax.random.key(0))
  assert videos[True].shape == (2, 5, 8, 8, 16)
  np.testing.assert_allclose(videos[True], videos[False], atol=1e-4, rtol=1e-4)
  assert float(jnp.abs(videos[True][:, 4]).mean()) > 0.1    # every frame was generated


@pytest.mark.slow
def test_generation_continues_a_prefix_and_respects_the_window(ar_model):
  """Frame u depends on the prefix only through the last `window` frames before it."""
  from pflow_jax import inference
  from pflow_jax.models import latent_codec
  config, graphdef, params = ar_model
  codec = latent_codec.make_codec(config.latent)
  text = inference.prompt_text(config, ['a 3 moving left'])
  gen = inference.VideoGenerator(config, graphdef, codec, num_frames=4, window=1, cache=True)
  prefix = jax.random.normal(jax.random.key(1), (1, 2, 8, 8, 16))
  a = gen.latents(params, text, jax.random.key(2), prefix)
  np.testing.assert_array_equal(a[:, :2], prefix)
  # Changing frame 0 of the prefix cannot reach frame 2 (window 1 sees frame 1 only).
  b = gen.latents(params, text, jax.random.key(2), prefix.at[:, 0].add(3.0))
  np.testing.assert_allclose(a[:, 2:], b[:, 2:], atol=1e-5)
  c = gen.latents(params, text, jax.random.key(2), prefix.at[:, 1].add(3.0))
  assert float(jnp.abs(a[:, 2] - c[:, 2]).max()) > 1e-3
  with pytest.raises(ValueError, match='nothing is left'):
    gen.latents(params, text, jax.random.key(2), jnp.zeros((1, 4, 8, 8, 16)))


# The mixing does not depend on the positions: one of the two models (:ar,quality's).
@pytest.mark.parametrize('ar_model', ['frame_y_x_rope'], indirect=True)
def test_history_noise_corrupts_the_history_it_is_given(ar_model):
  """sample.history_noise s mixes the history as training corrupts it: at s = 1 a frame no
  longer depends on its history's content, at 0 < s < 1 it does, and differs from s = 0."""
  from pflow_jax import inference
  from pflow_jax.models import latent_codec
  config, graphdef, params = ar_model
  codec = latent_codec.make_codec(config.latent)
  text = inference.prompt_text(config, ['a 3 moving left'])
  frames = jax.random.normal(jax.random.key(1), (1, 3, 8, 8, 16))
  other = frames.at[:, :2].add(3.0)
  frame2 = {}
  for s in (0.0, 0.3, 1.0):
    noisy = config.copy_and_resolve_references()
    noisy.sample.history_noise = s
    gen = inference.VideoGenerator(noisy, graphdef, codec, num_frames=3, window=2)
    frame2[s] = [gen.generate_unit(params, text, f, 2, jax.random.key(2))[:, 2]
                 for f in (frames, other)]
  np.testing.assert_allclose(frame2[1.0][0], frame2[1.0][1], atol=1e-5)
  for s in (0.0, 0.3):
    assert float(jnp.abs(frame2[s][0] - frame2[s][1]).max()) > 1e-3, s
  assert float(jnp.abs(frame2[0.3][0] - frame2[0.0][0]).max()) > 1e-3
