"""Block noise, the stage jump and the pyramid sampler, checked statistically."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflow_jax.pyramid import flow, sampler
from pflow_jax.pyramid import schedule as schedule_lib


def block_cov(gamma):
  return (1 + gamma) * np.eye(4) - gamma * np.ones((4, 4))


def blocks(x):
  """[M, T, H, W, C] -> [M * T * H/2 * W/2 * C, 4]: the 2x2 blocks, row-major within a block."""
  m, t, h, w, c = x.shape
  x = np.asarray(x).reshape(m, t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 6, 3, 5)
  return x.reshape(-1, 4)


@pytest.mark.parametrize('gamma', [1 / 3, 0.2])
def test_block_noise_covariance(gamma):
  x = sampler.block_noise(jax.random.key(0), (2000, 1, 4, 4, 2), gamma)
  assert x.shape == (2000, 1, 4, 4, 2) and x.dtype == jnp.float32
  b = blocks(x)
  n = b.shape[0]
  want = block_cov(gamma)
  se = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want ** 2) / n)
  np.testing.assert_allclose(b.mean(axis=0), 0.0, atol=5 / np.sqrt(n))
  np.testing.assert_allclose(np.cov(b, rowvar=False), want, atol=5 * se.max())
  # Neighbours across a block edge, and blocks of other channels, are independent.
  v = np.asarray(x)
  for a, c in [(v[:, 0, 0, 1, 0], v[:, 0, 0, 2, 0]), (v[:, 0, 1, 0, 0], v[:, 0, 2, 0, 0]),
               (v[:, 0, 0, 0, 0], v[:, 0, 0, 0, 1])]:
    assert abs(np.mean(a * c)) < 5 * np.sqrt((1 + gamma) ** 2 / len(a))
  if gamma == 1 / 3:
    np.testing.assert_allclose(b.sum(axis=1), 0.0, atol=1e-5)   # singular: block sums vanish


def test_stage_jump_renoises_to_the_training_start():
  """Training end of stage k, jumped, has the training start statistics of stage k+1."""
  s = schedule_lib.make_schedule(3)
  m = 20000
  z = np.random.default_rng(1).normal(size=(8, 8))

  @functools.partial(jax.jit, static_argnums=0)
  def draws(k, rng):
    rngs = jax.random.split(rng, 3)
    full = jnp.broadcast_to(jnp.asarray(z, jnp.float32)[None, None, :, :, None], (m, 1, 8, 8, 1))
    zs = flow.downsample_pyramid(full, 3)
    noise_a, noise_b = (flow.noise_pyramid(jax.random.normal(r, (m, 1, 8, 8, 1)), 3)
                        for r in rngs[:2])
    _, end = flow.stage_endpoints(zs, noise_a, s, k)
    train_start, _ = flow.stage_endpoints(zs, noise_b, s, k + 1)
    return sampler.stage_jump(end, rngs[2], s, k + 1), train_start

  for k in (0, 1):
    sig = s.start_sigmas[k + 1]
    f = 2 ** (2 - k)                           # level k is z averaged over f x f blocks
    z_k = z.reshape(8 // f, f, 8 // f, f).mean(axis=(1, 3))
    mean = (1 - sig) * z_k.repeat(2, 0).repeat(2, 1)[None, :, :, None]
    for name, x in zip(('jump', 'train'), draws(k, jax.random.key(k))):
      x = np.asarray(x)
      assert x.shape == (m,) + mean.shape, name
      np.testing.assert_allclose(x.mean(0), mean, atol=5 * sig / np.sqrt(m), err_msg=name)
      np.testing.assert_allclose(x.var(0), sig ** 2, atol=5 * sig ** 2 * np.sqrt(2 / m),
                                 err_msg=name)
      # Within-block covariance, pooled over block positions: zero.
      centred = blocks(x - mean)
      cov = centred.T @ centred / centred.shape[0]
      np.testing.assert_allclose(cov[~np.eye(4, dtype=bool)], 0.0,
                                 atol=5 * sig ** 2 / np.sqrt(centred.shape[0]), err_msg=name)


def dense_operators(h, stages):
  """Dense block-mean (full res -> level k) and nearest-up (level k-1 -> k) matrices."""
  def level_hw(k):
    return h // 2 ** (stages - 1 - k)

  down, up = [], []
  for k in range(stages):
    n, f = level_hw(k), 2 ** (stages - 1 - k)
    d = np.zeros((n * n, h * h))
    for y in range(h):
      for x in range(h):
        d[(y // f) * n + x // f, y * h + x] = 1 / f ** 2
    down.append(d)
    u = np.zeros((n * n, (n // 2) ** 2))
    if k > 0:
      for y in range(n):
        for x in range(n):
          u[y * n + x, (y // 2) * (n // 2) + x // 2] = 1
    up.append(u)
  return down, up


def gaussian_posterior(schedule, mean, cov, h, prediction, x, t, cond):
  """E[y | x_r] for data z ~ N(mean, cov) on an h x h single-channel image.

  At stage k, x = c n + A z with white n independent of z. y is the velocity
  start - end = (s - e) n + G z (prediction 'velocity') or the stage's clean
  latent D_k z ('clean'); with y = b n + M z, E[y | x] is a linear regression
  with Cov(x) = c^2 I + A S A^T and Cov(y, x) = b c I + M S A^T.
  """
  del cond
  k_stages, n = schedule.stages, schedule.num_train_timesteps
  down, up = dense_operators(h, k_stages)
  stage = k_stages - 1 - int(np.log2(h // x.shape[2]))
  table = schedule.stage_timesteps[stage]
  r = 1.0 - (table[0] - t[0]) / (table[0] - table[-1]) * (n - 1) / n
  s, e = schedule.start_sigmas[stage], schedule.end_sigmas[stage]
  below = up[stage] @ down[stage - 1] if stage > 0 else np.zeros_like(down[stage])
  a = r * (1 - s) * below + (1 - r) * (1 - e) * down[stage]
  c = r * s + (1 - r) * e
  if prediction == 'velocity':
    b, m = s - e, (1 - s) * below - (1 - e) * down[stage]
  else:
    b, m = 0.0, down[stage]
  eye = jnp.eye(a.shape[0])
  cov_x = c ** 2 * eye + a @ cov @ a.T
  cov_yx = b * c * eye + m @ cov @ a.T
  gain = jnp.linalg.solve(cov_x, cov_yx.T)
  flat = x.reshape(x.shape[0], -1)
  y = m @ mean + (flat - a @ mean) @ gain
  return y.reshape(x.shape)


def random_gaussian(d, seed):
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=d)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  cov = q @ np.diag(rng.uniform(0.05, 1.5, size=d)) @ q.T
  return mean, cov


# Euler's bias on these flows shrinks the variance by about 3/steps, so the
# step counts are large enough to keep it well inside the Monte Carlo tolerance.
# The 'clean' parameterisation with the exact E[z_k | x] must land there as well:
# the velocity it derives is the exact E[start - end | x].
@pytest.mark.parametrize('stages,shift,steps,prediction', [
    (3, 1.0, (256, 256, 256), 'velocity'), (3, 3.0, (192, 256, 320), 'velocity'),
    (1, 1.0, (512,), 'velocity'), (3, 1.0, (256, 256, 256), 'clean'), (1, 1.0, (512,), 'clean')])
def test_sampler_lands_on_the_data_distribution(stages, shift, steps, prediction):
  h, m = 4, 16384
  s = schedule_lib.make_schedule(stages, shift=shift)
  mean, cov = random_gaussian(h * h, seed=stages)
  velocity = functools.partial(gaussian_posterior, s, jnp.asarray(mean, jnp.float32),
                               jnp.asarray(cov, jnp.float32), h, prediction)
  run = jax.jit(functools.partial(sampler.sample, velocity, None, None, schedule=s,
                                  shape=(m, 1, h, h, 1), steps_per_stage=steps,
                                  guidance_scale=1.0, prediction=prediction))
  out = np.asarray(run(rng=jax.random.key(0)), np.float64).reshape(m, -1)
  # Whitened by the target, the samples should be N(0, I).
  white = (out - mean) @ np.linalg.inv(np.linalg.cholesky(cov)).T
  np.testing.assert_allclose(white.mean(0), 0.0, atol=5 / np.sqrt(m))
  np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(h * h),
                             atol=5 * np.sqrt(2 / m))


def affine_velocity(x, t, cond, record):
  """Affine in cond, so CFG with scale w equals one pass with cond u + w (c - u)."""
  record.append(x.shape[0])
  return -0.5 * x + cond['shift'][:, None, None, None, None] * jnp.cos(t / 300.0)[:, None, None,
                                                                                  None, None]


def test_sampler_without_renoise_starts_each_stage_at_the_upsampled_end():
  """renoise=False (the paper's ablation): no corrective noise, nor its rescale, at the jumps."""
  s = schedule_lib.make_schedule(3)
  shape = (3, 2, 8, 8, 2)
  rng = jax.random.key(4)
  x = jax.random.normal(jax.random.key(1), (3, 2, 4, 4, 2))
  np.testing.assert_array_equal(sampler.stage_jump(x, rng, s, 1, renoise=False),
                                flow.upsample2x(x))
  assert not np.allclose(sampler.stage_jump(x, rng, s, 1), flow.upsample2x(x), atol=0.1)
  # With a zero velocity each stage keeps its start: the output is stage 0's noise, upsampled
  # twice, where the renoising sampler adds fresh noise at both jumps.
  zero = lambda x, t, cond: jnp.zeros_like(x)
  outs = {r: sampler.sample(zero, None, None, rng, s, shape, (2, 2, 2), 1.0, renoise=r)
          for r in (False, True)}
  noise_rng, _ = jax.random.split(rng)
  start = flow.noise_pyramid(jax.random.normal(noise_rng, shape, jnp.float32), 3)[0]
  np.testing.assert_allclose(outs[False], flow.upsample2x(flow.upsample2x(start)), atol=1e-6)
  assert np.abs(np.asarray(outs[True] - outs[False])).mean() > 0.1


def test_classifier_free_guidance_combines_velocities():
  s = schedule_lib.make_schedule(2)
  shape, steps = (3, 2, 4, 4, 2), (4, 3)
  cond = {'shift': jnp.array([1.0, -2.0, 0.5])}
  uncond = {'shift': jnp.array([0.3, 0.3, 0.3])}
  w = 4.0
  calls = []

  def run(cond, uncond, guidance_scale):
    fn = functools.partial(sampler.sample, functools.partial(affine_velocity, record=calls),
                           schedule=s, shape=shape, steps_per_stage=steps,
                           guidance_scale=guidance_scale)
    return fn(cond=cond, uncond=uncond, rng=jax.random.key(0))

  guided = run(cond, uncond, w)
  assert calls == [6, 6]                  # one call per stage's loop body, on [uncond; cond]
  calls.clear()
  mixed = {'shift': uncond['shift'] + w * (cond['shift'] - uncond['shift'])}
  direct = run(mixed, None, w)
  assert calls == [3, 3]
  np.testing.assert_allclose(guided, direct, rtol=1e-5, atol=1e-5)
  # Scale 1 is no guidance; different conditions give different samples.
  unguided = run(cond, None, 1.0)
  np.testing.assert_array_equal(run(cond, uncond, 1.0), unguided)
  assert not np.allclose(guided, unguided, atol=1e-2)


def test_sampler_output_shape_and_timesteps():
  s = schedule_lib.make_schedule(3)
  seen = []

  def velocity(x, t, cond):
    jax.debug.callback(lambda hw, tt: seen.append((hw, float(tt[0]))), x.shape[2], t)
    return jnp.zeros_like(x)

  run = jax.jit(functools.partial(sampler.sample, velocity, None, None, schedule=s,
                                  shape=(2, 1, 8, 4, 3), steps_per_stage=(2, 3, 1),
                                  guidance_scale=1.0))
  out = jax.block_until_ready(run(rng=jax.random.key(0)))
  assert out.shape == (2, 1, 8, 4, 3) and out.dtype == jnp.float32
  want = [(2, t) for t in schedule_lib.inference_schedule(s, 0, 2)[0]]
  want += [(4, t) for t in schedule_lib.inference_schedule(s, 1, 3)[0]]
  want += [(8, t) for t in schedule_lib.inference_schedule(s, 2, 1)[0]]
  assert [hw for hw, _ in seen] == [hw for hw, _ in want]
  np.testing.assert_allclose([t for _, t in seen], [t for _, t in want], rtol=1e-6)


def test_bad_sampler_inputs():
  s = schedule_lib.make_schedule(3)
  zero = lambda x, t, c: jnp.zeros_like(x)
  with pytest.raises(ValueError, match='not divisible by 2\\^\\(stages-1\\)'):
    sampler.sample(zero, None, None, jax.random.key(0), s, (1, 1, 6, 8, 1), (2, 2, 2), 1.0)
  with pytest.raises(ValueError, match='one entry per stage'):
    sampler.sample(zero, None, None, jax.random.key(0), s, (1, 1, 8, 8, 1), (2, 2), 1.0)
  with pytest.raises(ValueError, match='num_steps'):
    sampler.sample(zero, None, None, jax.random.key(0), s, (1, 1, 8, 8, 1), (2, 0, 2), 1.0)
  with pytest.raises(ValueError, match='even H and W'):
    sampler.block_noise(jax.random.key(0), (1, 1, 3, 4, 1), 1 / 3)
  with pytest.raises(ValueError, match='gamma'):
    sampler.block_noise(jax.random.key(0), (1, 1, 4, 4, 1), 0.5)
  with pytest.raises(ValueError, match='stage'):
    sampler.stage_jump(jnp.zeros((1, 1, 2, 2, 1)), jax.random.key(0), s, 3)
