"""Two processes on 127.0.0.1 (jax.distributed, 2 CPU devices each) train, checkpoint and
sample as one process with 4 devices does; a dead process stops the other.

The tests that start further 2-process runs are marked slow (`pytest -m slow
tests/test_multiprocess.py`, about 3 minutes): on a loaded machine the CPU collectives
(gloo) give up when one process reaches its first collective 30 s before the other.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest
from PIL import Image

from pflow_jax import checkpoint, distributed, restore
from pflow_jax.parallel import mesh as mesh_lib
from tests import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ('--config=configs/moving_digits.py:tiny', '--config.data.global_batch_size=12',
         '--config.train.num_steps=4', '--config.train.log_every=1',
         '--config.train.checkpoint_every=2', '--config.train.sample_every=4')
SAMPLE = ('--prompt=a 3 moving left', '--num_samples=3', '--steps_per_stage=2,2,2')


def _env(devices: int, **extra) -> dict:
  return dict(os.environ, XLA_FLAGS=xla_env.xla_flags(devices),
              JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', **extra)


def launch_two(module: str, *args) -> list[subprocess.Popen]:
  """Process 0 and 1 of a 2-process job, 2 devices each."""
  port = str(portpicker.pick_unused_port())
  return [subprocess.Popen(
      [sys.executable, '-m', module, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      env=_env(2, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i), PFLOW_HEARTBEAT_TIMEOUT_S='10')) for i in range(2)]


def finish(procs: list[subprocess.Popen], timeout: int = 400) -> list[str]:
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def run_one(devices: int, module: str, *args) -> str:
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, text=True,
                          capture_output=True, env=_env(devices), timeout=400)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  return result.stdout + result.stderr


def metrics(workdir) -> dict[int, dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {row['step']: row for row in map(json.loads, f) if 'loss' in row}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(one process x 4 devices, two processes x 2 devices) workdirs of the same run."""
  data = str(tmp_path_factory.mktemp('data'))
  single, double = (str(tmp_path_factory.mktemp(n)) for n in ('single', 'double'))
  run_one(4, 'pflow_jax.train', *TRAIN, f'--workdir={single}', f'--config.data.data_dir={data}')
  finish(launch_two('pflow_jax.train', *TRAIN, f'--workdir={double}',
                    f'--config.data.data_dir={data}'))
  return single, double, data


def test_two_processes_train_like_one_process_with_as_many_devices(runs):
  """Each process reads its slice of every global batch (the pipeline's tests check the
  slices are disjoint and cover it): the losses are the single process's."""
  single, double, _ = runs
  one, two = metrics(single), metrics(double)
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  for step in one:
    np.testing.assert_allclose(two[step]['loss'], one[step]['loss'], rtol=1e-5)
    np.testing.assert_allclose(two[step]['grad_norm'], one[step]['grad_norm'], rtol=1e-4)
  assert sorted(os.listdir(os.path.join(double, 'checkpoints'))) == ['2', '4']
  assert os.path.exists(os.path.join(double, 'samples', 'step_0000004.png'))  # process 0's


def test_two_process_checkpoint_restores_in_one_process_on_another_mesh(runs):
  single, double, _ = runs
  config = restore.load_config(double)
  fsdp = mesh_lib.make_mesh({'fsdp': 2}, devices=jax.devices()[:2])  # 4 data -> 2 fsdp
  _, on_fsdp, step = restore.load_params(config, double, None, fsdp)
  _, on_one, _ = restore.load_params(config, double, None)
  _, reference, _ = restore.load_params(config, single, None)
  assert step == 4
  sharded = [x for x in jax.tree.leaves(on_fsdp) if not x.sharding.is_fully_replicated]
  assert sharded, 'nothing is sharded over fsdp'
  for a, b, c in zip(jax.tree.leaves(on_fsdp), jax.tree.leaves(on_one),
                     jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # another 2-process run: about a minute on 2 idle cores
def test_two_processes_sample_what_one_device_samples(runs, tmp_path):
  """Data-parallel over 4 devices (3 samples padded to 4), written once by process 0."""
  _, double, _ = runs
  outs = finish(launch_two('pflow_jax.sample', f'--workdir={double}', *SAMPLE,
                           f'--out={tmp_path / "two.mp4"}'))
  assert 'wrote' in outs[0] and 'wrote' not in outs[1]
  run_one(1, 'pflow_jax.sample', f'--workdir={double}', *SAMPLE, f'--out={tmp_path / "one.mp4"}')
  two = np.asarray(Image.open(tmp_path / 'two.png'), np.int32)
  one = np.asarray(Image.open(tmp_path / 'one.png'), np.int32)
  assert two.shape == one.shape and np.abs(two - one).max() <= 1


def start_training(tmp_path, data) -> tuple[list[subprocess.Popen], list]:
  """A long 2-process run whose output goes to files; returns once both processes are in
  the training loop (its SIGTERM handler installed), before the first step has run."""
  logs = [open(tmp_path / f'process{i}.log', 'w+') for i in range(2)]
  port = str(portpicker.pick_unused_port())
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'pflow_jax.train', *TRAIN, f'--workdir={tmp_path / "w"}',
       f'--config.data.data_dir={data}', '--config.train.num_steps=100000',
       '--config.train.sample_every=100000'], cwd=ROOT, text=True, stdout=logs[i],
      stderr=subprocess.STDOUT,
      env=_env(2, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i), PFLOW_HEARTBEAT_TIMEOUT_S='10')) for i in range(2)]
  try:
    deadline = time.time() + 300
    while not all(f'process {i}: training steps' in (tmp_path / f'process{i}.log').read_text()
                  for i in range(2)):
      assert time.time() < deadline and all(p.poll() is None for p in procs), stop_all(procs,
                                                                                       logs)
      time.sleep(0.5)
  except BaseException:
    stop_all(procs, logs)
    raise
  return procs, logs


def stop_all(procs, logs) -> list[str]:
  """Kills what still runs; the processes' output."""
  for p in procs:
    p.kill()
    p.wait()
  outs = []
  for f in logs:
    if not f.closed:
      f.seek(0)
      outs.append(f.read())
      f.close()
  return outs


@pytest.mark.slow  # another 2-process run: about a minute on 2 idle cores
def test_sigterm_to_one_process_stops_both_at_the_same_step(runs, tmp_path):
  procs, logs = start_training(tmp_path, runs[2])
  try:
    procs[1].send_signal(signal.SIGTERM)  # the other process is not told
    codes = [p.wait(timeout=300) for p in procs]
  finally:
    outs = stop_all(procs, logs)
  assert codes == [143, 143], outs
  stopped = [re.search(r'stopped at step (\d+)', out) for out in outs]
  assert all(stopped), outs
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step >= 1
  workdir = str(tmp_path / 'w')
  assert step in checkpoint.checkpoint_steps(workdir)
  _, params, restored = restore.load_params(restore.load_config(workdir), workdir, None)
  assert restored == step and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow  # another 2-process run: about a minute on 2 idle cores
def test_a_dead_process_makes_the_other_exit_with_a_clear_error(runs, tmp_path):
  procs, logs = start_training(tmp_path, runs[2])
  try:
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    code = procs[0].wait(timeout=120)
    waited = time.time() - killed
  finally:
    outs = stop_all(procs, logs)
  assert code != 0
  assert 'another task died' in outs[0], outs[0][-3000:]
  assert waited < 60, waited  # the 10 s heartbeat timeout, plus the abort


TUPLE_OVERRIDES = ('--config.model.rope_axes_dim=(16,24,24)',
                   "--config.sample.prompts=('a 3 moving left',)")


def dry_run(script: str, *args) -> list[str]:
  result = subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], text=True,
                          capture_output=True, env=dict(os.environ, DRY_RUN='1'), timeout=30)
  assert result.returncode == 0, result.stderr
  return shlex.split(result.stdout)


def test_slurm_launcher_runs_one_train_process_per_node_with_the_overrides_intact():
  argv = dry_run('gpu_slurm.sh', 'configs/moving_digits.py', 'runs/x', *TUPLE_OVERRIDES)
  assert argv == ['srun', '--kill-on-bad-exit=1', 'python', '-m', 'pflow_jax.train',
                  '--config=configs/moving_digits.py', '--workdir=runs/x', *TUPLE_OVERRIDES]
  with open(os.path.join(ROOT, 'launch', 'gpu_slurm.sh')) as f:
    assert '#SBATCH --ntasks-per-node=1' in f.read()


def test_tpu_launcher_quotes_the_overrides_for_the_remote_shell():
  argv = dry_run('tpu_pod.sh', 'my-tpu', 'us-central2-b', 'configs/moving_digits.py',
                 '/mnt/runs/x', *TUPLE_OVERRIDES)
  assert argv[:7] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu',
                      '--zone=us-central2-b']
  assert argv[7:9] == ['--worker=all', '--command']
  remote = shlex.split(argv[9])  # what each worker's shell runs
  assert remote[:3] == ['cd', 'pflow_jax', '&&']
  assert remote[3:] == ['python', '-m', 'pflow_jax.train', '--config=configs/moving_digits.py',
                        '--workdir=/mnt/runs/x', *TUPLE_OVERRIDES]


@pytest.mark.parametrize('environ, expected', [
    ({}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, None),  # one task: nothing to join
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '2'}, {'heartbeat_timeout_seconds': 100}),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1', 'PFLOW_HEARTBEAT_TIMEOUT_S': '30'},
     {'heartbeat_timeout_seconds': 30}),
    ({'TPU_WORKER_HOSTNAMES': 'w0'}, None),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '4',
      'JAX_PROCESS_ID': '3'},
     {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 3,
      'heartbeat_timeout_seconds': 100}),
])
def test_distributed_start_up_follows_the_environment(environ, expected):
  assert distributed.initialize_arguments(environ) == expected
