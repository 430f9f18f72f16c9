"""python -m pflow_jax.aot: the real train step and sampling forward compiled for fake
devices from abstract inputs, with per-device memory that FSDP really lowers."""

import json
import os
import subprocess
import sys

import pytest

from tests import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def aot(tmp_path, name, *args):
  out = tmp_path / f'{name}.json'
  env = dict(os.environ, XLA_FLAGS=xla_env.QUICK_COMPILE)  # aot adds the device count
  result = subprocess.run(
      [sys.executable, '-m', 'pflow_jax.aot', '--config=configs/moving_digits.py:tiny',
       '--devices=4', '--config.data.global_batch_size=12', f'--json={out}', *args], cwd=ROOT, capture_output=True, text=True,
      timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(out.read_text()), result.stdout


@pytest.mark.slow  # two AOT compiles on 4 fake devices: about 3 minutes on 2 cores
def test_fsdp_shards_the_state_of_the_compiled_train_step(tmp_path):
  data, stdout = aot(tmp_path, 'data', '--config.mesh.data=4')
  fsdp, _ = aot(tmp_path, 'fsdp', '--config.mesh.data=1', '--config.mesh.fsdp=4',
                '--what=train')
  assert data['devices'] == fsdp['devices'] == 4 and fsdp['mesh']['fsdp'] == 4
  assert 'train: per device' in stdout and 'sample: per device' in stdout
  for row in (data['train'], data['sample'], fsdp['train']):
    assert row['peak'] > 0 and row['temp'] > 0 and row['xla_tflops'] > 0
  # The state (parameters, two Adam moments, EMA) is most of the arguments: FSDP over 4
  # devices holds a quarter of it on each.
  assert fsdp['train']['argument'] < 0.5 * data['train']['argument']
  assert data['train']['alias'] > 0  # the donated state is updated in place


def test_bad_requests_are_one_clear_error():
  env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(2))
  for args, message in (
      (['--what=nothing'], "unknown ['nothing']"),
      (['--config.data.global_batch_size=9'], 'not divisible')):
    result = subprocess.run(
        [sys.executable, '-m', 'pflow_jax.aot', '--config=configs/moving_digits.py:tiny',
         *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode != 0 and message in result.stderr, (args, result.stderr[-500:])
