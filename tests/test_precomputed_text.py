"""Models on precomputed text embeddings (the released models' T5/CLIP path): a tiny config
trains a few steps on random embeddings and `python -m pflow_jax.sample` samples from a
file of them; bad files are refused."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import moving_digits
from pflow_jax import config as config_lib, inference
from pflow_jax.data.synthetic import synthetic_batch
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import checkpoint, loop, state as state_lib, step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def precomputed_config(*variants):
  config = moving_digits.get_config(','.join(('tiny',) + variants))
  config.text.update(encoder='precomputed', max_length=6)
  config_lib.validate(config)
  return config


def write_embeddings(path, config, n, seed=0, **changes):
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, rows in (('', n), ('null_', 1)):
    arrays[prefix + 'seq'] = rng.standard_normal((rows, 6, config.model.joint_attention_dim))
    arrays[prefix + 'mask'] = np.arange(6)[None] < rng.integers(1, 7, (rows, 1))
    arrays[prefix + 'pooled'] = rng.standard_normal((rows, config.model.pooled_projection_dim))
  arrays.update(changes)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize('variants', [(), ('ar',)])
def test_train_on_embeddings_then_sample_from_a_file(tmp_path, variants):
  config = precomputed_config(*variants)
  mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  codec = latent_codec.make_codec(config.latent)
  tx = state_lib.make_optimizer(config.optim)
  graphdef, _, shardings = state_lib.state_shardings(config, mesh, tx)
  state = state_lib.init_state(config, mesh, tx, shardings)
  rng = np.random.default_rng(0)
  batch = synthetic_batch(config, rng)
  assert batch['text_seq'].shape == (6, 6, config.model.joint_attention_dim)
  step = step_lib.jit_train_step(step_lib.make_train_step(config, graphdef, tx), mesh, config,
                                 shardings, batch, codec)
  losses = []
  with jax.set_mesh(mesh):
    for _ in range(3):
      state, metrics = step(state, synthetic_batch(config, rng))
      losses.append(float(metrics['loss']))
  assert all(np.isfinite(losses)) and losses[0] > 0.1
  workdir = tmp_path / 'run'
  ckpt = checkpoint.Checkpointer(str(workdir), async_save=False)
  ckpt.save(3, state, {}, loop.config_json(config))
  ckpt.close()

  embeddings = tmp_path / 'emb.npz'
  write_embeddings(embeddings, config, 1)
  out = tmp_path / 'sample.mp4'
  result = subprocess.run(
      [sys.executable, '-m', 'pflow_jax.sample', f'--workdir={workdir}', '--num_samples=2',
       f'--text_embeddings={embeddings}', f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.stat().st_size > 0 and (tmp_path / 'sample.png').stat().st_size > 0

  # The same model refuses a prompt: it has no encoder for one.
  result = subprocess.run(
      [sys.executable, '-m', 'pflow_jax.sample', f'--workdir={workdir}', '--prompt=a 3',
       f'--out={tmp_path / "other.mp4"}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode != 0 and '--text_embeddings' in result.stderr
  assert not (tmp_path / 'other.mp4').exists()


def test_embedding_files_are_checked(tmp_path):
  config = precomputed_config()
  good = tmp_path / 'good.npz'
  write_embeddings(good, config, 3)
  text = inference.load_text_embeddings(str(good), config, 3)
  assert text['text_seq'].shape == (3, 6, config.model.joint_attention_dim)
  assert text['null_text_pooled'].shape == (3, config.model.pooled_projection_dim)
  np.testing.assert_array_equal(text['null_text_seq'][0], text['null_text_seq'][2])
  assert inference.batch_size(inference.load_text_embeddings(str(good), config)) == 3
  with pytest.raises(ValueError, match=r"lacks \['null_pooled'\]"):
    write_embeddings(tmp_path / 'a.npz', config, 3, null_pooled=None)
    inference.load_text_embeddings(str(tmp_path / 'a.npz'), config, 3)
  with pytest.raises(ValueError, match='joint_attention_dim'):
    write_embeddings(tmp_path / 'b.npz', config, 3, seq=np.zeros((3, 6, 5)))
    inference.load_text_embeddings(str(tmp_path / 'b.npz'), config, 3)
  with pytest.raises(ValueError, match='do not fit'):  # 3 rows for 2 samples
    inference.load_text_embeddings(str(good), config, 2)
  with pytest.raises(ValueError, match='precomputed'):
    inference.prompt_text(config, ['a 3 moving left'])
  pickled = tmp_path / 'pickled.npz'
  write_embeddings(pickled, config, 1, seq=np.array([{'a': 1}], dtype=object))
  with pytest.raises(ValueError, match='allow_pickle'):  # object arrays would need pickle
    inference.load_text_embeddings(str(pickled), config, 1)
