"""The miniFLUX DiT family: official size and names, the single-stream block against its
formula, text and causality, sharding, the history cache, and training through the step."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import moving_digits, pyramid_flow_flux
from pflow_jax import config as config_lib
from pflow_jax.data.synthetic import synthetic_batch
from pflow_jax.models import dit, flow_model, latent_codec
from pflow_jax.parallel import mesh as mesh_lib, rules
from pflow_jax.pyramid import flow, temporal
from pflow_jax.training import state as state_lib, step as step_lib

# The official PyramidFluxTransformer with the released pyramid-flow-miniflux config.json,
# built on torch's meta device: sum of model.parameters() (../shared/reference/
# pyramid_flow_param_shapes.md; there are no buffers).
OFFICIAL_MINIFLUX_PARAMS = 1_972_059_200

TINY = dit.DiTConfig(family='flux', num_layers=1, num_single_layers=2, sample_size=16,
                     in_channels=4, num_attention_heads=2, attention_head_dim=16,
                     joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=16,
                     pos_embed_type='none', rope_axes_dim=(4, 6, 6))
TEXT_LEN = 5


def make_model(cfg=TINY, dtype=jnp.float32):
  return dit.PyramidDiT(cfg, dtype=dtype, rngs=nnx.Rngs(0))


GRAPH = nnx.split(nnx.eval_shape(make_model))[0]


@functools.partial(jax.jit, static_argnames=('graphdef',))
def forward(state, latents, timesteps, text, *, graphdef=GRAPH):
  return nnx.merge(graphdef, state)(latents, timesteps, text)


def perturb(state, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32),
                      state)


def make_inputs(batch=2, frames=1, size=(8, 8), seed=0):
  ks = jax.random.split(jax.random.key(seed), 4)
  latents = jax.random.normal(ks[0], (batch, frames, *size, TINY.in_channels))
  timesteps = jax.random.uniform(ks[1], (batch,)) * 1000
  mask = jnp.arange(TEXT_LEN)[None, :] < jnp.array([3, TEXT_LEN] * (batch // 2))[:, None]
  text = {'seq': jax.random.normal(ks[2], (batch, TEXT_LEN, TINY.joint_attention_dim)),
          'mask': mask, 'pooled': jax.random.normal(ks[3], (batch, TINY.pooled_projection_dim))}
  return latents, timesteps, text


@pytest.fixture(scope='module')
def fresh():
  return nnx.state(make_model())


@pytest.fixture(scope='module')
def params(fresh):
  return perturb(fresh)


@pytest.mark.parametrize('variant', ['384p', '768p'])
def test_paper_config_has_the_official_parameter_count(variant):
  config = pyramid_flow_flux.get_config(variant)
  config_lib.validate(config)
  assert dit.count_params(dit.DiTConfig(**config.model)) == OFFICIAL_MINIFLUX_PARAMS


def test_paper_scale_shapes_are_the_official_ones_transposed():
  """A sample of the official state dict (PyTorch Linear weights are [out, in])."""
  cfg = dit.DiTConfig(**pyramid_flow_flux.get_config().model)
  state = nnx.state(nnx.eval_shape(lambda: make_model(cfg)), nnx.Param)
  shapes = {'.'.join(map(str, p)): tuple(v.shape) for p, v in nnx.to_flat_state(state)}
  official = {  # official name: torch shape
      'x_embedder.weight': (1920, 64), 'context_embedder.weight': (1920, 4096),
      'time_text_embed.text_embedder.linear_1.weight': (1920, 768),
      'transformer_blocks.7.norm1.linear.weight': (11520, 1920),
      'transformer_blocks.7.attn.to_add_out.weight': (1920, 1920),
      'transformer_blocks.7.ff_context.net.2.weight': (1920, 7680),
      'single_transformer_blocks.15.norm.linear.weight': (5760, 1920),
      'single_transformer_blocks.15.proj_mlp.weight': (7680, 1920),
      'single_transformer_blocks.15.proj_out.weight': (1920, 9600),
      'single_transformer_blocks.15.attn.to_v.weight': (1920, 1920),
      'norm_out.linear.weight': (3840, 1920), 'proj_out.weight': (64, 1920)}
  ours = {'x_embedder.weight': 'x_embedder.proj.kernel',
          'transformer_blocks.7.ff_context.net.2.weight':
              'transformer_blocks.7.ff_context.proj_out.kernel'}
  for name, shape in official.items():
    path = ours.get(name, name.replace('.weight', '.kernel'))
    assert shapes[path] == shape[::-1], name
  assert shapes['single_transformer_blocks.0.attn.norm_q.scale'] == (64,)
  assert not any(p.startswith('pos_embed') for p in shapes)
  assert not any(p.startswith(('single_transformer_blocks.16.', 'transformer_blocks.8.'))
                 for p in shapes)


def test_config_rejects_single_blocks_outside_flux():
  with pytest.raises(ValueError, match='single-stream'):
    dit.DiTConfig(num_single_layers=2)
  with pytest.raises(ValueError, match='family'):
    dit.DiTConfig(family='dit')


def test_output_is_zero_at_init_and_every_block_takes_part(fresh, params):
  latents, t, text = make_inputs(frames=2)
  np.testing.assert_array_equal(np.asarray(forward(fresh, latents, t, text)), 0.0)
  base = forward(params, latents, t, text)
  assert base.shape == latents.shape and float(jnp.abs(base).mean()) > 1e-3
  for block in ('transformer_blocks', 'single_transformer_blocks'):
    edited = jax.tree.map(lambda x: x, params)
    kernel = edited[block][0]['attn']['to_v']['kernel']
    kernel[...] = kernel[...] * 2
    assert float(jnp.abs(forward(edited, latents, t, text) - base).max()) > 1e-4, block


def _naive_single_block(block, x, temb, angles, mask):
  """The official FluxSingleTransformerBlock written out in numpy (one group)."""
  p = lambda dense: (np.asarray(dense.kernel[...], np.float64),  # noqa: E731
                     np.asarray(dense.bias[...], np.float64))
  x, temb = np.asarray(x, np.float64), np.asarray(temb, np.float64)
  w, b = p(block.norm.linear)
  emb = (temb / (1 + np.exp(-temb))) @ w + b
  shift, scale, gate = np.split(emb, 3, axis=-1)
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  h = (x - mu) / np.sqrt(var + 1e-6) * (1 + scale[:, None]) + shift[:, None]

  def heads(dense, norm):
    w, b = p(dense)
    y = (h @ w + b).reshape(*h.shape[:2], TINY.num_attention_heads, TINY.attention_head_dim)
    if norm is not None:
      y = y / np.sqrt((y ** 2).mean(-1, keepdims=True) + 1e-6) * np.asarray(norm.scale[...])
    return y

  def rotate(y):
    cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
    y0, y1 = y[..., 0::2], y[..., 1::2]
    out = np.empty_like(y)
    out[..., 0::2], out[..., 1::2] = cos * y0 - sin * y1, sin * y0 + cos * y1
    return out

  q = rotate(heads(block.attn.to_q, block.attn.norm_q))
  k = rotate(heads(block.attn.to_k, block.attn.norm_k))
  v = heads(block.attn.to_v, None)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(TINY.attention_head_dim)
  logits = np.where(np.asarray(mask)[:, None], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attn = np.einsum('bhqk,bkhd->bqhd', weights, v).reshape(*h.shape[:2], -1)
  w, b = p(block.proj_mlp)
  pre = h @ w + b
  mlp = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3)))
  w, b = p(block.proj_out)
  return x + gate[:, None] * (np.concatenate([attn, mlp], -1) @ w + b)


def test_single_stream_block_follows_the_official_formula(params):
  model = nnx.merge(GRAPH, params)
  block = model.single_transformer_blocks[0]
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 9, TINY.hidden_size)), jnp.float32)
  temb = jnp.asarray(rng.standard_normal((2, TINY.hidden_size)), jnp.float32)
  positions = jnp.asarray(rng.integers(0, 4, (1, 9, 3)), jnp.float32)
  angles = jnp.broadcast_to(model._rope(positions, None), (2, 9, TINY.attention_head_dim // 2))
  mask = jnp.asarray(rng.random((2, 9, 9)) < 0.7) | jnp.eye(9, dtype=bool)[None]
  out = block(x, [(0, 9, temb)], angles, mask)
  want = _naive_single_block(block, x, temb, np.asarray(angles), mask)
  np.testing.assert_allclose(np.asarray(out), want, atol=2e-5, rtol=2e-5)


def test_text_reaches_the_video_and_padding_is_ignored(params):
  fwd = functools.partial(forward, params)
  latents, t, text = make_inputs()
  base = fwd(latents, t, text)
  padded = dict(text, seq=text['seq'].at[0, 3:].set(100.0))  # sample 0 has 3 valid tokens
  np.testing.assert_allclose(fwd(latents, t, padded), base, atol=1e-5)
  changed = fwd(latents, t, dict(text, seq=text['seq'].at[0, 1].add(1.0)))
  assert float(jnp.abs(changed[0] - base[0]).max()) > 1e-3
  np.testing.assert_allclose(changed[1], base[1], atol=1e-5)


def test_later_frames_do_not_change_earlier_outputs(params):
  latents, t, text = make_inputs(frames=3, size=(4, 4))
  base = forward(params, latents, t, text)
  out = forward(params, latents.at[:, 2].add(1.0), t, text)
  np.testing.assert_allclose(out[:, :2], base[:, :2], atol=1e-5)
  assert float(jnp.abs(out[:, 2] - base[:, 2]).max()) > 1e-3


def test_sharded_forward_and_gradients_match_single_device(params):
  latents, t, text = make_inputs(batch=4, frames=2, size=(8, 8))

  def loss(state, latents, t, text):
    with rules.use_rules(config_lib.DIT_RULES):
      out = nnx.merge(GRAPH, state)(latents, t, text)
    return jnp.mean(jnp.square(out - latents)), out

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (ref_loss, ref_out), ref_grads = step(params, latents, t, text)
  mesh = mesh_lib.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  shardings = rules.state_shardings(params, mesh, config_lib.DIT_RULES)
  with jax.set_mesh(mesh):
    state = jax.device_put(params, shardings)
    inputs = jax.device_put((latents, t, text), jax.NamedSharding(mesh, jax.P(('data', 'fsdp'))))
    (value, out), grads = step(state, *inputs)
  np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
  for (path, a), (_, b) in zip(nnx.to_flat_state(ref_grads), nnx.to_flat_state(grads)):
    a, b = np.asarray(a[...]), np.asarray(b[...])
    np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max() + 1e-7, err_msg=str(path))


def test_cached_history_gives_the_recomputed_velocity():
  """The temporal pyramid's key/value cache covers the single-stream blocks too."""
  config = moving_digits.get_config('tiny,flux')
  config.model.history_conditioning = 'clean'
  config.dtype = 'float32'
  model = flow_model.FlowModel(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  model = nnx.merge(graphdef, perturb(state, 2))
  assert len(model.dit.single_transformer_blocks) == 2
  stages = config.pyramid.stages
  plan = temporal.history_plan(1, 4, stages=stages, latent_hw=(8, 8), patch_size=2)
  keys = jax.random.split(jax.random.key(5), 2)
  bank = [lv for i, lv in enumerate(flow.downsample_pyramid(
      jax.random.normal(keys[0], (2, 4, 8, 8, 16)), stages)) if i in plan.levels]
  target = jax.random.normal(keys[1], (2, 1, 4, 4, 16))
  tokens = np.zeros((2, 40), np.int32)
  tokens[:, :5] = [3, 7, 9, 11, 2]
  text = model.encode_text({'tokens': jnp.asarray(tokens)})
  ts = jnp.full((2,), 600.0)
  n = jnp.int32(3)
  graphdef, state = nnx.split(model)
  cached = jax.jit(lambda s: nnx.merge(graphdef, s).unit_velocity_cached(
      target, nnx.merge(graphdef, s).unit_history_cache(target.shape, bank, n, plan, text),
      ts, text))(state)
  full = jax.jit(lambda s: nnx.merge(graphdef, s).unit_velocity(target, bank, n, plan, ts,
                                                                 text))(state)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=2e-5)
  assert float(jnp.abs(full).mean()) > 1e-3


@pytest.mark.slow  # compiles a miniFLUX train step: about 2 minutes on 2 cores
def test_flux_config_trains_through_the_jitted_step():
  config = moving_digits.get_config('tiny,flux')
  config.dtype = 'float32'
  mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  codec = latent_codec.make_codec(config.latent)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, tx)
  state = state_lib.init_state(config, mesh, tx, shardings)
  batch = synthetic_batch(config, np.random.default_rng(0))
  step = step_lib.jit_train_step(step_lib.make_train_step(config, graphdef, tx), mesh, config,
                                 shardings, batch, codec)
  def last_kernel(state):  # the adaLN projection: its gates start at 0, so it moves first
    block = state.params['dit']['single_transformer_blocks'][1]
    return np.asarray(block['norm']['linear']['kernel'][...])

  before = last_kernel(state)  # the step donates its input state
  with jax.set_mesh(mesh):
    # Step 0 has learning rate 0 (warm-up); then proj_out leaves zero, and only after that
    # does a gradient reach the blocks through it (the official zero init).
    for _ in range(3):
      state, metrics = step(state, batch)
  assert np.isfinite(float(metrics['loss'])) and float(metrics['loss']) > 0.1
  assert float(np.abs(last_kernel(state) - before).max()) > 0


def test_remat_gives_the_same_forward(params):
  """Rematerialised blocks (the paper configs) trace and give the same values."""
  latents, t, text = make_inputs(frames=2, size=(4, 4))
  graph = nnx.split(nnx.eval_shape(lambda: make_model(dataclasses.replace(TINY, remat='full'))))[0]
  np.testing.assert_allclose(forward(params, latents, t, text, graphdef=graph),
                             forward(params, latents, t, text), rtol=1e-6, atol=1e-6)
