"""Pyramid flow: resampling operators, stage endpoints, timesteps and the training loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.pyramid import flow
from pflow_jax.pyramid import schedule as schedule_lib


def torch_bilinear_half(x):
  """torch F.interpolate(mode='bilinear', align_corners=False) to half size, on axes 2, 3."""
  def along(a, axis):
    n_out = a.shape[axis] // 2
    src = np.maximum((np.arange(n_out) + 0.5) * 2 - 0.5, 0.0)   # half-pixel centres
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, a.shape[axis] - 1)
    lam = (src - lo).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
    return (1 - lam) * np.take(a, lo, axis) + lam * np.take(a, hi, axis)
  return along(along(x, 2), 3)


def block_mean(z, f):
  """Mean over f x f spatial blocks of [B, T, H, W, C]."""
  b, t, h, w, c = z.shape
  return z.reshape(b, t, h // f, f, w // f, f, c).mean(axis=(3, 5))


def nearest_up(z):
  return z.repeat(2, axis=2).repeat(2, axis=3)


def test_downsample_is_torch_bilinear_half():
  x = np.random.default_rng(0).normal(size=(2, 3, 8, 12, 4)).astype(np.float32)
  got = np.asarray(flow.downsample2x(jnp.asarray(x)))
  np.testing.assert_allclose(got, torch_bilinear_half(x), atol=1e-6)
  resized = jax.image.resize(x, (2, 3, 4, 6, 4), 'linear', antialias=False)
  np.testing.assert_allclose(got, resized, atol=1e-6)
  np.testing.assert_allclose(got, block_mean(x, 2), atol=1e-6)


def test_upsample_is_nearest_copy():
  x = np.random.default_rng(1).normal(size=(1, 2, 3, 2, 2)).astype(np.float32)
  got = np.asarray(flow.upsample2x(jnp.asarray(x)))
  assert got.shape == (1, 2, 6, 4, 2)
  for i in range(6):
    for j in range(4):
      np.testing.assert_array_equal(got[:, :, i, j], x[:, :, i // 2, j // 2])


def test_latent_and_noise_pyramids():
  x = np.random.default_rng(2).normal(size=(2, 2, 16, 8, 3)).astype(np.float32)
  levels = flow.downsample_pyramid(jnp.asarray(x), 4)
  noises = flow.noise_pyramid(jnp.asarray(x), 4)
  assert [lv.shape[2:4] for lv in levels] == [(2, 1), (4, 2), (8, 4), (16, 8)]
  for k in range(4):
    f = 2 ** (3 - k)
    np.testing.assert_allclose(levels[k], block_mean(x, f), atol=1e-5)
    np.testing.assert_allclose(noises[k], f * block_mean(x, f), atol=1e-5)
  assert len(flow.downsample_pyramid(jnp.asarray(x), 1)) == 1


def test_noise_pyramid_levels_are_white_unit_noise():
  noise = jax.random.normal(jax.random.key(0), (4000, 1, 8, 8, 1))
  m = noise.shape[0]
  for level in flow.noise_pyramid(noise, 3):
    v = np.asarray(level).reshape(m, -1)
    cov = np.cov(v, rowvar=False)
    tol = 5 * np.sqrt(2 / m)
    np.testing.assert_allclose(np.diag(cov), 1.0, atol=tol)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=tol)


def test_stage_endpoints_follow_the_spec():
  s = schedule_lib.make_schedule(3)
  rng = np.random.default_rng(3)
  z = rng.normal(size=(2, 1, 8, 8, 2)).astype(np.float32)
  eps = rng.normal(size=z.shape).astype(np.float32)
  zs = flow.downsample_pyramid(jnp.asarray(z), 3)
  ns = flow.noise_pyramid(jnp.asarray(eps), 3)
  for k in range(3):
    f = 2 ** (2 - k)
    zk, nk = block_mean(z, f), f * block_mean(eps, f)
    st, en = s.start_sigmas[k], s.end_sigmas[k]
    want_start = nk if k == 0 else st * nk + (1 - st) * nearest_up(block_mean(z, 2 * f))
    want_end = zk if k == 2 else en * nk + (1 - en) * zk
    start, end = flow.stage_endpoints(zs, ns, s, k)
    np.testing.assert_allclose(start, want_start, atol=1e-5)
    np.testing.assert_allclose(end, want_end, atol=1e-5)
  with pytest.raises(ValueError, match='stage'):
    flow.stage_endpoints(zs, ns, s, 3)


def test_timestep_indices_are_uniform_over_the_table():
  n = 1000
  idx = np.asarray(flow.sample_timestep_indices(jax.random.key(0), 200_000, n))
  assert idx.dtype == np.int32 and idx.min() >= 0 and idx.max() <= n - 1
  assert idx.min() < 5 and idx.max() > n - 6
  counts = np.bincount(idx // 100, minlength=10) / idx.size
  np.testing.assert_allclose(counts, 0.1, atol=5 * np.sqrt(0.09 / idx.size))


def exact_dirac_velocity(schedule, full_hw, x, t, cond):
  """E[start - end | x] when every sample's data is the point cond['z'] (no randomness left).

  The stage comes from the resolution and the local ratio r from inverting the
  stage's linear timestep table; then x = c n + a pins the shared noise n.
  """
  k_stages, n = schedule.stages, schedule.num_train_timesteps
  stage = k_stages - 1 - int(np.log2(full_hw // x.shape[2]))
  table = schedule.stage_timesteps[stage]
  idx = jnp.round((table[0] - t) / (table[0] - table[-1]) * (n - 1))
  r = (1.0 - idx / n)[:, None, None, None, None]
  f = 2 ** (k_stages - 1 - stage)
  z = cond['z']
  zk = block_mean(z, f)
  below = nearest_up(block_mean(z, 2 * f)) if stage > 0 else jnp.zeros_like(zk)
  s, e = schedule.start_sigmas[stage], schedule.end_sigmas[stage]
  a = r * (1 - s) * below + (1 - r) * (1 - e) * zk
  c = r * s + (1 - r) * e
  noise = (x - a) / c
  return (s - e) * noise + (1 - s) * below - (1 - e) * zk + cond['offset'][:, None, None, None, None]


@pytest.mark.parametrize('stages,ratios,shift', [(3, (1, 2, 1), 3.0), (1, (1,), 1.0)])
def test_loss_vanishes_for_the_exact_velocity(stages, ratios, shift):
  s = schedule_lib.make_schedule(stages, shift=shift)
  b = 4 * sum(ratios)
  z = jax.random.normal(jax.random.key(1), (b, 2, 8, 8, 3))
  velocity = functools.partial(exact_dirac_velocity, s, 8)
  loss_fn = jax.jit(functools.partial(flow.pyramid_flow_loss, velocity, schedule=s,
                                      sample_ratios=ratios))
  cond = {'z': z, 'offset': jnp.zeros((b,))}
  loss, aux = loss_fn(z, cond, jax.random.key(2))
  assert loss.dtype == jnp.float32 and aux['loss_per_stage'].shape == (stages,)
  assert float(loss) < 1e-8
  np.testing.assert_array_less(np.asarray(aux['loss_per_stage']), 1e-8)

  # A known per-sample error a_j shows the official column split: sample j goes
  # to column j % sum(ratios), and columns go to stages in order.
  offset = jax.random.uniform(jax.random.key(3), (b,), minval=0.5, maxval=1.5)
  loss, aux = loss_fn(z, {'z': z, 'offset': offset}, jax.random.key(4))
  column_stage = np.repeat(np.arange(stages), ratios)
  stage_of = column_stage[np.arange(b) % sum(ratios)]
  sq = np.asarray(offset) ** 2
  np.testing.assert_allclose(loss, sq.mean(), rtol=1e-5)
  np.testing.assert_allclose(aux['loss_per_stage'],
                             [sq[stage_of == k].mean() for k in range(stages)], rtol=1e-5)


def test_loss_is_positive_for_a_wrong_velocity():
  s = schedule_lib.make_schedule(3)
  z = jax.random.normal(jax.random.key(5), (6, 1, 8, 8, 2))
  cond = {'z': z, 'offset': jnp.zeros((6,))}
  exact = functools.partial(exact_dirac_velocity, s, 8)

  @jax.jit
  def losses(z, cond, rng):
    # Right formula, but the ratio read off a shifted timestep; and no velocity at all.
    shifted = lambda x, t, c: exact(x, t - 50.0, c)
    zero = lambda x, t, c: jnp.zeros_like(x)
    return [flow.pyramid_flow_loss(v, z, cond, rng, s, (1, 1, 1)) for v in (shifted, zero)]

  (shifted_loss, _), (zero_loss, zero_aux) = losses(z, cond, jax.random.key(6))
  assert float(shifted_loss) > 1e-2
  assert float(zero_loss) > 0.1 and np.all(np.asarray(zero_aux['loss_per_stage']) > 0.05)


def test_single_stage_loss_is_rectified_flow_and_differentiable():
  """stages=1: x = r n + (1 - r) z at full resolution with target n - z."""
  s = schedule_lib.make_schedule(1)
  z = jax.random.normal(jax.random.key(7), (4, 1, 4, 4, 1))
  seen = {}

  def velocity(x, t, cond, w):
    seen['shape'] = x.shape
    # Timesteps are linspace(1000, 1, 1001)[idx] and r = 1 - idx / 1000 (spec).
    r = (1.0 - jnp.round((1000.0 - t) * 1000 / 999) / 1000)[:, None, None, None, None]
    return w * ((x - (1 - r) * cond) / r - cond)   # w = 1 is the exact velocity

  @jax.jit
  def loss(w):
    return flow.pyramid_flow_loss(functools.partial(velocity, w=w), z, z, jax.random.key(8),
                                  s, (1,))[0]

  assert float(loss(1.0)) < 1e-8
  assert seen['shape'] == z.shape
  grad = jax.grad(loss)(1.5)
  assert float(grad) > 0.1        # the minimum is at w = 1


def test_loss_is_the_same_with_the_batch_sharded():
  """The column split is a reshape, so a data-sharded batch gives the same loss."""
  s = schedule_lib.make_schedule(3)
  z = jax.random.normal(jax.random.key(9), (24, 1, 8, 8, 2))
  def velocity(x, t, c):
    return 0.3 * x * c[:, None, None, None, None] + 1e-3 * t[:, None, None, None, None]

  loss_fn = jax.jit(lambda z, c, rng: flow.pyramid_flow_loss(velocity, z, c, rng, s, (1, 1, 1)))
  cond = jnp.linspace(0.5, 1.5, 24)
  want, want_aux = loss_fn(z, cond, jax.random.key(10))
  mesh = mesh_lib.make_mesh({'data': 8})
  shard = jax.sharding.NamedSharding(mesh, jax.P('data'))
  got, got_aux = loss_fn(jax.device_put(z, shard), jax.device_put(cond, shard), jax.random.key(10))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got_aux['loss_per_stage'], want_aux['loss_per_stage'], rtol=1e-6)


def test_bad_loss_inputs():
  s = schedule_lib.make_schedule(3)
  ok = lambda x, t, c: x
  z = jnp.zeros((6, 1, 8, 8, 1))
  with pytest.raises(ValueError, match='divisible by sum\\(sample_ratios\\)'):
    flow.pyramid_flow_loss(ok, z[:5], None, jax.random.key(0), s, (1, 1, 1))
  with pytest.raises(ValueError, match='one entry per stage'):
    flow.pyramid_flow_loss(ok, z, None, jax.random.key(0), s, (1, 1))
  with pytest.raises(ValueError, match='positive integers'):
    flow.pyramid_flow_loss(ok, z, None, jax.random.key(0), s, (1, 0, 2))
  with pytest.raises(ValueError, match='not divisible by 2\\^\\(stages-1\\)'):
    flow.pyramid_flow_loss(ok, jnp.zeros((6, 1, 6, 8, 1)), None, jax.random.key(0), s, (1, 1, 1))
  with pytest.raises(ValueError, match='leading batch dim'):
    flow.pyramid_flow_loss(ok, z, jnp.zeros((3, 2)), jax.random.key(0), s, (1, 1, 1))
  with pytest.raises(ValueError, match='returned shape'):
    flow.pyramid_flow_loss(lambda x, t, c: x[..., :0], z, None, jax.random.key(0), s, (1, 1, 1))
  with pytest.raises(ValueError, match='B, T, H, W, C'):
    flow.downsample_pyramid(jnp.zeros((8, 8)), 2)


@pytest.mark.parametrize('stages', [3, 1])
def test_clean_prediction_gives_the_stage_velocity(stages):
  """With the true clean latent of the stage, the derived velocity is start - end."""
  s = schedule_lib.make_schedule(stages)
  z = jax.random.normal(jax.random.key(7), (3, 2, 8, 8, 4))
  levels = flow.downsample_pyramid(z, stages)
  noise = flow.noise_pyramid(jax.random.normal(jax.random.key(8), z.shape), stages)
  r = jnp.asarray([1.0, 0.5, 0.06])[:, None, None, None, None]  # noise level >= the floor
  for stage in range(stages):
    start, end = flow.stage_endpoints(levels, noise, s, stage)
    x = r * start + (1 - r) * end
    v = flow.velocity_from_prediction(levels[stage], x, r, s, stage, 'clean')
    np.testing.assert_allclose(v, start - end, atol=1e-5)
    # Another clean latent gives another velocity; 'velocity' passes the output through.
    other = flow.velocity_from_prediction(levels[stage] + 0.1, x, r, s, stage, 'clean')
    assert float(jnp.abs(other - (start - end)).min()) > 1e-3
    np.testing.assert_array_equal(
        flow.velocity_from_prediction(start, x, r, s, stage, 'velocity'), start)
  with pytest.raises(ValueError, match='prediction must be one of'):
    flow.velocity_from_prediction(z, z, r, s, 0, 'epsilon')
