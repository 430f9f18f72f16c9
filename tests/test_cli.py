"""The launchers as a user runs them: resume after kill, bad input, sampling."""

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(module, *args, **popen):
  env = dict(os.environ, XLA_FLAGS=xla_env.xla_flags(1),
             PYTHONUNBUFFERED='1')
  return subprocess.Popen([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def run(module, *args, timeout=300):
  proc = launch(module, *args)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def train_args(workdir, data_dir, *extra):
  return ('--config=configs/moving_digits.py:tiny', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', *extra)


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {row['step']: row['loss'] for row in rows}


def wait_for_checkpoint(workdir, step, proc, timeout=240):
  path = os.path.join(workdir, 'checkpoints', str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(path):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, f'no checkpoint {path} after {timeout}s'
    time.sleep(0.2)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, data_dir):
  """An uninterrupted 8-step run, logging every step."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  code, out = run('pflow_jax.train', *train_args(workdir, data_dir, *STEPS))
  assert code == 0, out
  return workdir


STEPS = ('--config.train.num_steps=8', '--config.train.log_every=1',
         '--config.train.checkpoint_every=2', '--config.train.sample_every=8')


def test_resume_after_sigterm_and_kill9_matches_uninterrupted(tmp_path, data_dir, reference_run):
  workdir = str(tmp_path / 'run')
  # SIGTERM: the trainer saves a checkpoint at the current step and exits.
  proc = launch('pflow_jax.train', *train_args(workdir, data_dir, *STEPS))
  wait_for_checkpoint(workdir, 2, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0, out
  assert 'rerun the same command to resume' in out
  # kill -9 at some later point: only complete checkpoints are used.
  proc = launch('pflow_jax.train', *train_args(workdir, data_dir, *STEPS))
  wait_for_checkpoint(workdir, 6, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  code, out = run('pflow_jax.train', *train_args(workdir, data_dir, *STEPS))
  assert code == 0, out
  assert 'resumed from step' in out
  expected, got = losses(reference_run), losses(workdir)
  assert sorted(expected) == list(range(1, 9))
  for step in range(1, 9):  # every step was logged by one of the runs
    assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step


def test_sample_cli_writes_video_and_grid(tmp_path, reference_run):
  out = str(tmp_path / 'samples.mp4')
  code, log = run('pflow_jax.sample', f'--workdir={reference_run}', '--prompt=a 3 moving left',
                  '--num_samples=2', f'--out={out}', '--steps_per_stage=2,2,2')
  assert code == 0, log
  assert os.path.getsize(out) > 0 and os.path.getsize(str(tmp_path / 'samples.png')) > 0


@pytest.mark.parametrize('override, message', [
    ('--config.model.no_such_key=1', 'no_such_key'),
    ('--config.data.image_size=40', 'not divisible'),
    ('--config.data.train_size=0', 'train_size'),
    ('--config.text.max_length=8', 'longer than text.max_length'),
    ('--config.sample.history_noise=1.5', 'sample.history_noise must be in [0, 1]'),
])
def test_bad_config_fails_with_one_clear_error(tmp_path, data_dir, override, message):
  workdir = tmp_path / 'w'
  code, out = run('pflow_jax.train', *train_args(str(workdir), data_dir, override))
  assert code != 0
  assert message in out
  assert 'Traceback' not in out
  assert not (workdir / 'checkpoints').exists()


def test_missing_dataset_fails_without_building(tmp_path):
  code, out = run('pflow_jax.train', *train_args(str(tmp_path / 'w'), str(tmp_path / 'nothing'),
                                                 '--config.data.build_if_missing=False'))
  assert code != 0 and 'nothing' in out and 'Traceback' not in out


def test_corrupt_checkpoint_is_an_error_and_nothing_is_overwritten(tmp_path, data_dir,
                                                                    reference_run):
  import shutil
  workdir = tmp_path / 'corrupt'
  shutil.copytree(reference_run, workdir)
  state_dir = workdir / 'checkpoints' / '8' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
  code, out = run('pflow_jax.train', *train_args(str(workdir), data_dir, *STEPS,
                                                 '--config.train.num_steps=10'))
  assert code != 0 and 'cannot restore checkpoint' in out and 'Traceback' not in out
  after = {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
  assert after == before


def test_incompatible_checkpoint_is_an_error(tmp_path, data_dir, reference_run):
  import shutil
  workdir = tmp_path / 'other_model'
  shutil.copytree(reference_run, workdir)
  code, out = run('pflow_jax.train', *train_args(str(workdir), data_dir, *STEPS,
                                                 '--config.train.num_steps=10',
                                                 '--config.model.num_layers=3'))
  assert code != 0 and 'cannot restore checkpoint' in out and 'Traceback' not in out


@pytest.mark.slow
def test_autoregressive_train_then_image_to_video_and_longer_video(tmp_path, data_dir):
  """The temporal pyramid from the command line: train, then continue a test image into a
  video longer than the training clips."""
  workdir = str(tmp_path / 'ar')
  code, out = run('pflow_jax.train', '--config=configs/moving_digits.py:tiny,ar',
                  f'--workdir={workdir}', f'--config.data.data_dir={data_dir}')
  assert code == 0, out
  from PIL import Image
  import numpy as np
  image = str(tmp_path / 'first.png')
  Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[:, None] * 8, (1, 32))).save(image)
  video = str(tmp_path / 'i2v.gif')
  code, out = run('pflow_jax.sample', f'--workdir={workdir}', '--prompt=a 3 moving left',
                  '--num_samples=1', f'--out={video}', f'--image={image}', '--num_frames=5')
  assert code == 0, out
  from pflow_jax.data import video_io
  frames = video_io.read_video(video)
  assert frames.shape[:3] == (5, 32, 32)
  # The first frame is the given image (greyscale, exact up to the GIF palette).
  np.testing.assert_allclose(frames[0, :, :, 0], np.asarray(Image.open(image).convert('L')),
                             atol=3)


def test_image_to_video_needs_an_autoregressive_model(tmp_path, reference_run):
  image = str(tmp_path / 'first.png')
  from PIL import Image
  Image.new('L', (32, 32)).save(image)
  code, out = run('pflow_jax.sample', f'--workdir={reference_run}', '--prompt=a 3',
                  f'--out={tmp_path / "x.mp4"}', f'--image={image}')
  assert code != 0 and 'temporal.autoregressive' in out and 'Traceback' not in out
  assert not (tmp_path / 'x.mp4').exists()


def test_sample_never_overwrites_an_input_or_an_existing_output(tmp_path, reference_run):
  from PIL import Image
  image = tmp_path / 'x.png'
  Image.new('L', (32, 32), color=7).save(image)
  before = image.read_bytes()
  code, out = run('pflow_jax.sample', f'--workdir={reference_run}', '--prompt=a 3',
                  f'--out={tmp_path / "x.mp4"}', f'--image={image}')
  assert code != 0 and 'both an input and an output' in out and 'Traceback' not in out
  assert image.read_bytes() == before and not (tmp_path / 'x.mp4').exists()

  existing = tmp_path / 'old.png'
  existing.write_bytes(b'keep me')
  args = ('pflow_jax.sample', f'--workdir={reference_run}', '--prompt=a 3', '--num_samples=1',
          f'--out={tmp_path / "old.mp4"}', '--steps_per_stage=2,2,2')
  code, out = run(*args)
  assert code != 0 and 'pass --overwrite' in out and existing.read_bytes() == b'keep me'
  code, out = run(*args, '--overwrite')
  assert code == 0, out
  assert existing.read_bytes() != b'keep me' and (tmp_path / 'old.mp4').stat().st_size > 0


def test_sweep_commands_are_valid_overrides(tmp_path):
  """Every run of the ablation sweep parses as config overrides (each stops at validation,
  on the one value made invalid on purpose, after the overrides were applied)."""
  sys.path.insert(0, os.path.join(ROOT, 'launch'))
  import sweep
  commands = sweep.commands(os.path.join(ROOT, 'configs/sweeps/pyramid_ablation.py'),
                            'configs/moving_digits.py', str(tmp_path))
  assert len(commands) == 4
  assert any("--config.pyramid.sample_ratios=(1, )" in c for c in commands[0])
  for cmd in commands:
    code, out = run(cmd[2], *cmd[3:], '--config.train.num_steps=0')
    assert code != 0 and 'train.num_steps must be >= 1' in out, out


def test_library_modules_import_together_and_launchers_alone():
  """Flags live only in launchers (absl forbids defining one twice in a process), so
  every library module imports alongside any one launcher: what the tests do."""
  root = os.path.join(os.path.dirname(__file__), '..', 'pflow_jax')
  modules, launchers = [], []
  for dirpath, _, files in os.walk(root):
    for name in sorted(files):
      if name.endswith('.py') and name != '__init__.py':
        rel = os.path.relpath(os.path.join(dirpath, name[:-3]), os.path.join(root, '..'))
        module = rel.replace(os.sep, '.')
        with open(os.path.join(dirpath, name)) as f:
          (launchers if "__name__ == '__main__'" in f.read() else modules).append(module)
  assert 'pflow_jax.train' in launchers and 'pflow_jax.pyramid.flow' in modules
  for launcher in launchers:
    code = (f'import importlib\nfor m in {modules!r} + [{launcher!r}]:\n'
            '  importlib.import_module(m)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=os.path.join(root, '..'), timeout=300)
    assert result.returncode == 0, (launcher, result.stderr[-2000:])


BUGGY_CONFIG = '''
from configs import moving_digits

def get_config():
  c = moving_digits.get_config('tiny')
  c.modle.num_layers = 1  # a typo: a bug in the config file, not a bad override
  return c
'''


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path, data_dir):
  config_file = tmp_path / 'buggy.py'
  config_file.write_text(BUGGY_CONFIG)
  code, out = run('pflow_jax.train', f'--config={config_file}', f'--workdir={tmp_path / "w"}')
  assert code != 0
  assert 'Traceback' in out and 'buggy.py' in out and 'c.modle.num_layers' in out, out
  assert 'unknown config key' not in out


LAUNCHER = '''
import os
import numpy as np
from pflow_jax import cli

def main(argv):
  if os.environ['WHICH'] == 'ours':
    raise ValueError('the input is wrong')  # raised on purpose: one line
  np.zeros(3).reshape(2, 2)  # a ValueError from inside numpy: a bug, with its traceback

if __name__ == '__main__':
  cli.run(main)
'''


@pytest.mark.parametrize('which, one_line', [('ours', True), ('library', False)])
def test_only_errors_raised_on_purpose_are_one_line(tmp_path, which, one_line):
  script = tmp_path / 'launcher.py'
  script.write_text(LAUNCHER)
  result = subprocess.run([sys.executable, str(script)], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT, WHICH=which))
  assert result.returncode != 0
  out = result.stdout + result.stderr
  assert ('Traceback' not in out) == one_line, out
  if one_line:
    assert 'error: the input is wrong' in out, out
  else:
    assert 'cannot reshape' in out, out


@pytest.mark.parametrize('module, arg, message', [
    ('moving_digits', 'tiny,bad', "no variant 'tiny,bad'; its variants (comma-separated)"),
    ('moving_digits', 'quality,vae', 'quality sets space-to-depth latents'),
    ('pyramid_flow_sd3', '384p,768p', 'at most one'),
    ('pyramid_flow_sd3', '', 'needs a size'),
    ('vae_moving_digits', 'ar', "no variant 'ar'"),
    ('vae_video_folder', 'tiny', 'its variants (comma-separated): none'),
    ('vae_pyramid_flow', 'sd4', "no variant 'sd4'"),
])
def test_every_config_file_refuses_variants_it_does_not_define(module, arg, message):
  config_file = importlib.import_module(f'configs.{module}')
  with pytest.raises(ValueError, match=re.escape(message)):
    config_file.get_config(arg)
  if module == 'moving_digits':
    assert config_file.get_config('tiny,ar').temporal.autoregressive
