"""The pyramid schedule against the spec's formulas and default numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflow_jax.pyramid import schedule as schedule_lib


def spec_schedule(stages, stage_range, gamma, shift, n):
  """The spec's formulas (pyramid_flow_spec.md, "Stage schedule"), recomputed in float64."""
  sigmas = np.arange(n, 0, -1) / n                       # linspace(1, N, N)[::-1] / N
  sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
  timesteps = sigmas * n
  ori, start, end = [], [], []
  for i in range(stages):
    a, b = int(stage_range[i] * n), int(stage_range[i + 1] * n)
    ori.append(sigmas[a])
    end.append(sigmas[b] if b < n else 0.0)
    o = 1 - sigmas[a]
    start.append(1.0 if i == 0 else 1 - o / (math.sqrt(1 + 1 / gamma) * (1 - o) + o))
  length = np.array(start) - np.array(end)
  edges = np.concatenate([[0.0], np.cumsum(length) / length.sum()])
  edges[-1] = 1.0
  ratios = np.stack([edges[:-1], edges[1:]], axis=1)
  tables = []
  for r0, r1 in ratios:
    t0, t1 = timesteps[int(r0 * n)], timesteps[min(int(r1 * n), n - 1)]
    tables.append(np.linspace(t0, t1, n + 1)[:-1])
  return dict(sigmas=sigmas, timesteps=timesteps, start_sigmas=np.array(start),
              end_sigmas=np.array(end), ori_start_sigmas=np.array(ori), timestep_ratios=ratios,
              stage_timesteps=np.stack(tables),
              stage_ratios=np.tile(np.linspace(1, 0, n + 1)[:-1], (stages, 1)))


@pytest.mark.parametrize('stages,stage_range,gamma,shift,n', [
    (3, None, 1 / 3, 1.0, 1000),
    (3, None, 1 / 3, 3.0, 1000),
    (4, [0, 0.2, 0.45, 0.7, 1], 0.25, 1.7, 500),
    (2, [0, 0.5, 1], 0.1, 0.5, 1000),
    (1, None, 1 / 3, 1.0, 1000),
    (1, None, 1 / 3, 3.0, 1000),
])
def test_schedule_matches_spec_formulas(stages, stage_range, gamma, shift, n):
  s = schedule_lib.make_schedule(stages, stage_range, gamma, shift, n)
  ref = spec_schedule(stages, stage_range or [i / stages for i in range(stages + 1)],
                      gamma, shift, n)
  assert (s.stages, s.num_train_timesteps, s.gamma, s.shift) == (stages, n, gamma, shift)
  for name, want in ref.items():
    got = getattr(s, name)
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6 * (n if 'timesteps' in name else 1),
                               err_msg=name)


def test_default_numbers_from_spec():
  s = schedule_lib.make_schedule()
  np.testing.assert_allclose(s.start_sigmas, [1.0, 0.80024, 0.50075], atol=1e-5)
  np.testing.assert_allclose(s.end_sigmas, [0.667, 0.334, 0.0], atol=1e-6)
  np.testing.assert_allclose(s.ori_start_sigmas, [1.0, 0.667, 0.334], atol=1e-6)
  np.testing.assert_allclose(s.timestep_ratios,
                             [(0, 0.25616), (0.25616, 0.61480), (0.61480, 1)], atol=1e-5)
  np.testing.assert_allclose(schedule_lib.jump_coefficients(s, 1), (0.59988, 0.69303), atol=1e-5)
  np.testing.assert_allclose(schedule_lib.jump_coefficients(s, 2), (0.74963, 0.43366), atol=1e-5)
  # Stage 1's training timesteps start at timesteps[int(0.25616 * 1000)] = 1000 - 256.
  assert s.stage_timesteps[1, 0] == pytest.approx(744.0)
  assert s.stage_timesteps[0, 0] == pytest.approx(1000.0)


def test_single_stage_is_plain_rectified_flow():
  s = schedule_lib.make_schedule(stages=1)
  np.testing.assert_array_equal(s.start_sigmas, [1.0])
  np.testing.assert_array_equal(s.end_sigmas, [0.0])
  np.testing.assert_array_equal(s.timestep_ratios, [[0.0, 1.0]])
  # Timesteps cover the whole axis: 1000 down towards timesteps[999] = 1.
  np.testing.assert_allclose(s.stage_timesteps[0], np.linspace(1000, 1, 1001)[:-1], rtol=1e-6)
  with pytest.raises(ValueError, match='stage'):
    schedule_lib.jump_coefficients(s, 1)


@pytest.mark.parametrize('gamma,shift', [(1 / 3, 1.0), (1 / 3, 3.0), (0.2, 1.0)])
def test_jump_coefficients_restore_training_start(gamma, shift):
  """alpha up(e n + (1 - e) z) + beta b has signal (1 - s), variance s^2, no block correlation."""
  s = schedule_lib.make_schedule(3, gamma=gamma, shift=shift)
  for k in (1, 2):
    alpha, beta = schedule_lib.jump_coefficients(s, k)
    e = s.end_sigmas[k - 1]                  # where stage k-1 ends ...
    assert e == s.ori_start_sigmas[k]        # ... is where stage k originally starts
    o = 1 - e
    assert alpha == pytest.approx(1 / (math.sqrt(1 + 1 / gamma) * (1 - o) + o), rel=1e-12)
    assert beta == pytest.approx(alpha * (1 - o) / math.sqrt(gamma), rel=1e-12)
    start = s.start_sigmas[k]
    assert alpha * (1 - e) == pytest.approx(1 - start, rel=1e-9)
    assert (alpha * e) ** 2 + beta ** 2 == pytest.approx(start ** 2, rel=1e-9)
    assert (alpha * e) ** 2 - gamma * beta ** 2 == pytest.approx(0.0, abs=1e-12)


def test_inference_schedule_is_official_set_timesteps():
  s = schedule_lib.make_schedule(3, shift=2.0)
  for stage in range(3):
    table = s.stage_timesteps[stage]
    t, r = schedule_lib.inference_schedule(s, stage, 7)
    assert t.dtype == np.float32 and r.dtype == np.float32
    np.testing.assert_allclose(t, np.linspace(table[0], table[-1], 7), rtol=1e-6)
    np.testing.assert_allclose(r, np.append(np.linspace(1.0, 1e-3, 7), 0.0), rtol=1e-6)
  t, r = schedule_lib.inference_schedule(s, 0, 1)
  np.testing.assert_allclose(t, [s.stage_timesteps[0, 0]])
  np.testing.assert_array_equal(r, [1.0, 0.0])


def test_schedule_is_a_static_argument():
  s = schedule_lib.make_schedule()
  f = jax.jit(lambda x, sched: x * float(sched.start_sigmas[1]), static_argnums=1)
  assert float(f(jnp.ones(()), s)) == pytest.approx(0.80024, abs=1e-5)
  with pytest.raises(ValueError):
    s.sigmas[0] = 0.5                        # tables are read-only


@pytest.mark.parametrize('kwargs,match', [
    (dict(stage_range=[0, 0.5, 1]), 'stages \\+ 1'),
    (dict(stage_range=[0, 0.6, 0.4, 1]), 'strictly increasing'),
    (dict(stage_range=[0.1, 0.4, 0.7, 1]), 'start at 0'),
    (dict(stage_range=[0, 0.4, 0.7, 0.9]), 'end\\s+at 1'),
    (dict(stage_range=[0, 0.0001, 0.5, 1]), 'empty stage'),
    (dict(stages=0), 'stages'),
    (dict(gamma=0.5), 'gamma'),
    (dict(gamma=0.0), 'gamma'),
    (dict(shift=0.0), 'shift'),
    (dict(num_train_timesteps=1), 'num_train_timesteps'),
])
def test_bad_schedule_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    schedule_lib.make_schedule(**kwargs)


def test_bad_stage_and_step_arguments():
  s = schedule_lib.make_schedule()
  with pytest.raises(ValueError, match='stage'):
    schedule_lib.inference_schedule(s, 3, 10)
  with pytest.raises(ValueError, match='num_steps'):
    schedule_lib.inference_schedule(s, 0, 0)
  with pytest.raises(ValueError, match='stage'):
    schedule_lib.jump_coefficients(s, 0)
