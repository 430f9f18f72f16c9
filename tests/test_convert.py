"""python -m pflow_jax.convert on the official fixtures (tests/fixtures/official): workdirs
that restore to the official weights, sample, and start a fine-tuning run; refusals."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from pflow_jax import checkpoint, restore
from pflow_jax.models import dit, official, vae_load
from pflow_jax.parallel import mesh as mesh_lib
from pflow_jax.training import loop, state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'official')

# A DiT config around a fixture's small official model: 16 px frames folded 2x2 into 4
# latent channels (the model's), precomputed text of the fixture's widths.
DIT_CONFIG = '''
from configs import moving_digits

def get_config():
  c = moving_digits.get_config('tiny')
  c.data.update(image_size=16, num_frames=2)
  c.latent.update(factor=2, channels=4, shift=0.0, scale=1.0)
  c.text.update(encoder='precomputed', max_length=5)
  c.model.update(family={family!r}, num_layers=2, num_single_layers={singles},
                 num_attention_heads=2, attention_head_dim=16, joint_attention_dim=32,
                 caption_projection_dim=32, pooled_projection_dim=16, sample_size=16,
                 pos_embed_max_size=16, pos_embed_type={pos!r}, rope_axes_dim={rope!r})
  c.dtype = 'float32'
  return c
'''
VAE_CONFIG = '''
import dataclasses
from pflow_jax import config as config_lib
from pflow_jax.models import vae as vae_lib

def get_config():
  c = config_lib.vae_base_config()
  tiny = vae_lib.VAEConfig.tiny(latent_channels=4)
  c.vae.update({f.name: getattr(tiny, f.name) for f in dataclasses.fields(tiny)
                if f.name in c.vae})
  c.vae.update(in_channels=3, out_channels=3)
  c.dtype = 'float32'
  return c
'''
FAMILIES = {'sd3': dict(family='sd3', singles=0, pos='sincos', rope=(16,)),
            'flux': dict(family='flux', singles=2, pos='none', rope=(4, 6, 6))}


def convert(*args):
  result = subprocess.run([sys.executable, '-m', 'pflow_jax.convert', *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  return result.returncode, result.stdout + result.stderr


def official_folder(tmp_path, name, class_name=None):
  folder = tmp_path / f'official_{name}'
  folder.mkdir()
  shutil.copy(os.path.join(FIXTURES, f'{name}.safetensors'), folder / 'model.safetensors')
  if class_name:
    (folder / 'config.json').write_text(json.dumps({'_class_name': class_name}))
  return folder


def read_safetensors(folder):
  from safetensors import safe_open
  with safe_open(str(folder / 'model.safetensors'), framework='numpy') as f:
    arrays = {k: f.get_tensor(k) for k in f.keys()}
  return {k: (lambda v=v: v) for k, v in arrays.items()}, {k: v.shape for k, v in arrays.items()}


def dit_config_file(tmp_path, family):
  path = tmp_path / f'dit_{family}.py'
  path.write_text(DIT_CONFIG.format(**FAMILIES[family]))
  return path


@pytest.mark.parametrize('family', ['sd3', 'flux'])
def test_converted_dit_restores_the_official_weights_and_samples(tmp_path, family):
  classes = {'sd3': 'PyramidDiffusionMMDiT', 'flux': 'PyramidFluxTransformer'}
  folder = official_folder(tmp_path, family, classes[family])
  config_file = dit_config_file(tmp_path, family)
  workdir = tmp_path / 'converted'
  code, out = convert(f'--config={config_file}', f'--dit={folder}', f'--workdir={workdir}')
  assert code == 0, out
  config = restore.load_config(str(workdir))
  _, params, step = restore.load_params(config, str(workdir), None)
  assert step == 0
  loaders, shapes = read_safetensors(folder)
  want = official.load_dit_params(dit.DiTConfig(**config.model), loaders, shapes)
  got = {'.'.join(map(str, p[1:])): np.asarray(v[...]) for p, v in nnx.to_flat_state(params)}
  assert set(got) == set(want)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  if family == 'flux':  # one family through the sampler (both compile the same way)
    embeddings = tmp_path / 'emb.npz'
    rng = np.random.default_rng(0)
    np.savez(embeddings, seq=rng.standard_normal((1, 5, 32)), mask=np.ones((1, 5), bool),
             pooled=rng.standard_normal((1, 16)), null_seq=np.zeros((1, 5, 32)),
             null_mask=np.zeros((1, 5), bool), null_pooled=np.zeros((1, 16)))
    result = subprocess.run(
        [sys.executable, '-m', 'pflow_jax.sample', f'--workdir={workdir}', '--num_samples=1',
         f'--text_embeddings={embeddings}', f'--out={tmp_path / "s.mp4"}',
         '--steps_per_stage=1,1,1'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_fine_tuning_starts_from_the_converted_weights(tmp_path):
  folder = official_folder(tmp_path, 'sd3')
  config_file = dit_config_file(tmp_path, 'sd3')
  source = tmp_path / 'converted'
  assert convert(f'--config={config_file}', f'--dit={folder}', f'--workdir={source}')[0] == 0
  config = restore.load_config(str(source))
  config.train.init_from = str(source)
  mesh = mesh_lib.make_mesh({'data': 1}, devices=jax.devices()[:1])
  tx = state_lib.make_optimizer(config.optim, config.train.num_steps)
  _, abstract, shardings = state_lib.state_shardings(config, mesh, tx)
  target = tmp_path / 'finetune'
  target.mkdir()
  ckpt = checkpoint.Checkpointer(str(target))
  state = loop.restore_or_init(ckpt, str(target), config, abstract, shardings,
                               lambda: state_lib.init_state(config, mesh, tx, shardings),
                               iterator=None)
  ckpt.close()
  _, ema, _ = restore.load_params(restore.load_config(str(source)), str(source), None)
  for a, b, c in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params),
                     jax.tree.leaves(ema)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
  assert int(state.step) == 0
  assert all(float(np.abs(np.asarray(x)).max()) == 0
             for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)


def test_converted_vae_encodes_like_the_official(tmp_path):
  folder = official_folder(tmp_path, 'vae')
  config_file = tmp_path / 'vae_config.py'
  config_file.write_text(VAE_CONFIG)
  workdir = tmp_path / 'vae'
  code, out = convert(f'--config={config_file}', f'--vae={folder}', f'--workdir={workdir}')
  assert code == 0, out
  vae_config, graphdef, params, step = vae_load.load_vae(str(workdir))
  io = np.load(os.path.join(FIXTURES, 'vae_io.npz'))
  video = jax.numpy.asarray(np.moveaxis(io['video'], 1, -1))
  mean, _ = jax.jit(lambda p, v: tuple(nnx.merge(graphdef, p).encode(v)))(params, video)
  np.testing.assert_allclose(np.asarray(mean), np.moveaxis(io['mean'], 1, -1), atol=1e-5)


def test_conversion_refuses_and_writes_nothing(tmp_path):
  sd3_config = dit_config_file(tmp_path, 'sd3')
  flux_folder = official_folder(tmp_path, 'flux', 'PyramidFluxTransformer')
  workdir = tmp_path / 'out'
  code, out = convert(f'--config={sd3_config}', f'--dit={flux_folder}', f'--workdir={workdir}')
  assert code != 0 and "model.family='flux'" in out and 'Traceback' not in out
  (flux_folder / 'config.json').unlink()  # without the class name: the key check refuses
  code, out = convert(f'--config={sd3_config}', f'--dit={flux_folder}', f'--workdir={workdir}')
  assert code != 0 and 'single_transformer_blocks.0.proj_mlp.weight' in out
  assert not workdir.exists()
  code, out = convert(f'--config={sd3_config}', f'--dit={tmp_path}', f'--workdir={workdir}')
  assert code != 0 and 'no *.safetensors' in out
  sd3_folder = official_folder(tmp_path, 'sd3')
  workdir.mkdir()
  (workdir / 'config.json').write_text('{}')
  code, out = convert(f'--config={sd3_config}', f'--dit={sd3_folder}', f'--workdir={workdir}')
  assert code != 0 and 'already holds a run' in out
  assert (workdir / 'config.json').read_text() == '{}'
