"""Ulysses sequence-parallel attention equals dense single-device attention.

On fake CPU meshes with a `sequence` axis of 2 and 4, alone and with data/fsdp/tensor:
the attention op (ragged text masks, the block-causal frame mask, lengths that do not
divide the axis, cached keys longer than the queries), the DiT's forward and gradients,
and one autoregressive unit of the temporal pyramid.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import moving_digits
from pflow_jax import config as config_lib
from pflow_jax.models import dit, layers
from pflow_jax.parallel import mesh as mesh_lib, rules
from pflow_jax.models import flow_model
from pflow_jax.pyramid import flow, temporal
from tests.test_temporal_model import HW, PATCH, STAGES, make_text, perturbed

MESHES = [{'sequence': 2}, {'sequence': 4}, {'data': 2, 'sequence': 2, 'tensor': 2},
          {'fsdp': 2, 'sequence': 4}]


def qkv(lq, lk, batch=4, heads=8, head_dim=8, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (batch, lq, heads, head_dim)),
          jax.random.normal(ks[1], (batch, lk, heads, head_dim)),
          jax.random.normal(ks[2], (batch, lk, heads, head_dim)))


def ragged_causal_mask(batch, text, frames, per_frame, lq=None):
  """Padded text keys (lengths differ per clip) and the block-causal mask over frames."""
  lengths = jnp.array([text, 2, text - 1, 1][:batch])
  text_mask = jnp.arange(text)[None] < lengths[:, None]
  order = jnp.repeat(jnp.arange(frames), per_frame)[None]
  mask = dit.joint_attention_mask(text_mask, frames * per_frame, frames=order)
  return mask if lq is None else mask[:, -lq:]


def sharded_value_and_grads(fn, sizes, *args):
  """fn's value and gradients (all args) on a mesh, under the DiT's rules."""
  mesh = mesh_lib.make_mesh(sizes, devices=jax.devices()[:np.prod(list(sizes.values()))])

  def scalar(*a):
    with rules.use_rules(config_lib.DIT_RULES):
      out = fn(*a)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

  grad = jax.jit(jax.value_and_grad(scalar, argnums=tuple(range(len(args))), has_aux=True))
  with jax.set_mesh(mesh):
    (_, out), grads = grad(*args)
  return out, grads


def assert_close(a, b, tol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, atol=tol * max(1.0, np.abs(b).max()), rtol=tol)


@pytest.mark.parametrize('sizes', MESHES)
@pytest.mark.parametrize('lq, lk', [(5 + 3 * 4, 5 + 3 * 4), (14, 5 + 3 * 4)])
def test_ulysses_attention_equals_dense(sizes, lq, lk):
  """Joint [text; 3 frames x 4 tokens] with 17 tokens (divides neither 2 nor 4), and cached
  keys: 14 queries of the last frames against every key."""
  q, k, v = qkv(lq, lk)
  mask = ragged_causal_mask(4, text=5, frames=3, per_frame=4, lq=lq)

  def dense(q, k, v):
    return layers.attention(q, k, v, mask=mask)

  def ulysses(q, k, v):
    q, k, v = (rules.constrain(a, ('batch', 'length', 'heads', 'kv')) for a in (q, k, v))
    return layers.attention(q, k, v, mask=mask, sequence_parallel='ulysses')

  ref, ref_grads = sharded_value_and_grads(dense, {'data': 1}, q, k, v)
  out, grads = sharded_value_and_grads(ulysses, sizes, q, k, v)
  assert_close(out, ref)
  for g, r in zip(grads, ref_grads):
    assert_close(g, r)


def test_ulysses_exchanges_heads_for_tokens():
  """The compiled program really uses all-to-alls, and each device attends on a slice of
  the heads: its logits are [b, H/S, Lq, Lk], not the whole [B, H, Lq, Lk]."""
  q, k, v = qkv(16, 16)
  mesh = mesh_lib.make_mesh({'sequence': 4}, devices=jax.devices()[:4])

  def f(q, k, v, parallel):
    with rules.use_rules(config_lib.DIT_RULES):
      q, k, v = (rules.constrain(a, ('batch', 'length', 'heads', 'kv')) for a in (q, k, v))
      return layers.attention(q, k, v, sequence_parallel=parallel)

  with jax.set_mesh(mesh):
    hlo = jax.jit(functools.partial(f, parallel='ulysses')).lower(q, k, v).compile().as_text()
    dense_hlo = jax.jit(functools.partial(f, parallel='none')).lower(q, k, v).compile().as_text()
  assert 'all-to-all' in hlo and 'all-to-all' not in dense_hlo
  assert 'f32[4,2,16,16]' in hlo      # batch 4, 8 heads / 4, 16 queries x 16 keys


def test_ulysses_refuses_heads_that_do_not_split():
  q, k, v = qkv(8, 8, heads=6)
  mesh = mesh_lib.make_mesh({'sequence': 4}, devices=jax.devices()[:4])

  def f(q, k, v):
    with rules.use_rules(config_lib.DIT_RULES):
      return layers.attention(q, k, v, sequence_parallel='ulysses')

  with jax.set_mesh(mesh), pytest.raises(ValueError, match='6 heads .* 4-way sequence axis'):
    jax.jit(f)(q, k, v)
  with pytest.raises(ValueError, match='unknown sequence_parallel'):
    layers.attention(q, k, v, sequence_parallel='ring')


def test_config_refuses_heads_that_do_not_split_over_the_mesh():
  config = moving_digits.get_config('tiny')          # 2 heads
  config.model.sequence_parallel = 'ulysses'
  config.mesh.update(data=1, sequence=2)
  config_lib.validate(config)
  config.mesh.sequence = 4
  with pytest.raises(ValueError, match='splits the 2 heads over .* = 4 devices'):
    config_lib.validate(config)


DIT = dit.DiTConfig(sample_size=8, in_channels=4, num_layers=2, num_attention_heads=4,
                    attention_head_dim=16, joint_attention_dim=32, caption_projection_dim=64,
                    pooled_projection_dim=16, pos_embed_max_size=8)


@pytest.mark.parametrize('family, sizes', [('sd3', {'sequence': 2, 'data': 2, 'fsdp': 2}),
                                           ('flux', {'sequence': 4})])
def test_dit_forward_and_gradients_equal_single_device(family, sizes):
  extra = (dict(family='flux', num_single_layers=1, pos_embed_type='none',
                rope_axes_dim=(4, 6, 6)) if family == 'flux' else {})
  dense_cfg = dataclasses.replace(DIT, **extra)
  ulysses_cfg = dataclasses.replace(dense_cfg, sequence_parallel='ulysses')
  params = nnx.state(dit.PyramidDiT(dense_cfg, dtype=jnp.float32, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(np.float32),
                        params)
  ks = jax.random.split(jax.random.key(2), 4)
  latents = jax.random.normal(ks[0], (4, 3, 8, 8, 4))       # 3 frames x 16 tokens, causal
  t = jax.random.uniform(ks[1], (4,)) * 1000
  text = {'seq': jax.random.normal(ks[2], (4, 5, 32)),
          'mask': jnp.arange(5)[None] < jnp.array([5, 2, 4, 1])[:, None],
          'pooled': jax.random.normal(ks[3], (4, 16))}

  def run(cfg):
    graph = nnx.graphdef(nnx.eval_shape(lambda: dit.PyramidDiT(cfg, dtype=jnp.float32,
                                                               rngs=nnx.Rngs(0))))
    return lambda p, x: nnx.merge(graph, p)(x, t, text)

  ref, ref_grads = sharded_value_and_grads(run(dense_cfg), {'data': 1}, params, latents)
  out, grads = sharded_value_and_grads(run(ulysses_cfg), sizes, params, latents)
  assert_close(out, ref)
  for (path, g), (_, r) in zip(nnx.to_flat_state(grads[0]), nnx.to_flat_state(ref_grads[0])):
    np.testing.assert_allclose(np.asarray(g[...]), np.asarray(r[...]),
                               atol=1e-5 * np.abs(np.asarray(r[...])).max() + 1e-7,
                               err_msg=str(path))
  assert_close(grads[1], ref_grads[1])


def test_temporal_pyramid_unit_equals_single_device(num_history=2):
  """One autoregressive unit: history at lower resolution, text and the target under the
  block-causal mask, on a data x sequence mesh: outputs and gradients (parameters, target
  and history) equal the dense single-device ones."""
  config = moving_digits.get_config('tiny')
  config.dtype = 'float32'
  dense = perturbed(flow_model.FlowModel(config, rngs=nnx.Rngs(0)))
  config.model.sequence_parallel = 'ulysses'
  ulysses = flow_model.FlowModel(config, rngs=nnx.Rngs(0))
  nnx.update(ulysses, nnx.state(dense))
  plan = temporal.history_plan(2, 4, stages=STAGES, latent_hw=HW, patch_size=PATCH)
  keys = jax.random.split(jax.random.key(0), 2)
  history_full = jax.random.normal(keys[0], (2, 4, *HW, 16))
  target = jax.random.normal(keys[1], (2, 1, *HW, 16))
  bank = [lv for i, lv in enumerate(flow.downsample_pyramid(history_full, STAGES))
          if i in plan.levels]
  t = jnp.array([900.0, 120.0])
  text = make_text(dense)

  def velocity(model):
    graphdef = nnx.graphdef(model)
    return lambda state, target, bank: nnx.merge(graphdef, state).unit_velocity(
        target, bank, jnp.int32(num_history), plan, t, text)

  state = nnx.state(dense)
  ref, ref_grads = sharded_value_and_grads(velocity(dense), {'data': 1}, state, target, bank)
  out, grads = sharded_value_and_grads(velocity(ulysses), {'data': 2, 'sequence': 2}, state,
                                       target, bank)
  assert_close(out, ref)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r),
                               atol=1e-5 * np.abs(np.asarray(r)).max() + 1e-7)
