"""The DiT: shapes, official init and positions, text mixing, attention, counts, sharding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pflow_jax import config as config_lib
from pflow_jax.models import dit, layers
from pflow_jax.parallel import mesh as mesh_lib, rules

# Parameters of the released pyramid-flow-sd3 DiT (384p and 768p share it):
# the official PyramidDiffusionMMDiT built with the released config.json
# (24 layers, 24 heads x 64, caption_projection_dim 1536, joint_attention_dim
# 4096, pooled 2048, sincos pos_embed_max_size 192, qk rms_norm) plus the
# build_pyramid_dit overrides, instantiated on torch's meta device (torch
# 2.13.0, diffusers 0.42.1) and summed over model.parameters(). The state dict
# also holds the 56,623,104-entry sincos buffer (192*192*1536): 2,084,957,248
# fp32 entries, the released 8.34 GB safetensors.
OFFICIAL_SD3_PARAMS = 2_028_334_144

TINY = dit.DiTConfig(sample_size=16, in_channels=4, num_layers=2, num_attention_heads=4,
                     attention_head_dim=16, joint_attention_dim=32, caption_projection_dim=64,
                     pooled_projection_dim=16, pos_embed_max_size=16)
TEXT_LEN = 5


def make_model(cfg=TINY, dtype=jnp.float32):
  return dit.PyramidDiT(cfg, dtype=dtype, rngs=nnx.Rngs(0))


def graphdef_of(cfg=TINY, dtype=jnp.float32):
  """A model's graphdef, built from shapes only; merge it with any TINY parameter state."""
  return nnx.split(nnx.eval_shape(lambda: make_model(cfg, dtype)))[0]


GRAPH = graphdef_of()


@functools.partial(jax.jit, static_argnames=('graphdef', 'full_size'))
def forward(state, latents, timesteps, text, *, graphdef=GRAPH, full_size=None):
  return nnx.merge(graphdef, state)(latents, timesteps, text, full_size=full_size)


def perturb(state, seed):
  """Adds noise to every parameter, so zero-initialised layers take part."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32), state)


def make_inputs(batch=2, frames=1, size=(8, 8), seed=0, cfg=TINY):
  ks = jax.random.split(jax.random.key(seed), 4)
  latents = jax.random.normal(ks[0], (batch, frames, *size, cfg.in_channels))
  timesteps = jax.random.uniform(ks[1], (batch,)) * 1000
  mask = jnp.arange(TEXT_LEN)[None, :] < jnp.array([3, TEXT_LEN] * (batch // 2))[:, None]
  text = {'seq': jax.random.normal(ks[2], (batch, TEXT_LEN, cfg.joint_attention_dim)),
          'mask': mask,
          'pooled': jax.random.normal(ks[3], (batch, cfg.pooled_projection_dim))}
  return latents, timesteps, text


@pytest.fixture(scope='module')
def fresh():
  """Parameter state of a freshly initialised TINY model."""
  return nnx.state(make_model())


@pytest.fixture(scope='module')
def params(fresh):
  return perturb(fresh, 1)


@pytest.mark.parametrize('frames, size, full_size', [(1, (8, 8), None), (3, (4, 8), (8, 16))])
def test_output_shape_dtype_for_stages_and_frames(params, frames, size, full_size):
  latents, t, text = make_inputs(frames=frames, size=size)
  out = forward(params, latents, t, text, full_size=full_size)
  assert out.shape == latents.shape and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).mean()) > 1e-3


def test_output_is_zero_at_init_and_not_after_perturbing(fresh):
  latents, t, text = make_inputs()
  np.testing.assert_array_equal(np.asarray(forward(fresh, latents, t, text)), 0.0)
  # Perturbing the output projection alone makes the output a projection of norm(tokens).
  state = jax.tree.map(lambda x: x, fresh)
  kernel = state['proj_out']['kernel']
  kernel[...] = jax.random.normal(jax.random.key(3), kernel.shape)
  assert float(jnp.abs(forward(state, latents, t, text)).mean()) > 0.1


def test_zero_init_follows_the_official_rule(fresh):
  fresh = nnx.merge(GRAPH, fresh)
  for block in fresh.transformer_blocks:
    for lin in (block.norm1.linear, block.norm1_context.linear):
      assert not np.any(np.asarray(lin.kernel[...])) and not np.any(np.asarray(lin.bias[...]))
    assert np.std(np.asarray(block.attn.to_q.kernel[...])) > 0
  assert not np.any(np.asarray(fresh.norm_out.linear.kernel[...]))
  # Conditioning embedders are normal(0.02).
  std = np.std(np.asarray(fresh.context_embedder.kernel[...]))
  assert 0.015 < std < 0.025


def test_bf16_close_to_fp32(params):
  latents, t, text = make_inputs()
  ref = forward(params, latents, t, text)
  out = forward(params, latents, t, text, graphdef=graphdef_of(dtype=jnp.bfloat16))
  assert out.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert rel < 0.05, rel


def test_text_is_mixed_in_and_padding_is_ignored(params):
  fwd = functools.partial(forward, params)
  latents, t, text = make_inputs()
  base = fwd(latents, t, text)
  # Sample 0 has 3 valid tokens: its tokens 3 and 4 are padding.
  padded = dict(text, seq=text['seq'].at[0, 3:].set(100.0))
  np.testing.assert_allclose(fwd(latents, t, padded), base, atol=1e-6)
  valid = dict(text, seq=text['seq'].at[0, 1].add(1.0))
  changed = fwd(latents, t, valid)
  assert float(jnp.abs(changed[0] - base[0]).max()) > 1e-3
  np.testing.assert_allclose(changed[1], base[1], atol=1e-6)  # samples stay independent
  pooled = dict(text, pooled=text['pooled'].at[1].add(1.0))
  assert float(jnp.abs(fwd(latents, t, pooled)[1] - base[1]).max()) > 1e-3


@pytest.mark.parametrize('causal', [True, False])
def test_temporal_causality(params, causal):
  fwd = functools.partial(forward, params, graphdef=graphdef_of(
      dataclasses.replace(TINY, use_temporal_causal=causal)))
  latents, t, text = make_inputs(frames=3, size=(4, 4))
  base = fwd(latents, t, text)
  later = fwd(latents.at[:, 2].add(1.0), t, text)
  frame0_change = float(jnp.abs(later[:, :2] - base[:, :2]).max())
  if causal:  # frames 0 and 1 cannot see frame 2
    assert frame0_change < 1e-5
  else:
    assert frame0_change > 1e-3


def _official_sincos_table(dim, max_size, base_size):
  """The official SD3 buffer (get_2d_sincos_pos_embed) as [max, max, dim], from its formula."""
  grid = np.arange(max_size, dtype=np.float64) / (max_size / base_size)
  gw, gh = np.meshgrid(grid, grid)  # gw[i, j] = grid[j]: the first half encodes x

  def one(pos, d):
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    out = pos.reshape(-1)[:, None] * omega
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  emb = np.concatenate([one(gw, dim // 2), one(gh, dim // 2)], axis=1)
  return emb.reshape(max_size, max_size, dim)


@pytest.mark.parametrize('own, ref', [((8, 8), (8, 8)), ((4, 4), (8, 8)), ((2, 4), (8, 8)),
                                      ((4, 6), (4, 6))])
def test_spatial_positions_follow_the_official_crop_and_interpolation(fresh, own, ref):
  fresh = nnx.merge(GRAPH, fresh)  # zero patch bias: zero latents give the position embedding
  p = TINY.patch_size
  latents = jnp.zeros((1, 1, own[0] * p, own[1] * p, TINY.in_channels))
  tokens, _ = fresh.embed_clip(latents, full_size=(ref[0] * p, ref[1] * p))
  table = _official_sincos_table(TINY.hidden_size, TINY.pos_embed_max_size,
                                 TINY.sample_size // p)
  top, left = (TINY.pos_embed_max_size - ref[0]) // 2, (TINY.pos_embed_max_size - ref[1]) // 2
  crop = table[top:top + ref[0], left:left + ref[1]]
  # torch bilinear, align_corners=False, no antialias == half-pixel linear resize.
  want = jax.image.resize(jnp.asarray(crop), (*own, TINY.hidden_size), 'linear', antialias=False)
  np.testing.assert_allclose(tokens[0].reshape(*own, -1), want, atol=1e-5)


def test_positions_are_interpolated_on_the_reference_grid_with_frame_offsets(fresh):
  fresh = nnx.merge(GRAPH, fresh)
  latents = jnp.zeros((1, 2, 4, 8, TINY.in_channels))  # 2 x 4 tokens
  _, pos = fresh.embed_clip(latents, full_size=(16, 16), frame_offset=3)
  pos = np.asarray(pos[0]).reshape(2, 2, 4, 3)
  ys = jax.image.resize(jnp.arange(8.0), (2,), 'linear', antialias=False)
  xs = jax.image.resize(jnp.arange(8.0), (4,), 'linear', antialias=False)
  np.testing.assert_allclose(pos[..., 0], np.broadcast_to(np.array([3., 4.])[:, None, None],
                                                          (2, 2, 4)))
  np.testing.assert_allclose(pos[0, :, 0, 1], ys)
  np.testing.assert_allclose(pos[0, 0, :, 2], xs)


def test_joint_attention_mask():
  text_mask = jnp.array([[True, False]])
  frames = jnp.array([[0., 1., 1.]])
  got = np.asarray(dit.joint_attention_mask(text_mask, 3, frames=frames))[0]
  order = np.array([0, 0, 0, 1, 1])
  valid = np.array([1, 0, 1, 1, 1], bool)
  want = valid[None, :] & (order[:, None] >= order[None, :])
  np.testing.assert_array_equal(got, want)
  plain = dit.joint_attention_mask(text_mask, 3)
  assert plain.shape == (1, 1, 5)
  np.testing.assert_array_equal(np.asarray(plain)[0, 0], valid)


def _naive_attention(q, k, v, mask):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.asarray(mask)[:, None], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', probs, v)


@pytest.mark.parametrize('mask_shape', ['full', 'keys', 'none'])
def test_attention_matches_naive_softmax(mask_shape):
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (2, 5, 3, 8)) * 2
  k = jax.random.normal(ks[1], (2, 7, 3, 8)) * 2
  v = jax.random.normal(ks[2], (2, 7, 3, 8))
  if mask_shape == 'full':
    mask = jax.random.bernoulli(ks[3], 0.6, (2, 5, 7)).at[:, :, 0].set(True)
  elif mask_shape == 'keys':
    mask = jnp.array([[True] * 4 + [False] * 3, [True] * 7])[:, None, :]
  else:
    mask = None
  attend = jax.jit(layers.attention)
  out = attend(q, k, v, mask=mask)
  ref_mask = np.ones((2, 5, 7), bool) if mask is None else np.broadcast_to(mask, (2, 5, 7))
  np.testing.assert_allclose(out, _naive_attention(q, k, v, ref_mask), atol=1e-5)
  out16 = attend(*(a.astype(jnp.bfloat16) for a in (q, k, v)), mask=mask)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(np.float32), out, atol=0.06)


def test_attention_rejects_bad_arguments():
  q = jnp.zeros((1, 2, 1, 4))
  with pytest.raises(ValueError, match='unknown attention impl'):
    layers.attention(q, q, q, impl='flash')
  with pytest.raises(ValueError, match='bool'):
    layers.attention(q, q, q, mask=jnp.ones((1, 2, 2)))


@pytest.mark.parametrize('axes_dim', [(8,), (2, 2, 4)])
def test_rope_is_a_rotation_with_relative_scores(axes_dim):
  ks = jax.random.split(jax.random.key(0), 2)
  q = jax.random.normal(ks[0], (1, 1, 1, 8))
  k = jax.random.normal(ks[1], (1, 1, 1, 8))
  n = len(axes_dim)

  def score(pq, pk):
    aq = layers.rope_angles(jnp.full((1, 1, n), pq, jnp.float32), axes_dim)
    ak = layers.rope_angles(jnp.full((1, 1, n), pk, jnp.float32), axes_dim)
    rq, rk = layers.apply_rope(q, aq), layers.apply_rope(k, ak)
    np.testing.assert_allclose(jnp.linalg.norm(rq), jnp.linalg.norm(q), rtol=1e-5)
    return float(jnp.sum(rq * rk))

  np.testing.assert_allclose(score(5.0, 2.0), score(13.0, 10.0), rtol=1e-4)
  assert abs(score(5.0, 2.0) - score(0.0, 0.0)) > 1e-3
  np.testing.assert_allclose(score(0.0, 0.0), float(jnp.sum(q * k)), rtol=1e-5)


def test_timestep_embedding_is_cos_then_sin():
  emb = layers.timestep_embedding(jnp.array([0.0, 3.0]), 8)
  freqs = np.exp(-np.log(10000) * np.arange(4) / 4)
  np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]),
                             rtol=1e-6)
  np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_param_count_matches_official_sd3():
  n = dit.count_params(dit.DiTConfig())
  assert abs(n - OFFICIAL_SD3_PARAMS) / OFFICIAL_SD3_PARAMS < 0.01, n


def test_param_paths_follow_the_official_names(fresh):
  paths = {'.'.join(map(str, p)) for p, _ in nnx.to_flat_state(fresh)}
  block = 'transformer_blocks.0.'
  for name in ('pos_embed.proj.kernel', 'time_text_embed.timestep_embedder.linear_1.kernel',
               'time_text_embed.text_embedder.linear_2.bias', 'context_embedder.kernel',
               block + 'attn.to_q.kernel', block + 'norm1.linear.kernel',
               block + 'attn.norm_add_k.scale', block + 'ff.proj_in.kernel',
               block + 'ff_context.proj_out.kernel', block + 'attn.to_add_out.kernel',
               'norm_out.linear.kernel', 'proj_out.kernel'):
    assert name in paths, name
  last = TINY.num_layers - 1
  assert f'transformer_blocks.{last}.attn.to_add_out.kernel' not in paths  # context_pre_only
  assert f'transformer_blocks.{last}.ff_context.proj_in.kernel' not in paths
  assert fresh['transformer_blocks'][last]['norm1_context']['linear']['kernel'].shape == (64, 128)


def test_every_parameter_has_logical_axes(fresh):
  for path, var in nnx.to_flat_state(fresh):
    axes = var.get_metadata().get('out_sharding')
    assert axes is not None and len(axes) == var.ndim, path


@pytest.mark.slow  # three gradient compiles, ~15 s of CPU
def test_remat_policies_give_the_same_values_and_gradients(params):
  latents, t, text = make_inputs(frames=2, size=(4, 4))

  def loss(state, gd):
    return jnp.mean(nnx.merge(gd, state)(latents, t, text) ** 2)

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  v1, g1 = grad(params, GRAPH)
  for policy in ('dots', 'full'):
    v2, g2 = grad(params, graphdef_of(dataclasses.replace(TINY, remat=policy)))
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g2)


def test_remat_policies_recompute_more_as_they_keep_less():
  """XLA's count of the compiled gradient of a 4-block DiT: 'full' recomputes each
  block's forward, 'dots' only attention and the elementwise work. (XLA's CPU
  buffer assignment does not show the memory saved, so this counts FLOPs; the
  memory is measured by `python -m pflow_jax.aot` for the target backend.)"""
  cfg = dataclasses.replace(TINY, num_layers=4)
  latents, t, text = make_inputs(batch=4, frames=4, size=(8, 8), cfg=cfg)
  flops = {}
  for policy in ('none', 'dots', 'full'):
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: dit.PyramidDiT(dataclasses.replace(cfg, remat=policy), rngs=nnx.Rngs(0))))
    grad = jax.jit(jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(latents, t, text) ** 2)))
    cost = grad.lower(state).compile().cost_analysis()
    flops[policy] = (cost if isinstance(cost, dict) else cost[0])['flops']
  assert flops['none'] < flops['dots'] < flops['full'], flops
  forward = flops['none'] / 3  # a gradient costs about three forwards
  assert abs((flops['full'] - flops['none']) / forward - 1) < 0.35, flops


@pytest.mark.parametrize('family', ['sd3', pytest.param('flux', marks=pytest.mark.slow)])
def test_scanned_blocks_give_the_same_values_and_gradients(family):
  """scan_blocks stacks the parameters of each stretch of identical blocks inside the
  step; the stored parameters and the numbers are those of the block-by-block loop
  (SD3: 3 scanned + the last, text-less block alone; miniFLUX: 3 double + 3 single)."""
  cfg = dataclasses.replace(TINY, num_layers=4, remat='full') if family == 'sd3' else (
      dataclasses.replace(TINY, family='flux', num_layers=3, num_single_layers=3,
                          pos_embed_type='none', rope_axes_dim=(4, 6, 6), remat='full'))
  latents, t, text = make_inputs(frames=2, size=(4, 4), cfg=cfg)
  state = perturb(nnx.state(make_model(cfg)), 3)
  results = []
  for scan in (False, True):
    graphdef = graphdef_of(dataclasses.replace(cfg, scan_blocks=scan))
    loss = lambda s, g=graphdef: jnp.mean(nnx.merge(g, s)(latents, t, text) ** 2)  # noqa: E731
    results.append(jax.jit(jax.value_and_grad(loss))(state))
  (v1, g1), (v2, g2) = results
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g2)


@pytest.mark.slow  # 20-40 s of compiling; benchmarks/remat_cpu.py shows the same in seconds
def test_scanned_blocks_let_the_compile_show_what_remat_saves():
  """Unrolled, XLA's CPU compile keeps about as much for remat 'full' as for 'none'
  (benchmarks/remat_cpu.py); scanned, 'full' keeps only each block's input."""
  cfg = dataclasses.replace(TINY, num_layers=8)
  latents, t, text = make_inputs(batch=4, frames=4, size=(8, 8), cfg=cfg)
  temp = {}
  for remat in ('none', 'full'):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: dit.PyramidDiT(
        dataclasses.replace(cfg, remat=remat, scan_blocks=True), rngs=nnx.Rngs(0))))
    grad = jax.jit(jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(latents, t, text) ** 2)))
    temp[remat] = grad.lower(state).compile().memory_analysis().temp_size_in_bytes
  assert temp['full'] < 0.5 * temp['none'], temp


def test_remat_names_and_older_boolean_configs():
  assert dit.DiTConfig(remat=True).remat == 'full'
  assert dit.DiTConfig(remat=False).remat == 'none'
  with pytest.raises(ValueError, match="remat must be one of"):
    dit.DiTConfig(remat='some')


def test_bad_inputs_raise(fresh):
  with pytest.raises(ValueError, match='caption_projection_dim'):
    dit.DiTConfig(caption_projection_dim=1152)
  with pytest.raises(ValueError, match='rope_axes_dim'):
    dit.DiTConfig(rope_axes_dim=(16, 24, 16))
  m = nnx.merge(GRAPH, fresh)
  latents, t, text = make_inputs()
  with pytest.raises(ValueError, match='latents must be'):
    m(latents[..., :3], t, text)
  with pytest.raises(ValueError, match='full_size'):
    m(latents, t, text, full_size=(4, 4))
  with pytest.raises(ValueError, match='lacks'):
    m(latents, t, {'seq': text['seq'], 'mask': text['mask']})
  with pytest.raises(ValueError, match='timesteps'):
    m(latents, t[:1], text)


def test_sharded_forward_and_gradients_match_single_device(params):
  latents, t, text = make_inputs(batch=4, frames=2, size=(8, 8))
  state = params

  def loss(state, latents, t, text):
    with rules.use_rules(config_lib.DIT_RULES):
      out = nnx.merge(GRAPH, state)(latents, t, text)
    return jnp.mean(jnp.square(out - latents)), out

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (ref_loss, ref_out), ref_grads = step(state, latents, t, text)
  mesh = mesh_lib.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  shardings = rules.state_shardings(state, mesh, config_lib.DIT_RULES)
  specs = {'.'.join(map(str, p)): v.get_value().spec for p, v in nnx.to_flat_state(shardings)}
  assert specs['transformer_blocks.0.attn.to_q.kernel'] == jax.P('fsdp', 'tensor')
  assert specs['transformer_blocks.0.ff.proj_out.kernel'] == jax.P('tensor', 'fsdp')
  batch_sharding = jax.NamedSharding(mesh, jax.P(('data', 'fsdp')))
  with jax.set_mesh(mesh):
    sharded_state = jax.device_put(state, shardings)
    inputs = jax.device_put((latents, t, text), batch_sharding)
    (loss_value, out), grads = step(sharded_state, *inputs)
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(loss_value, ref_loss, rtol=1e-5)
  for (path, a), (_, b) in zip(nnx.to_flat_state(ref_grads), nnx.to_flat_state(grads)):
    a, b = np.asarray(a[...]), np.asarray(b[...])
    np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max() + 1e-7, err_msg=str(path))


@pytest.mark.parametrize('variant', ['384p', '768p'])
def test_paper_configs_validate_and_match_the_official_size(variant):
  from configs import pyramid_flow_sd3
  config = pyramid_flow_sd3.get_config(variant)
  config_lib.validate(config)
  n = dit.count_params(dit.DiTConfig(**config.model))
  assert abs(n - OFFICIAL_SD3_PARAMS) / OFFICIAL_SD3_PARAMS < 0.01, n
  t, h, w = config_lib.latent_size(config)
  assert (t, h, w) == {'384p': (16, 48, 80), '768p': (31, 96, 160)}[variant]
