"""The training step and checkpoints: sharded == single device, restore across meshes."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
import pytest

from configs import moving_digits
from pflow_jax.data.synthetic import synthetic_batch
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax import checkpoint, config as config_lib
from pflow_jax.pyramid import temporal
from pflow_jax.training import flops, loop, state as state_lib, step as step_lib


def tiny_config(**batch):
  config = moving_digits.get_config('tiny')
  config.data.global_batch_size = batch.get('global_batch_size', 24)
  config.dtype = 'float32'   # parity to fp32 tolerance
  return config


def run_steps(config, mesh, batches):
  codec = latent_codec.make_codec(config.latent)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, tx)
  state = state_lib.init_state(config, mesh, tx, shardings)
  step = step_lib.jit_train_step(step_lib.make_train_step(config, graphdef, tx), mesh,
                                 config, shardings, batches[0], codec)
  losses = []
  with jax.set_mesh(mesh):
    for batch in batches:
      state, metrics = step(state, batch)
      losses.append(float(metrics['loss']))
  return state, losses, shardings


def assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=atol)


def test_sharded_step_equals_single_device():
  config = tiny_config()
  rng = np.random.default_rng(0)
  batches = [synthetic_batch(config, rng) for _ in range(2)]
  single = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  sharded = mesh_lib.make_mesh({'data': 4, 'fsdp': 2})
  state_1, losses_1, _ = run_steps(config, single, batches)
  state_8, losses_8, shardings = run_steps(config, sharded, batches)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  assert losses_1[0] > 0.1  # a real loss, not a degenerate zero
  assert_trees_close(state_8.params, state_1.params, atol=2e-5)
  assert_trees_close(state_8.opt_state, state_1.opt_state, atol=2e-5)
  # FSDP really shards some parameters across the fsdp axis.
  specs = [s.spec for s in jax.tree.leaves(shardings.params)]
  assert any('fsdp' in str(spec) for spec in specs)


def test_checkpoint_restores_on_another_mesh(tmp_path):
  config = tiny_config()
  batches = [synthetic_batch(config, np.random.default_rng(1))]
  mesh_a = mesh_lib.make_mesh({'data': 4, 'fsdp': 2})
  state, _, _ = run_steps(config, mesh_a, batches)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
  ckpt.save(1, state, {'iterator': 7}, {'seed': 0})
  ckpt.wait()

  mesh_b = mesh_lib.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  _, abstract, shardings_b = state_lib.state_shardings(config, mesh_b, tx)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings_b)
  restored, data_state, saved_config = ckpt.restore(1, target)
  ckpt.close()
  assert data_state == {'iterator': 7} and saved_config == {'seed': 0}
  assert int(restored.step) == int(state.step) == 1
  assert_trees_close(restored.params, state.params, atol=0)
  assert_trees_close(restored.opt_state, state.opt_state, atol=0)
  assert_trees_close(restored.ema_params, state.ema_params, atol=0)
  for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings_b)):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def test_restore_into_an_incompatible_config_raises(tmp_path):
  config = tiny_config()
  mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  state, _, _ = run_steps(config, mesh, [synthetic_batch(config, np.random.default_rng(2))])
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1)
  ckpt.save(1, state, {}, {})
  ckpt.wait()
  bigger = tiny_config()
  bigger.model.num_layers = 3
  tx = state_lib.make_optimizer(bigger.optim, bigger.train.num_steps)
  _, abstract, shardings = state_lib.state_shardings(bigger, mesh, tx)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  with pytest.raises(checkpoint.CheckpointError, match='cannot restore checkpoint'):
    ckpt.restore(1, target)
  ckpt.close()


@pytest.mark.parametrize('warmup', [10, 0])
@pytest.mark.parametrize('decay_steps', [0, 50, -1])
def test_learning_rate_schedule(decay_steps, warmup):
  """Linear warm-up to lr (none with warmup_steps 0: the first step at the full rate), then
  constant (official) or a cosine to 0 over decay_steps (-1: to 0 at the run's last step,
  60 - warmup here): the AdamW update of a unit gradient is -lr(t) * sign (b1 = b2 = 0, no
  decay, no clip)."""
  optim = ml_collections.ConfigDict(dict(lr=0.1, warmup_steps=warmup, decay_steps=decay_steps,
                                         b1=0.0, b2=0.0, eps=1e-12, weight_decay=0.0,
                                         clip_grad=1e9))
  tx = state_lib.make_optimizer(optim, num_steps=60)
  params = jnp.zeros(())
  opt_state = tx.init(params)
  rates = []
  for _ in range(70):
    update, opt_state = tx.update(jnp.ones(()), opt_state, params)
    rates.append(-float(update))
  t = np.arange(70)
  after = t - warmup
  length = 50 if decay_steps == 50 else 60 - warmup
  expected = np.where(t < warmup, 0.1 * t / max(warmup, 1), 0.1 if decay_steps == 0 else
                      0.05 * (1 + np.cos(np.pi * np.minimum(after, length) / length)))
  np.testing.assert_allclose(rates, expected, atol=1e-6)


class _State(NamedTuple):
  step: jax.Array
  w: jax.Array


class _CountingBatches:
  """A stand-in for the data iterator: one-element batches and a JSON-able position."""

  def __init__(self):
    self.position = 0

  def __next__(self):
    self.position += 1
    return {'x': np.zeros((1,), np.float32)}

  def get_state(self):
    return {'position': self.position}


def _loop_config(num_steps, log_every, checkpoint_every):
  return ml_collections.ConfigDict(dict(
      train=dict(num_steps=num_steps, log_every=log_every, checkpoint_every=checkpoint_every,
                 sample_every=10 ** 6),
      rules=(('batch', None),)))


def _fake_step(nan_at=None):
  """A train step whose loss is the step index and whose weight turns NaN at `nan_at`."""

  def step(state, batch, index):
    del batch
    w = state.w * (jnp.nan if index == nan_at else 1.0)
    loss = jnp.float32(index) * jnp.mean(w) / jnp.mean(state.w)
    return _State(state.step + 1, w), {'loss': loss}
  return step


def _read_metrics(workdir):
  import json
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def test_loop_logs_the_mean_of_each_window(tmp_path):
  mesh = mesh_lib.make_mesh({'data': -1})
  state = _State(jnp.zeros((), jnp.int32), jnp.ones((3,)))
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  loop.run_loop(_loop_config(8, 4, 8), str(tmp_path), mesh, state, _CountingBatches(), ckpt,
                _fake_step(), lambda state, step: None)
  logged = {m['step']: m['loss'] for m in _read_metrics(tmp_path)}
  assert logged == {4: pytest.approx(1.5), 8: pytest.approx(5.5)}   # means of 0..3 and 4..7


def test_loop_logs_throughput_and_model_flop_utilisation(tmp_path):
  mesh = mesh_lib.make_mesh({'data': 2}, devices=jax.devices()[:2])
  state = _State(jnp.zeros((), jnp.int32), jnp.ones((3,)))
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  loop.run_loop(_loop_config(4, 2, 4), str(tmp_path), mesh, state, _CountingBatches(), ckpt,
                _fake_step(), lambda state, step: None, step_flops=3e12, step_tokens=100,
                peak_tflops=5.0)
  for m in _read_metrics(tmp_path):
    assert m['tflops_per_sec'] == pytest.approx(3.0 * m['steps_per_sec'])
    assert m['tokens_per_sec'] == pytest.approx(100 * m['steps_per_sec'])
    assert m['mfu'] == pytest.approx(m['tflops_per_sec'] / (5.0 * 2))


def test_peak_rates_come_from_the_chip_table_or_the_override():
  assert flops.peak_tflops('NVIDIA H100 80GB HBM3') == 989.0
  assert flops.peak_tflops('TPU v5 lite') == 197.0
  assert flops.peak_tflops('cpu') is None
  assert flops.peak_tflops('cpu', override=1.5) == 1.5


def test_loop_refuses_to_checkpoint_after_a_non_finite_step(tmp_path):
  # The NaN lands on step 3, between logs (every 10) and before the checkpoint at 4.
  mesh = mesh_lib.make_mesh({'data': -1})
  state = _State(jnp.zeros((), jnp.int32), jnp.ones((3,)))
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=True)
  with pytest.raises(FloatingPointError, match='last checkpoint is step 2'):
    loop.run_loop(_loop_config(20, 10, 2), str(tmp_path), mesh, state, _CountingBatches(),
                  ckpt, _fake_step(nan_at=2), lambda state, step: None)
  assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == [2]


def test_weight_decay_spares_biases_and_norm_scales():
  """With zero gradients AdamW only decays: kernels shrink by lr * wd, 1-D parameters stay."""
  optim = ml_collections.ConfigDict(dict(lr=0.1, warmup_steps=1, decay_steps=0, b1=0.9,
                                         b2=0.95, eps=1e-8, weight_decay=0.5, clip_grad=1.0))
  tx = state_lib.make_optimizer(optim, num_steps=1)
  graphdef, params = nnx.split(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), nnx.Param)
  params = jax.tree.map(lambda p: p + 1.0, params)      # a non-zero bias
  opt_state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(2):                                     # step 0 runs at warm-up rate 0
    updates, opt_state = tx.update(zeros, opt_state, params)
    new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new['kernel'][...], params['kernel'][...] * (1 - 0.1 * 0.5),
                             rtol=1e-6)
  np.testing.assert_array_equal(new['bias'][...], params['bias'][...])


def test_a_fresh_run_keeps_another_runs_config_json(tmp_path):
  import json
  checkpoint.write_config_json(str(tmp_path), {'seed': 1})
  checkpoint.write_config_json(str(tmp_path), {'seed': 1})          # the same run restarting: fine
  with pytest.raises(FileExistsError, match='another run'):
    checkpoint.write_config_json(str(tmp_path), {'seed': 2})
  assert json.loads((tmp_path / 'config.json').read_text()) == {'seed': 1}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']   # no temp file left


def test_workdir_config_is_the_one_saved_with_the_checkpoint(tmp_path):
  import json
  rules = [['batch', ['data']]]
  (tmp_path / 'config.json').write_text(json.dumps({'seed': 1, 'rules': rules}))
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  state = _State(jnp.zeros((), jnp.int32), jnp.ones((3,)))
  ckpt.save(4, state, {'position': 0}, {'seed': 2, 'rules': rules})
  ckpt.save(8, state, {'position': 0}, {'seed': 3, 'rules': rules})
  ckpt.close()
  assert checkpoint.load_workdir_config(str(tmp_path)).seed == 3
  assert checkpoint.load_workdir_config(str(tmp_path), step=4).seed == 2
  assert list(checkpoint.load_workdir_config(str(tmp_path)).rules) == [('batch', ('data',))]
  empty = tmp_path / 'fresh'
  empty.mkdir()
  (empty / 'config.json').write_text(json.dumps({'seed': 1, 'rules': rules}))
  assert checkpoint.load_workdir_config(str(empty)).seed == 1   # no checkpoint yet


def test_first_frame_share_adds_first_frame_steps_to_the_official_order():
  config = moving_digits.get_config('ar')             # 8 latent frames, 3 stages
  units = config.data.num_frames
  steps = range(4000)
  official = [tuple(step_lib.units_for_step(config, s)) for s in steps]
  kw = dict(max_temporal_length=units, video_sync_group=units, stages=3)
  assert official == [temporal.stage_length_for_step(s, config.seed, **kw) for s in steps]
  config.temporal.first_frame_share = 0.5
  mixed = [tuple(step_lib.units_for_step(config, s)) for s in steps]
  assert mixed == [tuple(step_lib.units_for_step(config, s)) for s in steps]   # resumable
  replaced = [m != o for m, o in zip(mixed, official)]
  assert all(m == (1, 1, 1) for m, r in zip(mixed, replaced) if r)
  # The official layouts train frame 0 at the top stage or below it, never at all three.
  assert (1, 1, 1) not in official
  share = np.mean([m == (1, 1, 1) for m in mixed])
  assert abs(share - 0.5) < 4 * np.sqrt(0.25 / len(steps))
  # Each stage trains frame 0 in p + (1 - p) / units of the steps.
  top = np.mean([m[-1] == 1 for m in mixed])
  expected = 0.5 + 0.5 / units
  assert abs(top - expected) < 4 * np.sqrt(expected * (1 - expected) / len(steps))
  config.temporal.first_frame_share = 1.0
  with pytest.raises(ValueError, match=r'first_frame_share must be in \[0, 1\)'):
    config_lib.validate(config)
