"""Models on precomputed text embeddings (the released models' T5/CLIP path): a tiny config
trains a few steps on random embeddings and `python -m pflow_jax.sample` samples from a
file of them; bad files are refused."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import moving_digits
from pflow_jax import checkpoint, config as config_lib, inference
from pflow_jax.data import datasets, text_embeddings
from pflow_jax.data.synthetic import synthetic_batch
from pflow_jax.models import latent_codec
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import state as state_lib, step as step_lib
from tests import xla_env

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


@pytest.mark.parametrize('variants', [(), pytest.param(('ar',), marks=pytest.mark.slow)])
def test_train_on_embeddings_then_sample_from_a_file(tmp_path, variants):
  config = precomputed_config(*variants)
  mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  codec = latent_codec.make_codec(config.latent)
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
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
  ckpt.save(3, state, {}, checkpoint.config_json(config))
  ckpt.close()

  embeddings = tmp_path / 'emb.npz'
  write_embeddings(embeddings, config, 1)
  out = tmp_path / 'sample.mp4'
  result = subprocess.run(
      [sys.executable, '-m', 'pflow_jax.sample', f'--workdir={workdir}', '--num_samples=2',
       f'--text_embeddings={embeddings}', f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS=xla_env.xla_flags(1)))
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
  with pytest.raises(ValueError, match='holds 3 prompts'):  # 3 rows for 2 samples
    inference.load_text_embeddings(str(good), config, 2)
  with pytest.raises(ValueError, match='precomputed'):
    inference.prompt_text(config, ['a 3 moving left'])
  pickled = tmp_path / 'pickled.npz'
  write_embeddings(pickled, config, 1, seq=np.array([{'a': 1}], dtype=object))
  with pytest.raises(ValueError, match='allow_pickle'):  # object arrays would need pickle
    inference.load_text_embeddings(str(pickled), config, 1)


def fake_encoder(length, seq_dim, pooled_dim):
  """A deterministic stand-in for T5/CLIP: each caption's features from its CRC."""
  import zlib

  def encode(texts):
    rngs = [np.random.default_rng(zlib.crc32(t.encode())) for t in texts]
    seq = np.stack([r.standard_normal((length, seq_dim)) for r in rngs])
    mask = np.arange(length)[None] < np.array([max(1, len(t.split())) for t in texts])[:, None]
    pooled = np.stack([r.standard_normal(pooled_dim) for r in rngs])
    return seq, mask, pooled

  return encode


def test_training_reads_the_embeddings_of_each_caption(tmp_path):
  """The captions' file (as embed_text writes it) feeds the real data pipeline and the
  train CLI; a caption missing from it is an error naming it."""
  config = precomputed_config()
  config.data.data_dir = str(tmp_path / 'data')
  source = datasets.source(config, 'train')
  captions = [datasets.caption_of(source[i]) for i in range(len(source))]
  encode = fake_encoder(6, config.model.joint_attention_dim, config.model.pooled_projection_dim)
  path = str(tmp_path / 'captions.npz')
  count = text_embeddings.write(path, captions, encode, batch_size=5)
  assert count == len(set(captions)) and count > 5
  with config.unlocked():
    config.text.embeddings = path
  transform = datasets.train_transform(config)
  example = transform(source[3])
  seq, mask, pooled = encode([captions[3]])
  np.testing.assert_allclose(example['text_seq'], seq[0], rtol=1e-6)
  np.testing.assert_array_equal(example['text_mask'], mask[0])
  np.testing.assert_allclose(example['text_pooled'], pooled[0], rtol=1e-6)
  np.testing.assert_allclose(example['null_text_seq'], encode([''])[0][0], rtol=1e-6)
  assert example['video'].dtype == np.uint8 and 'tokens' not in example
  lookup = text_embeddings.CaptionLookup(path, config.model)
  with pytest.raises(KeyError, match='a 9 moving sideways'):
    lookup('a 9 moving sideways')

  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'pflow_jax.train', '--config=configs/moving_digits.py:tiny',
       f'--workdir={workdir}', f'--config.data.data_dir={tmp_path / "data"}',
       '--config.text.encoder=precomputed', '--config.text.max_length=6',
       f'--config.text.embeddings={path}', f'--config.sample.text_embeddings={path}',
       '--config.train.num_steps=2', '--config.train.log_every=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS=xla_env.xla_flags(1)))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / 'metrics.jsonl') as f:
    losses = [json.loads(line)['loss'] for line in f]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert any(name.endswith('.png') for name in os.listdir(workdir / 'samples'))
